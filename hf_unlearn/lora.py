"""LoRA-only unlearning (peft): adapters on every family, gradient checkpointing, adapter or merged saving.

Default `lora_target_modules` when the config leaves it `None` (see docs/lora.md):

| model | targets | also trained |
|---|---|---|
| transformers ViT, Swin, DeiT, BEiT (v5 names) | `q_proj`, `v_proj` | the classification head (`modules_to_save`) |
| transformers ResNet | every `convolution` (3×3 and 1×1 convs of the stages and stem) | the head |
| other transformers classifiers | `all-linear` (peft excludes the head itself) | the head |
| diffusers UNet2DModel, DiT, UNet2DConditionModel | attention `to_q`, `to_k`, `to_v`, `to_out.0` | nothing |
| diffusers UNet2DModel without attention blocks | the ResNet blocks' `conv1`, `conv2` | nothing |
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.utils.checkpoint
from accelerate.logging import get_logger
from torch import nn

from .lora_stack import merge_adapter_folder, stack_saved_adapter

logger = get_logger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"
_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def _leaf_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}


def _is_transformers(model: nn.Module) -> bool:
    from transformers import PreTrainedModel  # noqa: PLC0415

    return isinstance(model, PreTrainedModel)


def classifier_head_name(model: nn.Module) -> Optional[str]:
    """The top-level child holding the classification head (`classifier`, `head`, ...), kept fully trainable."""
    for name in ("classifier", "head", "fc"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    for name, module in reversed(list(model.named_modules())):
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            return name.split(".")[0]
    return None


def default_target_modules(model: nn.Module) -> Any:
    """The documented default adapter targets for `model` (see the module docstring)."""
    leaves = _leaf_names(model)
    if _is_transformers(model):
        if {"q_proj", "v_proj"} <= leaves:
            return ["q_proj", "v_proj"]
        if "convolution" in leaves:
            return ["convolution"]
        return "all-linear"
    if {"to_q", "to_v"} <= leaves:
        return [t for t in _ATTENTION if t.split(".")[0] in leaves]
    if {"conv1", "conv2"} <= leaves:
        return ["conv1", "conv2"]
    return "all-linear"


def has_lora(model: nn.Module) -> bool:
    """Whether `model` (or a PeftModel wrapping it) already carries LoRA layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def lora_config_for(model: nn.Module, config, *, with_head: bool):
    """A `peft.LoraConfig` from the flat `UnlearnConfig` fields."""
    from peft import LoraConfig  # noqa: PLC0415

    targets = config.lora_target_modules or default_target_modules(model)
    if isinstance(targets, (list, tuple)) and len(targets) == 1 and targets[0] == "all-linear":
        targets = "all-linear"
    head = classifier_head_name(model) if with_head else None
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=[head] if head else None,
    )


def _saves_own_lora(family) -> bool:
    """A family that keeps `lora_save` itself (text-to-image: base pipeline + a diffusers LoRA file) trains diffusers'
    adapters (`add_adapter`) and saves them; every other family trains a `peft.PeftModel`."""
    return getattr(family, "lora_save", None) is not None


