"""Saving an unlearned model with its config, audit record and model card; pushing it to the Hub."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
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
    return to_jsonable(
        {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "method": unlearner.config.method,
            "method_parts": unlearner.method.describe(),
            "hyperparameters": unlearner.config.to_dict(),
            "forget_set": {k: split_info.get(k) for k in ("fingerprint", "scenario", "num_forget", "forget_classes")},
            "metrics": None if result is None else result.metrics,
            "runtime_s": None if result is None else result.runtime_s,
            "steps": None if result is None else result.steps,
            "work": None if result is None else result.work,
            "seed": unlearner.config.seed,
            "library_versions": library_versions(),
        }
    )


# What a run writes into its `output_dir`: mask, checkpoints, partial folders of a killed save, tracker logs
# (`hf_unlearn-{method}`, see tracking.py).
_RUN_ARTIFACTS = re.compile(
    r"^(\.?checkpoint-\d+(\.partial|\.old)?|saliency_mask\.safetensors|hf_unlearn-[\w.-]+|unlearn_config\.(yaml|json))$"
)


def check_output_dir(path: str | os.PathLike, overwrite: bool, argument: str = "save_directory") -> None:
    """Refuses to write into a non-empty folder that is not an earlier output of ours, unless `overwrite`.

    A folder is ours when it holds an unlearning record, or only what a run writes (checkpoints, the saliency mask).
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"`{argument}` {path} is a file; give a folder path.")
    foreign = [p.name for p in path.iterdir() if not _RUN_ARTIFACTS.match(p.name)]
    if foreign and read_record(path) is None and not overwrite:
        raise ValueError(
            f"`{argument}` {path} is not empty (it holds {sorted(foreign)[:3]}) and holds no {RECORD_NAME}, so it is "
            "not an earlier hf_unlearn output; choose another folder or pass overwrite=True (overwrite_output_dir) "
            "to replace it."
        )


def read_previous_record(model_or_path) -> Optional[dict]:
    """The record of an earlier hf_unlearn output (a local folder, or a Hub repo when reachable), else `None`.

    Loading such a model for another deletion request carries its history forward, so the next save appends to it.
    """
    if not isinstance(model_or_path, (str, os.PathLike)):
        return None
    if os.path.isdir(model_or_path):
        return read_record(model_or_path)
    if not _looks_like_repo(model_or_path):
        return None
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415

        with open(hf_hub_download(str(model_or_path), RECORD_NAME)) as fh:
            return json.load(fh)
    except Exception:  # noqa: BLE001 (no record, offline, private: all mean "no earlier history known")
        return None


def build_record(unlearner, *, dataset_name: Optional[str] = None, command: Optional[str] = None) -> dict:
    """The whole history: the earlier requests read at load time, plus this run's request if it ran."""
    requests = list(unlearner.records)
    if unlearner.result is not None:
        request = build_request(unlearner)
        request["dataset"] = dataset_name
        request["command"] = command
        request["lora"] = _lora_summary(unlearner)
        requests.append(request)
    return {
        "format": "hf_unlearn/record-v1",
        "base_model": getattr(unlearner.family, "base_model", None) or unlearner.source,
        "parent_model": unlearner.source,
        "family": unlearner.family.name,
        "requests": requests,
    }


def _lora_summary(unlearner) -> Optional[dict]:
    cfg = unlearner.config
    if not cfg.lora:
        return None
    from .lora import trainable_parameter_count  # noqa: PLC0415

    trainable, total = trainable_parameter_count(unlearner.model)
    return {
        "r": cfg.lora_r,
        "alpha": cfg.lora_alpha,
        "save": cfg.lora_save,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }


def save_unlearned(
    unlearner,
    save_directory,
    *,
    overwrite: Optional[bool] = None,
    dataset_name: Optional[str] = None,
    command: Optional[str] = None,
    images: Optional[dict] = None,
) -> None:
    r"""Writes model, config, record and card into a temporary folder, then swaps it in with one rename.

    Args:
        unlearner ([`Unlearner`]): the model and its run.
        save_directory (`str` or `os.PathLike`): the output folder.
        overwrite (`bool`, *optional*): replace a non-empty folder that is not an hf_unlearn output (defaults to
            the config's `overwrite_output_dir`).
        dataset_name (`str`, *optional*): the Hub dataset id of the training data, for the card's `datasets`.
        command (`str`, *optional*): the command line that produced the model, shown in the card.
        images (`dict[str, PIL.Image.Image]`, *optional*): sample grids (diffusion), saved as PNG beside the card.

    Under several processes only the main process writes; the others wait until the folder is complete.
    """
    from .lora import save_model  # noqa: PLC0415
    from .training import partial_state  # noqa: PLC0415

    state = partial_state()
    overwrite = unlearner.config.overwrite_output_dir if overwrite is None else overwrite
    check_output_dir(save_directory, overwrite)
    if state.is_main_process:
        record = build_record(unlearner, dataset_name=dataset_name, command=command)
        with atomic_directory(save_directory) as tmp:
            save_model(unlearner.family, unlearner.model, tmp, unlearner.config, base_model=record["base_model"])
            unlearner.config.save_pretrained(tmp)
            atomic_write_json(Path(tmp) / RECORD_NAME, record)
            for name, image in (images or {}).items():
                image.save(Path(tmp) / f"{name}.png")
            write_model_card(record, tmp, images=sorted(images or {}), adapter=_is_adapter(unlearner))
    state.wait_for_everyone()


