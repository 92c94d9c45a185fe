"""Saving an unlearned model with its config, audit record and model card; pushing it to the Hub."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Optional

from .utils import CONFIG_NAME, RECORD_NAME, atomic_directory, atomic_write_json, to_jsonable

LIBRARY_NAME = "hf_unlearn"
_VERSIONED = ["hf_unlearn", "torch", "transformers", "diffusers", "accelerate", "datasets", "peft"]


def library_versions() -> dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def read_record(path: str | os.PathLike) -> Optional[dict]:
    """The unlearning record of an earlier output folder, or `None` if the folder holds none."""
    file = Path(path) / RECORD_NAME
    if not file.is_file():
        return None
    with open(file) as fh:
        return json.load(fh)


def build_request(unlearner) -> dict:
    """One deletion request of the history: what was forgotten (fingerprint only), how, and with what result."""
    result = unlearner.result
    split_info = getattr(unlearner, "_split_info", {}) or {}
    return to_jsonable({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": unlearner.config.method,
        "method_parts": unlearner.method.describe(),
        "hyperparameters": unlearner.config.to_dict(),
        "forget_set": {k: split_info.get(k) for k in ("fingerprint", "scenario", "num_forget", "forget_classes")},
        "metrics": None if result is None else result.metrics,
        "runtime_s": None if result is None else result.runtime_s,
        "steps": None if result is None else result.steps,
        "seed": unlearner.config.seed,
        "library_versions": library_versions(),
    })


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuses to replace a non-empty folder that is not an earlier output of ours, unless `overwrite`."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"The output path {path} is a file; give a folder path.")
    if any(path.iterdir()) and read_record(path) is None and not overwrite:
        raise ValueError(
            f"The output folder {path} is not empty and holds no {RECORD_NAME}, so it is not an earlier hf_unlearn "
            "output; choose another folder or pass overwrite=True (overwrite_output_dir) to replace it."
        )


def save_unlearned(unlearner, save_directory, *, overwrite: Optional[bool] = None) -> None:
    """Writes model, config, record and card into a temporary folder, then swaps it in with one rename."""
    overwrite = unlearner.config.overwrite_output_dir if overwrite is None else overwrite
    check_output_dir(save_directory, overwrite)
    requests = list(unlearner.records)
    if unlearner.result is not None:
        requests.append(build_request(unlearner))
    record = {"format": "hf_unlearn/record-v1", "base_model": unlearner.source, "family": unlearner.family.name,
              "requests": requests}
    with atomic_directory(save_directory) as tmp:
        unlearner.family.save_pretrained(unlearner.model, tmp)
        unlearner.config.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / RECORD_NAME, record)
        write_model_card(record, tmp)


def write_model_card(record: dict, folder) -> None:
    from huggingface_hub import ModelCard, ModelCardData  # noqa: PLC0415

    last = record["requests"][-1] if record["requests"] else {}
    method = last.get("method", "none")
    data = ModelCardData(
        library_name="transformers" if record["family"] == "image_classifier" else "diffusers",
        base_model=record.get("base_model") if _looks_like_repo(record.get("base_model")) else None,
        tags=["machine-unlearning", "hf_unlearn", method],
    )
    lines = [f"# Unlearned model ({method})", "", "This model was produced by "
             "[hf_unlearn](https://github.com/) from "
             f"`{record.get('base_model') or 'a local model'}`. Its deletion requests, oldest first:", "",
             "| # | date | method | forget-set fingerprint | rows | steps | runtime (s) |",
             "|---|---|---|---|---|---|---|"]
    for i, req in enumerate(record["requests"], 1):
        fs = req.get("forget_set") or {}
        runtime = req.get("runtime_s")
        lines.append(f"| {i} | {req.get('date')} | {req.get('method')} | `{str(fs.get('fingerprint'))[:16]}…` | "
                     f"{fs.get('num_forget')} | {req.get('steps')} | {'' if runtime is None else f'{runtime:.1f}'} |")
    metrics = last.get("metrics") or {}
    if metrics:
        lines += ["", "## Metrics of the last request", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {'' if v is None else (f'{v:.3f}' if isinstance(v, float) else v)} |"
                  for k, v in metrics.items()]
    lines += ["", "## How to load", "", "```python", _load_snippet(record["family"]), "```", "",
              "The full record (hyperparameters, library versions, fingerprints; never the forgotten data) is in "
              f"`{RECORD_NAME}`, the configuration in `{CONFIG_NAME}`."]
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines) + "\n")
    tmp = Path(folder) / "README.md.tmp"
    card.save(tmp)
    os.replace(tmp, Path(folder) / "README.md")


def _looks_like_repo(value) -> bool:
    return isinstance(value, str) and value.count("/") == 1 and not os.path.exists(value)


def _load_snippet(family: str) -> str:
    if family == "image_classifier":
        return 'from transformers import AutoModelForImageClassification\nmodel = AutoModelForImageClassification.from_pretrained("PATH")'
    if family == "text_to_image":
        return 'from diffusers import StableDiffusionPipeline\npipe = StableDiffusionPipeline.from_pretrained("PATH")'
    return 'from hf_unlearn.pipelines import ClassConditionalPipeline\npipe = ClassConditionalPipeline.from_pretrained("PATH")'


def push_to_hub(unlearner, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                local_dir: Optional[str] = None, commit_message: str = "Upload unlearned model") -> str:
    """Saves locally (complete first), then creates `repo_id` and uploads the folder; returns the commit URL."""
    from huggingface_hub import HfApi  # noqa: PLC0415

    local_dir = local_dir or os.path.join(unlearner.config.output_dir, "final")
    save_unlearned(unlearner, local_dir, overwrite=True)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=local_dir, commit_message=commit_message)
    except Exception as err:  # noqa: BLE001 (network errors come in many types; the token is never in the message)
        raise RuntimeError(
            f"Could not push to the Hub repo '{repo_id}' ({type(err).__name__}); the model is saved completely in "
            f"{local_dir}. Check the network and your token, then retry push_to_hub or upload that folder."
        ) from None
    return str(getattr(info, "commit_url", info))
