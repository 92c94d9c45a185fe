"""Family: Stable Diffusion 1.x / 2.x (`StableDiffusionPipeline`); the UNet is trained, text encoder and VAE frozen.

Other text-to-image pipelines are subclasses listed in `_VARIANTS`, each with a `handles(components)` classmethod and
overriding the hooks `pipeline_class`, `required_components`, `frozen_modules`, `tokenize`, `_encode_rows`,
`_stack_rows`, `unconditional` and `predict` (SDXL: `text_to_image_xl.py`).
"""

from __future__ import annotations

import copy
import os
from typing import Any, ClassVar

import numpy as np
import torch
from accelerate.logging import get_logger
from torch import nn
from torch.utils.data import DataLoader

from ..concept import ConceptSplit
from ..utils import sha256_of
from .base import ModelFamily
from .cross_attention import CrossAttentionStates
from .detect import pipeline_components, read_config_file
from .noise_losses import PromptNoiseLosses

logger = get_logger(__name__)
# ESD-u ("noxattn" in the ESD code) trains everything but cross-attention, the time embedding and the output layers;
# SDXL's `add_embedding` (pooled text and size conditioning, added to the time embedding) is left out with the latter.
_NOT_IN_ESD_U = ("attn2", "time_embedding", "add_embedding", "conv_norm_out", "conv_out")
# The denoisers of the `transformer` variants (a bare one is loaded with `pipeline=`, as a bare UNet).
_TRANSFORMERS = ("SD3Transformer2DModel", "FluxTransformer2DModel")
# Subclasses for other pipelines, "module:Class", imported on first use; `from_pretrained` picks the first whose
# `handles` accepts the pipeline's components, else the class it was called on.
_VARIANTS = (
    "hf_unlearn.families.text_to_image_xl:TextToImageXLFamily",
    "hf_unlearn.families.text_to_image_sd3:TextToImageSD3Family",
    "hf_unlearn.families.text_to_image_flux:TextToImageFluxFamily",
)