def apply_lora(family, config) -> nn.Module:
    """Adds LoRA adapters to `family.model` so that only they (and a classifier's head) are trainable.

    Classifiers and class-conditional diffusion models become a `peft.PeftModel` (`get_peft_model`), so their adapter
    saves and loads with plain peft; a Stable Diffusion `UNet2DConditionModel` uses diffusers' `add_adapter`. A model
    that already carries adapters (e.g. an adapter folder loaded with [`load_adapter_folder`]) keeps them, made
    trainable. Raises `ValueError` naming `lora_target_modules` when no module matches, before any weight changes.
    """
    model = family.model
    if has_lora(model):  # e.g. `PeftModel.from_pretrained(base, adapter)`, loaded for inference by default
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name or "modules_to_save" in name)
        freeze_batch_norm_statistics(model)  # a model passed with its adapters: its base is as frozen as any
        return model
    lora_config = lora_config_for(model, config, with_head=getattr(family, "lora_trains_head", False))
    earlier = getattr(family, "earlier_adapter", None)
    if earlier is not None and config.lora_target_modules is None:  # the same layers as the adapter it stacks onto
        lora_config.target_modules = earlier.config["target_modules"]
    try:
        if _saves_own_lora(family):
            model.add_adapter(lora_config)
        else:
            from peft import get_peft_model  # noqa: PLC0415

            model = get_peft_model(model, lora_config)
    except ValueError as err:
        raise ValueError(
            f"`lora_target_modules` is {lora_config.target_modules!r}, which matches no layer of "
            f"{type(model).__name__} ({err}). Name layers that exist (their last name part, e.g. "
            f"{sorted(_leaf_names(model) - {''})[:8]}) or use ['all-linear']."
        ) from None
    for name, param in model.named_parameters():
        # get_peft_model / add_adapter freeze the base already; make it explicit for every path.
        param.requires_grad_("lora_" in name or "modules_to_save" in name)
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            # A half-precision base (e.g. FLUX loaded with torch_dtype=torch.bfloat16) keeps its memory; the adapters
            # train in fp32, as diffusers' LoRA scripts cast them (`cast_training_params`).
            param.data = param.data.float()
    freeze_batch_norm_statistics(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(f"LoRA r={config.lora_r} on {lora_config.target_modules}: {trainable:,} of {total:,} parameters train")
    return model


def _keep_eval(module: nn.Module, args) -> None:
    module.training = False


def _keep_eval_hooked(module: nn.Module) -> bool:
    return any(hook is _keep_eval for hook in module._forward_pre_hooks.values())


def freeze_batch_norm_statistics(model: nn.Module) -> int:
    """Keeps the base's batch-norm layers in eval mode: their running statistics are base weights too.

    In train mode they would drift with every unlearning batch, so the saved adapter alone (which does not hold
    them) would no longer reproduce the model, and the base would not stay byte-identical. Returns the count.
    """
    frozen = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and "modules_to_save" not in name:
            if not _keep_eval_hooked(module):  # a second request on the same model adds no second hook
                module.register_forward_pre_hook(_keep_eval)
            frozen += 1
    return frozen


def base_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every buffer of the frozen base (not of a trained head copy), with a copy of its value: the adapter that is
    saved does not hold them, so the model that reloads has these values."""
    return [(b, b.detach().clone()) for name, b in model.named_buffers() if "modules_to_save" not in name]


def restore_base_buffers(kept: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Puts back the base buffers that moved during a LoRA run (batch-norm layers are kept in eval mode, so none
    should; any other buffer a forward pass updates would), so that metrics taken now are those of the saved
    adapter on its base. Returns how many moved."""
    moved = 0
    with torch.no_grad():
        for buffer, value in kept:
            if not torch.equal(buffer, value.to(buffer.device)):
                buffer.copy_(value)
                moved += 1
    if moved:
        logger.warning(f"{moved} buffers of the frozen base moved during the LoRA run; they were put back.")
    return moved


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turns on activation checkpointing so that adapters still receive gradients.

    Reentrant checkpointing drops the gradient of a segment whose inputs do not require grad, which is every segment
    when the base is frozen (LoRA): the adapters would silently never train. We use the non-reentrant variant and,
    for transformers models, also make the input embeddings' output require grad.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", hasattr(base, "enable_gradient_checkpointing")):
        raise ValueError(
            f"`gradient_checkpointing` is True, but {type(base).__name__} does not support it; set "
            "gradient_checkpointing=False."
        )
    if _is_transformers(base):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        try:
            base.enable_input_require_grads()
        except NotImplementedError:
            pass  # no input embeddings to hook; non-reentrant checkpointing needs none
    elif "gradient_checkpointing_func" in inspect.signature(base.enable_gradient_checkpointing).parameters:
        base.enable_gradient_checkpointing(
            gradient_checkpointing_func=functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        )
    else:
        base.enable_gradient_checkpointing()


def prepare_model(family, config) -> nn.Module:
    """Applies `config.lora` and `config.gradient_checkpointing` to `family.model`; returns the model to train."""
    if config.lora and config.method == "retrain":
        raise ValueError("`lora` is True with method 'retrain', which trains a fresh model; set lora=False for RT.")
    model = apply_lora(family, config) if config.lora else family.model
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


# Merging and saving
def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every adapter merged into its base weights and the LoRA layers removed."""
    model = copy.deepcopy(model)
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
    return model


def save_model(family, model: nn.Module, directory: str | os.PathLike, config, base_model: Optional[str] = None):
    """Writes `model` into `directory`: natively without LoRA, else per `config.lora_save` (adapter or merged).

    Adapter outputs are peft's own (`PeftModel.save_pretrained`: `adapter_config.json` naming `base_model`, and
    `adapter_model.safetensors`), loaded with `PeftModel.from_pretrained(base, dir)`; after an earlier request's
    adapter, the saved adapter holds both (`hf_unlearn.lora_stack`); a family that saves its own
    LoRA format (Stable Diffusion: `pipe.load_lora_weights(dir)`) writes it itself.
    """
    if not has_lora(model) or _saves_own_lora(family):
        family.save_pretrained(model, directory)
        return
    if config.lora_save == "merged":
        family.save_pretrained(merged_copy(model), directory)
        return
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        raise ValueError(
            f"The {type(model).__name__} carries LoRA layers outside a peft.PeftModel, so its adapter cannot be saved "
            "in peft's format; save it with lora_save='merged'."
        )
    model.peft_config["default"].base_model_name_or_path = base_model
    model.save_pretrained(directory, safe_serialization=True)
    earlier = getattr(family, "earlier_adapter", None)
    if earlier is not None:  # trained on the merged earlier adapter: saved with it, on the base it names
        stack_saved_adapter(directory, earlier)
    processor = getattr(family, "image_processor", None)
    if processor is not None:
        processor.save_pretrained(directory)


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a local folder holding a peft adapter alone (`adapter_config.json`, no `config.json`)."""
    return (
        isinstance(path, (str, os.PathLike))
        and Path(path, ADAPTER_CONFIG_NAME).is_file()
        and not Path(path, "config.json").is_file()
    )


