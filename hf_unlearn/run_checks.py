"""Checks of a run's own inputs that need the engine's modules (checkpoints, LoRA), before any weight changes."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .checkpointing import list_checkpoints, resolve_checkpoint, verify_manifest
from .lora import adapter_base_model, has_lora, is_adapter_folder
from .validation import check_safetensors_file, check_weights_files


def check_run_inputs(config, method, model) -> None:
    """The run's own files, checked before any weight changes: the checkpoint to resume, the mask to load, the
    retraining start, the LoRA targets (these used to fail only after the saliency pass, or after a whole retrain)."""
    if config.resume_from_checkpoint:
        folder = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir)
        if folder is not None:
            state = Path(folder) / "engine_state.json"
            run_id = json.loads(state.read_text()).get("run_id") if state.is_file() else None
            verify_manifest(Path(folder), run_id)
        elif config.resume_from_checkpoint == "latest":
            list_checkpoints(config.output_dir)
    if config.mask_path:
        if not os.path.isfile(config.mask_path):
            raise ValueError(f"`mask_path` {config.mask_path} is not a file; pass a mask saved by an earlier run.")
        check_safetensors_file(config.mask_path, "mask_path")
    init = config.retrain_init
    if getattr(method, "reinit", False) and init and init != "config":
        if is_adapter_folder(init):
            raise ValueError(
                f"`retrain_init` {init} is a LoRA adapter folder; retraining starts from a full model: pass the "
                "base model's folder, a merged model (lora_save='merged'), or 'config' (a fresh initialisation)."
            )
        if os.path.isdir(init):
            check_weights_files(init, "retrain_init")
        elif os.path.sep in init or os.path.exists(init):
            raise ValueError(
                f"`retrain_init` {init} is not a model folder; pass a model folder, a repo id or 'config'."
            )
    targets = config.lora_target_modules
    if config.lora and targets and targets != ["all-linear"] and not has_lora(model):
        names = [n for n, _ in model.named_modules()]
        if not any(n == t or n.endswith("." + t) for t in targets for n in names):
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n})[:8]
            raise ValueError(
                f"`lora_target_modules` is {targets!r}, which matches no layer of {type(model).__name__}. Name layers "
                f"that exist (their last name part, e.g. {leaves}) or use ['all-linear']."
            )


def input_folders(*paths) -> list:
    """`paths` (models, references) and, for a LoRA adapter folder among them, the base model it names."""
    found = []
    for path in paths:
        if path is None:
            continue
        found.append(path)
        if is_adapter_folder(path):
            with contextlib.suppress(ValueError, OSError):
                found.append(adapter_base_model(path))
    return found


__all__ = ["check_run_inputs", "input_folders"]