class TextToImageFamily(CrossAttentionStates, PromptNoiseLosses, ModelFamily):
    r"""A Stable Diffusion pipeline whose `UNet2DConditionModel` is unlearned (held in `self.model`).

    Args:
        pipeline (`StableDiffusionPipeline`): the pipeline; its VAE and text encoder are frozen.
        config ([`UnlearnConfig`]): gives `train_modules`, `resolution`, the image / caption columns and `lora_save`.
    """

    name = "text_to_image"
    pipeline_class: ClassVar[str] = "StableDiffusionPipeline"  # the diffusers class that loads a folder or repo id
    required_components: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    # The pipeline component that is trained (`self.model`) and its diffusers class (SD3 / FLUX: a `transformer`).
    denoiser: ClassVar[str] = "unet"
    denoiser_class: ClassVar[str] = "UNet2DConditionModel"
    # Faithful ascent on the noise loss is unstable; remapping to an anchor is the authors' own SD choice. Without
    # their Fisher-ratio mask, on the cross-attention keys and values: the shape world's validation (docs/world.md).
    default_method = "anchor_remap"
    default_config: dict[str, Any] = {
        "max_grad_norm": 1.0,
        "remain_steps_per_forget": 1,
        "per_device_train_batch_size": 2,
        "divergence_guard": "check",  # a copy of a full SD UNet is 3.2 GiB more on the device
    }

    # The family-specific `UnlearnConfig` fields this family reads (any other one set is refused).
    config_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipeline, config):
        missing = [c for c in self.required_components if getattr(pipeline, c, None) is None]
        if missing:
            raise ValueError(
                f"The pipeline has no {missing}; pass a {self.pipeline_class} (or folder / repo id) "
                f"with {', '.join(self.required_components)}."
            )
        self._check_unet(getattr(pipeline, self.denoiser))
        for name in ("max_sequence_length", "flux_guidance_scale"):  # the flow families' own settings
            if getattr(config, name, None) is not None and name not in self.config_fields:
                raise ValueError(
                    f"`{name}` is set, but a {self.pipeline_class} has no use for it (it is for "
                    f"{'SD3 and FLUX' if name == 'max_sequence_length' else 'FLUX.1-dev'}); leave it unset."
                )
        self._pipeline = pipeline
        self.model = getattr(pipeline, self.denoiser)
        self.vae, self.text_encoder, self.tokenizer = pipeline.vae, pipeline.text_encoder, pipeline.tokenizer
        self.noise_scheduler = self.training_scheduler(pipeline.scheduler)
        self.train_modules = config.train_modules
        self.noise_loss_reduction = config.noise_loss_reduction
        self.image_column, self.caption_column = config.image_column, config.caption_column
        self.lora_save = config.lora_save
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = config.resolution or self.native_resolution()
        self._check_resolution(self.resolution)
        for module in self.frozen_modules():
            module.requires_grad_(False).eval()
        for name, param in self.model.named_parameters():
            if not self.trainable_parameter_filter(name):
                param.requires_grad_(False)
        self._embeddings: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def training_scheduler(scheduler):
        """The noise schedule of training: the checkpoint's own schedule and prediction type, whatever sampler it
        ships (a fresh object, so that a sampling call's `set_timesteps` never changes it)."""
        from diffusers import DDPMScheduler  # noqa: PLC0415

        return DDPMScheduler.from_config(scheduler.config)

    def native_resolution(self) -> int:
        """The image size the denoiser was built for (its latent `sample_size` times the VAE factor)."""
        return int(self.model.config.sample_size) * self.vae_scale_factor

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder]

    def frozen_modules(self) -> list[nn.Module]:
        """The modules beside the UNet that the losses run (frozen, moved to the batches' device)."""
        return [self.vae, *self.text_encoders]

    def _check_unet(self, unet) -> None:
        # SDXL's UNet needs pooled text and size embeddings (`added_cond_kwargs`) that SD 1.x / 2.x pipelines lack.
        if unet.config.addition_embed_type == "text_time":
            raise ValueError(
                "The UNet is an SDXL one (addition_embed_type='text_time'): it needs a StableDiffusionXLPipeline "
                "(two text encoders) as `pipeline`, not a one-encoder pipeline, and TextToImageXLFamily, which "
                "`Unlearner.from_pretrained` picks for such a pipeline or folder."
            )

    # Loading and saving
    @classmethod
    def can_load(cls, model_or_path: Any) -> bool:
        if type(model_or_path).__name__ in ("UNet2DConditionModel", *_TRANSFORMERS):
            return True
        # SD 1.x / 2.x / SDXL denoise with a `unet`; a `transformer` pipeline only when a variant handles it (SD3,
        # FLUX), so that other transformer pipelines (PixArt, ...) are refused by detection, naming their class.
        components = pipeline_components(model_or_path)
        if "text_encoder" not in components:
            return False
        return "unet" in components or ("transformer" in components and _variant_for(model_or_path) is not None)

    @classmethod
    def from_pretrained(
        cls,
        model_or_path,
        config,
        *,
        image_processor=None,
        transform=None,
        trust_remote_code=False,
        pipeline=None,
        **kwargs,
    ) -> TextToImageFamily:
        """Loads a folder or repo id with `StableDiffusionPipeline.from_pretrained` (extra `kwargs` go there), or takes
        a pipeline object, or a `UNet2DConditionModel` together with `pipeline=` (the rest of the components).

        A pipeline of another kind that a subclass `handles` (an SDXL one: it has `text_encoder_2`) is loaded by that
        subclass, so `family="text_to_image"` and detection serve every variant."""
        variant = _variant_for(pipeline if pipeline is not None else model_or_path)
        if variant is not None and cls is not variant and issubclass(variant, cls):
            return variant.from_pretrained(model_or_path, config, pipeline=pipeline, **kwargs)
        import diffusers  # noqa: PLC0415

        source = None
        if type(model_or_path).__name__ == cls.denoiser_class:
            if pipeline is None:
                raise ValueError(
                    f"A bare {cls.denoiser_class} has no VAE, text encoder or tokenizer: pass "
                    f"`pipeline=` (a {cls.pipeline_class} whose other components go with this {cls.denoiser})."
                )
            setattr(pipeline, cls.denoiser, model_or_path)
        elif hasattr(model_or_path, "components"):
            pipeline = model_or_path
        else:
            pipeline = getattr(diffusers, cls.pipeline_class).from_pretrained(model_or_path, **kwargs)
            source = str(model_or_path)
        if getattr(pipeline, "_progress_bar_config", None) is None:
            pipeline.set_progress_bar_config(disable=True)
        family = cls(pipeline, config)
        family.source = source or getattr(pipeline, "name_or_path", None)
        return family

    @property
    def pipeline(self):
        """The pipeline with the current UNet (after unlearning, the unlearned one): ready for evaluation."""
        if getattr(self._pipeline, self.denoiser) is not self.model:
            setattr(self._pipeline, self.denoiser, self.model)
        return self._pipeline

    def save_pretrained(self, model: nn.Module, save_directory: str | os.PathLike) -> None:
        """A full diffusers pipeline folder; with a LoRA UNet, base weights plus `pytorch_lora_weights.safetensors`
        (`lora_save="adapter"`, for `load_lora_weights`) or the adapter merged into the UNet (`"merged"`)."""
        unet, lora_layers, metadata = model, None, None
        if getattr(model, "peft_config", None):
            from diffusers.utils import convert_state_dict_to_diffusers  # noqa: PLC0415
            from peft.utils import get_peft_model_state_dict  # noqa: PLC0415

            unet = copy.deepcopy(model)
            if self.lora_save == "merged":
                unet.fuse_lora()
            else:
                lora_layers = get_peft_model_state_dict(model)
                if self.denoiser == "unet":  # the UNet LoRA format; SD3 / FLUX loaders read peft's keys as they are
                    lora_layers = convert_state_dict_to_diffusers(lora_layers)
                metadata = next(iter(model.peft_config.values())).to_dict()
            unet.unload_lora()
        pipeline, key = self.pipeline, self.denoiser
        try:
            setattr(pipeline, key, unet)
            pipeline.save_pretrained(save_directory, safe_serialization=True)
        finally:
            setattr(pipeline, key, self.model)
        if lora_layers is not None:  # `unet_lora_layers=` for SD / SDXL, `transformer_lora_layers=` for SD3 / FLUX
            type(pipeline).save_lora_weights(
                save_directory,
                **{f"{key}_lora_layers": lora_layers, f"{key}_lora_adapter_metadata": metadata},
                safe_serialization=True,
            )

    def fresh_model(self, init: str = "config") -> nn.Module:
        import diffusers  # noqa: PLC0415

        model_class = getattr(diffusers, self.denoiser_class)
        if init == "config":
            return model_class.from_config(self.model.config)
        key = self.denoiser
        subfolder = key if read_config_file(init, "config.json", subfolder=key) is not None else None
        return model_class.from_pretrained(init, subfolder=subfolder)

    def model_id(self) -> str:
        """Identifies the generating model in the concept-image cache key (source, configs, a probe of the weights)."""
        params = list(self.model.parameters())
        probe = [float(params[0].detach().float().sum()), float(params[-1].detach().float().sum())]
        return sha256_of(
            getattr(self, "source", None),
            dict(self.model.config),
            *[dict(encoder.config.to_dict()) for encoder in self.text_encoders],
            type(self._pipeline.scheduler).__name__,
            probe,
        )

    # Data
    def prepare_split(self, split, config, needs_remain: bool = True):
        if not isinstance(split, ConceptSplit):
            if not (hasattr(split, "forget") and hasattr(split, "remain")):
                raise ValueError(
                    "The text-to-image family unlearns a `ConceptSplit` (prompts or captioned images); "
                    f"got a {type(split).__name__}."
                )
            return split
        if needs_remain and not split.has_remain:
            raise ValueError(
                f"Method '{config.method}' needs a remain set: pass `remain_prompts` (e.g. ['a photo of "
                "a person wearing clothes']) or `remain_dataset` to ConceptSplit."
            )
        cache_dir = split.cache_dir or os.path.join(config.output_dir, "concept_cache")
        return split.materialize(
            self.pipeline,
            resolution=self.resolution,
            cache_dir=cache_dir,
            image_column=self.image_column,
            caption_column=self.caption_column,
            model_id=self.model_id(),
        )

    def replay_split(self, split, config, device):
        """Generative replay: remain images generated from `remain_prompts` by this pipeline already are replay."""
        if getattr(split, "remain_prompts", None):
            return split
        raise ValueError(
            f"Method '{config.method}' trains on images the original model generates (generative replay); give "
            "`remain_prompts` (generated by the pipeline) instead of `remain_dataset` in the ConceptSplit."
        )

    def validate_split(self, split) -> None:
        for name in ("forget", "remain"):
            ds = getattr(split, name)
            if len(ds) == 0 and name == "remain":
                continue
            for arg, column in (("image_column", self.image_column), ("caption_column", self.caption_column)):
                if column not in ds.column_names:
                    raise ValueError(
                        f"`{arg}` is '{column}', but the {name} set has columns {ds.column_names}; "
                        f"pass {arg}=... in UnlearnConfig."
                    )
            bad = [c for c in ds[self.caption_column][:1000] if not isinstance(c, str)]
            if bad:
                raise ValueError(
                    f"Column `{self.caption_column}` of the {name} set must hold strings, found {bad[:3]}."
                )
        resolution = getattr(split, "resolution", None)
        if resolution:
            self._check_resolution(resolution)

    def _check_resolution(self, resolution: int) -> None:
        blocks = len(self.model.config.block_out_channels)
        multiple = self.vae_scale_factor * 2 ** (blocks - 1)
        if resolution % multiple:
            raise ValueError(
                f"`resolution` is {resolution}, but this UNet and VAE need a multiple of {multiple} "
                f"(e.g. {max(multiple, resolution // multiple * multiple)})."
            )

    def pixel_values(self, images: list) -> torch.Tensor:
        """Resize the short side to `resolution`, centre-crop, scale to [-1, 1] (as diffusers' training scripts)."""
        size, out = self.resolution, []
        for image in images:
            image = image.convert("RGB")
            scale = size / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), resample=3)
            left, top = (w - size) // 2, (h - size) // 2
            array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)
            out.append(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0)
        return torch.stack(out)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "pixel_values": self.pixel_values([r[self.image_column] for r in rows]),
            "input_ids": self.tokenize([r[self.caption_column] for r in rows]),
        }
        if rows and "anchor" in rows[0]:
            batch["anchor_input_ids"] = self.tokenize([r["anchor"] for r in rows])
        return batch

    def make_dataloader(self, dataset, *, batch_size, shuffle, seed, drop_last=False) -> DataLoader:
        columns = [c for c in (self.image_column, self.caption_column, "anchor") if c in dataset.column_names]
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset.select_columns(columns),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            collate_fn=self.collate,
            **self.loader_options(),
        )

    def trainable_parameter_filter(self, name: str) -> bool:
        """`train_modules`: "all"; "cross_attention" (ESD-x: every `attn2` weight, q/k/v/out); "cross_attention_kv"
        (`attn2.to_k`, `attn2.to_v`: the projections UCE edits); "non_cross_attention"
        (ESD-u: all but `attn2`, the time embedding and the output layers, as the ESD code's `noxattn`)."""
        return is_trainable(name, self.train_modules)

    # Tensors the losses share
    def _frozen_to(self, device: torch.device) -> None:
        if self.vae.device != device:
            for module in self.frozen_modules():
                module.to(device)

    @torch.no_grad()
    def encode_prompts(self, input_ids: torch.Tensor):
        """The conditioning of token ids (`tokenize`), cached per distinct prompt (the encoders are frozen, prompts
        few): text-encoder states here, what `predict` takes in every variant."""
        self._frozen_to(input_ids.device)
        keys = [tuple(row.tolist()) for row in input_ids]
        todo = [i for i, k in enumerate(keys) if k not in self._embeddings]
        if todo:
            rows = self._encode_rows(input_ids[todo])
            if len(self._embeddings) > 4096:
                self._embeddings.clear()
            for i, row in zip(todo, rows):
                self._embeddings[keys[i]] = row
        return self._stack_rows([self._embeddings[k] for k in keys])

    def _encode_rows(self, ids: torch.Tensor):
        """One conditioning row per row of `ids` (uncached prompts), in any form `_stack_rows` batches."""
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = (ids != self.tokenizer.pad_token_id).long()
        return self.text_encoder(ids, attention_mask=mask)[0]

    def _stack_rows(self, rows: list):
        return torch.stack(rows)

    def unconditional(self, cond):
        """The empty prompt's conditioning, one row per row of `cond` (the ε(x_t, "") of classifier-free guidance)."""
        return self.encode_prompts(self.tokenize([""]).to(cond.device)).expand_as(cond)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self._frozen_to(pixel_values.device)
        latents = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.sample()
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:  # SD3 / FLUX VAEs: (z − shift) · scale, as their training scripts and pipelines (inverse) do
            latents = latents - shift
        return latents * self.vae.config.scaling_factor


def _variant_for(model_or_path: Any):
    """The first subclass in `_VARIANTS` that handles the pipeline, folder or repo id, or `None`."""
    import importlib  # noqa: PLC0415

    if type(model_or_path).__name__ == "UNet2DConditionModel":
        return None
    components = pipeline_components(model_or_path)
    for entry in _VARIANTS:
        module, name = entry.split(":")
        variant = getattr(importlib.import_module(module), name)
        if variant.handles(components) or type(model_or_path).__name__ == variant.denoiser_class:
            return variant
    return None


def is_trainable(name: str, train_modules: str) -> bool:
    """Whether UNet parameter `name` is in the `train_modules` subset (see `trainable_parameter_filter`)."""
    if train_modules == "cross_attention":
        return "attn2" in name
    if train_modules == "cross_attention_kv":  # act on the text tokens only: a prompt without them is not touched
        return "attn2.to_k" in name or "attn2.to_v" in name
    if train_modules == "non_cross_attention":
        return not any(part in name for part in _NOT_IN_ESD_U)
    return True


__all__ = ["TextToImageFamily", "is_trainable"]