def is_diffusers_lora_folder(path) -> bool:
    """Whether `path` is a local diffusers pipeline folder with a LoRA file beside it (a text-to-image LoRA output)."""
    return (
        isinstance(path, (str, os.PathLike))
        and Path(path, "model_index.json").is_file()
        and Path(path, DIFFUSERS_LORA_NAME).is_file()
    )


def fuse_lora_folder(family, path) -> None:
    """Loads the LoRA file of a text-to-image output folder into its pipeline and fuses it into the UNet, so the
    next request starts from the model the folder describes (base weights + adapter) and trains a new adapter on top;
    saved again, the folder's base then holds every earlier adapter and its LoRA file the new one (docs/lora.md)."""
    pipeline = family.pipeline
    pipeline.load_lora_weights(str(path), adapter_name="earlier_requests")
    key = getattr(family, "denoiser", "unet")  # SD3 / FLUX: the `transformer`
    pipeline.fuse_lora(components=[key], adapter_names=["earlier_requests"])
    pipeline.unload_lora_weights()
    family.model = getattr(pipeline, key)


def adapter_base_model(path: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on: `base_model_name_or_path` of its `adapter_config.json`, as
    `peft.AutoPeftModel` reads it. Raises `ValueError` when the file names none."""
    values = json.loads(Path(path, ADAPTER_CONFIG_NAME).read_text())
    base = values.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"`{path}` is an adapter folder, but its {ADAPTER_CONFIG_NAME} names no `base_model_name_or_path`; set it "
            "to the base model's folder or repo id, or load the base and attach the adapter with PeftModel yourself."
        )
    return str(base)


def load_adapter_folder(family, path: str | os.PathLike) -> None:
    """Puts the adapter of `path` into `family.model`'s weights (merged) and keeps it as `family.earlier_adapter`: the
    next request trains a fresh adapter on the model the folder describes, and saves both stacked as one adapter on
    the folder's base (see `hf_unlearn.lora_stack` for why)."""
    family.model, family.earlier_adapter = merge_adapter_folder(family.model, path)
