"""Model families and their detection from a model object, a folder or a Hub repo id."""

from __future__ import annotations

import importlib
from typing import Any

from .base import ModelFamily
from .detect import read_config_file

# family id -> the class, or "module:Class" imported on first use so optional stacks load lazily; detection asks the
# families in this order.
_FAMILIES: dict[str, Any] = {
    "image_classifier": "hf_unlearn.families.image_classifier:ImageClassifierFamily",
    "class_conditional_diffusion": "hf_unlearn.families.class_conditional_diffusion:ClassConditionalDiffusionFamily",
    "text_to_image": "hf_unlearn.families.text_to_image:TextToImageFamily",
}
_ALIASES = {
    "text-to-image": "text_to_image",
    "image-classifier": "image_classifier",
    "class-conditional-diffusion": "class_conditional_diffusion",
}


def register_family(name: str, family_class, *, aliases: tuple[str, ...] = (), overwrite: bool = False) -> None:
    """Adds a model family: a [`ModelFamily`] subclass (or `"module:Class"`, imported on first use).

    Detection asks every registered family's `can_load`, in registration order, so a new family is found for its
    objects and folders without any other edit; `family="<name>"` and the CLI's `--family` accept it.
    """
    if name in _FAMILIES and not overwrite:
        raise ValueError(f"A family named '{name}' is already registered; pass overwrite=True to replace it.")
    if not isinstance(family_class, str) and not (
        isinstance(family_class, type) and issubclass(family_class, ModelFamily)
    ):
        raise ValueError(f"`family_class` must be a ModelFamily subclass or 'module:Class', got {family_class!r}.")
    _FAMILIES[name] = family_class
    for alias in aliases:
        _ALIASES[alias] = name


def list_families() -> list[str]:
    return list(_FAMILIES)


def normalize_family(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in _FAMILIES:
        raise ValueError(f"`family` is '{name}'; supported families are: {', '.join(_FAMILIES)}.")
    return name


def get_family_class(name: str) -> type[ModelFamily]:
    name = normalize_family(name)
    entry = _FAMILIES[name]
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = _FAMILIES[name] = getattr(importlib.import_module(module), cls)
    return entry


def detect_family(model_or_path: Any) -> str:
    """Finds the family of a model object, folder or repo id: the first registered family whose `can_load` accepts
    it (image classifiers: a `*ForImageClassification` model or config; class-conditional diffusion: a UNet2DModel /
    DiTTransformer2DModel or a pipeline without a text encoder; text-to-image: a UNet2DConditionModel, an
    SD3Transformer2DModel / FluxTransformer2DModel, or an SD, SDXL, SD3 or FLUX pipeline). Families added with
    [`register_family`] are asked after these."""
    from torch import nn  # noqa: PLC0415

    for name in list(_FAMILIES):
        if get_family_class(name).can_load(model_or_path):
            return name
    if isinstance(model_or_path, nn.Module) or hasattr(model_or_path, "components"):
        raise ValueError(
            f"Cannot tell the family of a {type(model_or_path).__name__} object; supported are transformers "
            "*ForImageClassification models, diffusers UNet2DModel / DiTTransformer2DModel (class-conditional) and "
            "Stable Diffusion (1.x, 2.x, XL, 3) and FLUX pipelines "
            f"(registered families: {', '.join(_FAMILIES)}). Pass family=... to choose."
        )
    cfg = read_config_file(model_or_path, "config.json") or read_config_file(model_or_path, "model_index.json")
    if cfg is None:
        raise ValueError(
            f"`{model_or_path}` is neither a folder with config.json / model_index.json nor a reachable Hub repo; "
            "check the path (offline, the repo must be in the local cache)."
        )
    found = cfg.get("_class_name") or cfg.get("architectures") or cfg.get("model_type")
    raise ValueError(
        f"`{model_or_path}` holds a {found} model, which hf_unlearn does not support; supported are transformers "
        "*ForImageClassification models, diffusers UNet2DModel / DiTTransformer2DModel, Stable Diffusion "
        "(1.x, 2.x, XL, 3) and FLUX pipelines."
    )


__all__ = ["ModelFamily", "detect_family", "get_family_class", "list_families", "normalize_family", "register_family"]
