"""Model families and their detection from a model object, a folder or a Hub repo id."""

from __future__ import annotations

import importlib
from typing import Any

from .base import ModelFamily
from .detect import read_config_file

# family id -> (module, class); modules are imported on first use so optional stacks load lazily.
_FAMILIES: dict[str, tuple[str, str]] = {
    "image_classifier": ("hf_unlearn.families.image_classifier", "ImageClassifierFamily"),
    "class_conditional_diffusion": (
        "hf_unlearn.families.class_conditional_diffusion",
        "ClassConditionalDiffusionFamily",
    ),
    "text_to_image": ("hf_unlearn.families.text_to_image", "TextToImageFamily"),
}
_ALIASES = {
    "text-to-image": "text_to_image",
    "image-classifier": "image_classifier",
    "class-conditional-diffusion": "class_conditional_diffusion",
}


def list_families() -> list[str]:
    return list(_FAMILIES)


def normalize_family(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in _FAMILIES:
        raise ValueError(f"`family` is '{name}'; supported families are: {', '.join(_FAMILIES)}.")
    return name


def get_family_class(name: str) -> type[ModelFamily]:
    module, cls = _FAMILIES[normalize_family(name)]
    return getattr(importlib.import_module(module), cls)


def detect_family(model_or_path: Any) -> str:
    """Finds the family of a model object, folder or repo id, in the documented order.

    1. a model object, by its class; 2. a folder or repo with `model_index.json` (a diffusers pipeline, whose
    `_class_name` picks text-to-image or class-conditional); 3. a diffusers model config whose `_class_name` is
    `UNet2DModel` or `DiTTransformer2DModel`; 4. a transformers config whose `architectures` end in
    `ForImageClassification`.
    """
    from torch import nn  # noqa: PLC0415

    if isinstance(model_or_path, nn.Module):
        name = type(model_or_path).__name__
        if name in ("UNet2DModel", "DiTTransformer2DModel"):
            return "class_conditional_diffusion"
        if name == "UNet2DConditionModel":
            return "text_to_image"
        if get_family_class("image_classifier").can_load(model_or_path):
            return "image_classifier"
        raise ValueError(
            f"Cannot tell the family of a {name} object; supported are transformers *ForImageClassification models, "
            "diffusers UNet2DModel / DiTTransformer2DModel (class-conditional) and Stable Diffusion pipelines. "
            "Pass family=... to choose."
        )
    if hasattr(model_or_path, "components"):  # a diffusers pipeline object
        return "text_to_image" if "text_encoder" in model_or_path.components else "class_conditional_diffusion"
    index = read_config_file(model_or_path, "model_index.json")
    if index is not None:
        components = {k for k in index if not k.startswith("_")}
        return "text_to_image" if "text_encoder" in components else "class_conditional_diffusion"
    cfg = read_config_file(model_or_path, "config.json")
    if cfg is None:
        raise ValueError(
            f"`{model_or_path}` is neither a folder with config.json / model_index.json nor a reachable Hub repo; "
            "check the path (offline, the repo must be in the local cache)."
        )
    if cfg.get("_class_name") in ("UNet2DModel", "DiTTransformer2DModel"):
        return "class_conditional_diffusion"
    if any(str(a).endswith("ForImageClassification") for a in cfg.get("architectures") or []):
        return "image_classifier"
    found = cfg.get("_class_name") or cfg.get("architectures") or cfg.get("model_type")
    raise ValueError(
        f"`{model_or_path}` holds a {found} model, which hf_unlearn does not support; supported are transformers "
        "*ForImageClassification models, diffusers UNet2DModel / DiTTransformer2DModel and Stable Diffusion pipelines."
    )


__all__ = ["ModelFamily", "detect_family", "get_family_class", "list_families", "normalize_family"]
