"""What `Unlearner.from_pretrained` loads: a model object, a local folder, a Hub repo id or a LoRA output folder, as
its family, with the config that loading implies (`lora=True` for an adapter folder, the detected family)."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from .config import UnlearnConfig
from .families import detect_family, get_family_class, normalize_family
from .hub import base_model_of, read_previous_record
from .lora import (
    adapter_base_model,
    fuse_lora_folder,
    is_adapter_folder,
    is_diffusers_lora_folder,
    load_adapter_folder,
)
from .network import check_hub_reachable
from .resolve import resolve_config
from .utils import get_logger
from .validation import check_weights_files

logger = get_logger(__name__)


def load_family(
    model_or_path,
    config: UnlearnConfig,
    family: Optional[str] = None,
    *,
    image_processor=None,
    transform=None,
    trust_remote_code: bool = False,
    **kwargs,
):
    """The family object of `model_or_path` and `config` with its family set (and `lora=True` for a LoRA output)."""
    check_hub_reachable(model_or_path)  # a Hub id: fail fast with the HF_HUB_OFFLINE hint, not minutes of silence
    base = adapter_base_model(model_or_path) if is_adapter_folder(model_or_path) else model_or_path
    if base is not model_or_path:
        check_weights_files(model_or_path, "model_or_path")  # a pickle-only adapter is never loaded
    if (base is not model_or_path or is_diffusers_lora_folder(model_or_path)) and not config.lora:
        logger.info(f"{model_or_path} is a LoRA output folder: the next request trains LoRA too (lora=True).")
        config = replace(config, lora=True)
    family = normalize_family(family or config.family or detect_family(base))
    config = replace(config, family=family)
    resolved = resolve_config(config, family)  # checks that the method supports the family, before any loading
    family_obj = get_family_class(family).from_pretrained(
        base,
        resolved,
        image_processor=image_processor,
        transform=transform,
        trust_remote_code=trust_remote_code,
        **kwargs,
    )
    if base is not model_or_path:
        load_adapter_folder(family_obj, model_or_path)  # merged; the new adapter stacks onto it when saved
        family_obj.source = str(model_or_path)
        family_obj.input_paths = [base]
    elif is_diffusers_lora_folder(model_or_path):
        fuse_lora_folder(family_obj, model_or_path)
    previous = read_previous_record(model_or_path)  # an earlier hf_unlearn output: its history carries on
    if previous:
        family_obj.previous_records = previous.get("requests", [])
    family_obj.base_model, family_obj.base_model_path = base_model_of(model_or_path, base, previous)
    return family_obj, config