def _is_adapter(unlearner) -> bool:
    return bool(unlearner.config.lora and unlearner.config.lora_save == "adapter")


def write_model_card(record: dict, folder, *, images: Optional[list[str]] = None, adapter: bool = False) -> None:
    """Writes `README.md`: `ModelCardData` metadata, the history of deletion requests, metrics and how to load it."""
    from huggingface_hub import ModelCard, ModelCardData  # noqa: PLC0415

    last = record["requests"][-1] if record["requests"] else {}
    method = last.get("method", "none")
    datasets = sorted({r["dataset"] for r in record["requests"] if _looks_like_repo(r.get("dataset"))})
    tags = ["machine-unlearning", "hf_unlearn", *sorted({str(r.get("method")) for r in record["requests"]})]
    data = ModelCardData(
        library_name=(
            "peft"
            if adapter and record["family"] == "image_classifier"
            else "transformers"
            if record["family"] == "image_classifier"
            else "diffusers"
        ),
        base_model=record.get("base_model") if _looks_like_repo(record.get("base_model")) else None,
        datasets=datasets or None,
        tags=tags + (["lora"] if adapter else []),
    )
    lines = [
        f"# Unlearned model ({method})",
        "",
        f"Produced by {LIBRARY_NAME} from "
        f"`{record.get('base_model') or 'a local model'}`. Its deletion requests, oldest first:",
        "",
        "| # | date | method | forget-set fingerprint | rows | steps | runtime (s) | FA | RA | TA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, req in enumerate(record["requests"], 1):
        fs, m = req.get("forget_set") or {}, req.get("metrics") or {}
        runtime = req.get("runtime_s")
        lines.append(
            f"| {i} | {req.get('date')} | {req.get('method')} | `{str(fs.get('fingerprint'))[:16]}…` | "
            f"{fs.get('num_forget')} | {req.get('steps')} | {'' if runtime is None else f'{runtime:.1f}'} | "
            + " | ".join(_fmt(m.get(k)) for k in ("FA", "RA", "TA"))
            + " |"
        )
    metrics = last.get("metrics") or {}
    if metrics:
        lines += ["", "## Metrics of the last request", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    lines += ["", "## How to load", "", "```python", _load_snippet(record["family"], adapter), "```"]
    if last.get("command"):
        lines += ["", "## How to reproduce", "", "```bash", last["command"], "```"]
    if images:
        lines += ["", "## Samples", ""] + [f"![{name}]({name}.png)" for name in images]
    lines += [
        "",
        "The full record (hyperparameters, library versions, fingerprints; never the forgotten data) is in "
        f"`{RECORD_NAME}`, the configuration in `{CONFIG_NAME}`.",
    ]
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines) + "\n")
    tmp = Path(folder) / "README.md.tmp"
    card.save(tmp)
    os.replace(tmp, Path(folder) / "README.md")


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _looks_like_repo(value) -> bool:
    return isinstance(value, str) and value.count("/") == 1 and not os.path.exists(value) and " " not in value


_SNIPPETS = {
    ("image_classifier", False): [
        "from transformers import AutoModelForImageClassification",
        'model = AutoModelForImageClassification.from_pretrained("PATH")',
    ],
    ("image_classifier", True): [
        "from peft import PeftModel",
        "from transformers import AutoModelForImageClassification",
        'base = AutoModelForImageClassification.from_pretrained("BASE_MODEL")',
        'model = PeftModel.from_pretrained(base, "PATH")',
    ],
    ("text_to_image", False): [
        "from diffusers import StableDiffusionPipeline",
        'pipe = StableDiffusionPipeline.from_pretrained("PATH")',
    ],
    ("text_to_image", True): [
        "from diffusers import StableDiffusionPipeline",
        'pipe = StableDiffusionPipeline.from_pretrained("PATH")  # the base weights, saved beside the adapter',
        'pipe.load_lora_weights("PATH")',
    ],
    ("class_conditional_diffusion", False): [
        "from hf_unlearn.pipelines import ClassConditionalPipeline",
        'pipe = ClassConditionalPipeline.from_pretrained("PATH")',
    ],
    ("class_conditional_diffusion", True): [
        "from hf_unlearn.lora import load_adapter",
        "# `model`: the base UNet2DModel or DiT of BASE_MODEL",
        'load_adapter(model, "PATH")',
    ],
}


def _load_snippet(family: str, adapter: bool = False) -> str:
    return "\n".join(_SNIPPETS.get((family, adapter), _SNIPPETS[("class_conditional_diffusion", adapter)]))


def push_to_hub(
    unlearner,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    local_dir: Optional[str] = None,
    commit_message: str = "Upload unlearned model",
    **save_kwargs,
) -> str:
    r"""Saves locally (complete first), then creates `repo_id` and uploads the folder (`upload_folder`).

    Args:
        repo_id (`str`): the Hub repo, `"user/name"`.
        private (`bool`, *optional*): create the repo private.
        token (`str`, *optional*): a write token; never written to the card, the record or any log message.
        local_dir (`str`, *optional*, defaults to `<output_dir>/final`): where the complete local copy is written.

    Returns the commit URL. Without network it raises `RuntimeError` saying where the complete local copy is.
    """
    from huggingface_hub import HfApi  # noqa: PLC0415

    from .training import partial_state  # noqa: PLC0415

    local_dir = local_dir or os.path.join(unlearner.config.output_dir, "final")
    save_unlearned(unlearner, local_dir, overwrite=True, **save_kwargs)
    if not partial_state().is_main_process:
        return ""
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
