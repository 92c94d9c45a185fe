"""Saving an unlearned model with its config, audit record and model card; pushing it to the Hub."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Optional

from .guard import check_savable
from .lora import save_model, trainable_parameter_count
from .modelcard import card_inputs_of, looks_like_repo, write_model_card
from .network import scrub, with_retries
from .requests import remeasure_earlier, request_row_digests, resolve_row_key
from .run_lock import claim_output_dir, restore_moved_aside, unlock_output_dir
from .training import partial_state
from .utils import (
    RECORD_NAME,
    RUN_ARTIFACTS,
    atomic_directory,
    atomic_write_json,
    check_output_dir,
    read_record,
    to_jsonable,
)
from .validation import check_not_source

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
            "forget_set": _forget_set(unlearner, split_info),
            "metrics_before": getattr(unlearner, "metrics_before", None),
            "metrics": None if result is None else result.metrics,
            # The forget sets of earlier requests, measured again on this model (None: nothing earlier).
            "earlier_requests": getattr(unlearner, "earlier_metrics", None),
            "runtime_s": None if result is None else result.runtime_s,
            "steps": None if result is None else result.steps,
            "work": None if result is None else result.work,
            "seed": unlearner.config.seed,
            "library_versions": library_versions(),
        }
    )


def _forget_set(unlearner, split_info: dict) -> dict:
    """What the record keeps of the forget set: fingerprints, counts, class ids and names, prompts; never the data."""
    keys = ("fingerprint", "scenario", "num_forget", "forget_classes", "dataset_fingerprint", "forget_prompts")
    info = {k: split_info.get(k) for k in keys}
    info["anchor_prompts"] = split_info.get("anchor_prompts")
    split = getattr(unlearner, "_request_split", None)
    if info["forget_prompts"] is None and getattr(split, "concepts", None):  # captioned images: their captions
        info["forget_prompts"], info["anchor_prompts"] = (list(v) for v in zip(*split.concepts))
    if split is not None:  # keyed digests of forgotten rows, so that a later request can keep them out
        info |= request_row_digests(split, resolve_row_key(getattr(unlearner, "row_key", None)))
        if getattr(split, "num_excluded_earlier", None) is not None:
            info["num_excluded_earlier"] = split.num_excluded_earlier
    id2label = getattr(getattr(unlearner.model, "config", None), "id2label", None) or {}
    if info["forget_classes"] and id2label:
        labels = {str(k): v for k, v in id2label.items()}
        info["forget_class_names"] = {str(c): labels.get(str(c)) for c in info["forget_classes"]}
    return info


UPLOAD_IGNORE = ["checkpoint-*", ".checkpoint-*", "saliency_mask.safetensors", "hf_unlearn-*", "concept_cache/*", ".*"]


def read_previous_record(model_or_path) -> Optional[dict]:
    """The record of an earlier hf_unlearn output (a local folder, or a Hub repo when reachable), else `None`.

    Loading such a model for another deletion request carries its history forward, so the next save appends to it.
    """
    if not isinstance(model_or_path, (str, os.PathLike)):
        return None
    if os.path.isdir(model_or_path):
        return read_record(model_or_path)
    if not looks_like_repo(model_or_path):
        return None
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415

        with open(hf_hub_download(str(model_or_path), RECORD_NAME)) as fh:
            return json.load(fh)
    except Exception:  # noqa: BLE001 (no record, offline, private: all mean "no earlier history known")
        return None


def base_model_of(model_or_path, base, previous: Optional[dict]) -> tuple[Optional[str], Optional[str]]:
    """(the Hub id of the original model or `None`, the path or id the base weights load from).

    The Hub id comes from an earlier record, else from the input itself when it is a repo id, else from what a local
    copy says of its origin: its Hub-cache path, `_name_or_path` in its `config.json` / `model_index.json`, or its
    card's `base_model`.
    """
    path = str(base) if isinstance(base, (str, os.PathLike)) else None
    if previous:
        hub_id = previous.get("base_model")
        return (hub_id if looks_like_repo(hub_id) else None), path
    if path is None:
        return None, None
    if looks_like_repo(path):
        return path, path
    return _hub_id_of_local(Path(path)), path


def _hub_id_of_local(folder: Path) -> Optional[str]:
    # A snapshot in the Hub cache (`.../models--owner--name/snapshots/<revision>`) names its repo in its path.
    parts = folder.absolute().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        owner_name = parts[-3].removeprefix("models--").split("--", 1)
        if len(owner_name) == 2:
            return "/".join(owner_name)
    for name in ("config.json", "model_index.json"):
        try:
            value = json.loads((folder / name).read_text()).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            continue
        if looks_like_repo(value):
            return value
    try:
        from huggingface_hub import ModelCard  # noqa: PLC0415

        value = ModelCard.load(folder / "README.md").data.to_dict().get("base_model")
    except Exception:  # noqa: BLE001 (no card, or a card without metadata)
        return None
    value = value[0] if isinstance(value, list) and value else value
    return value if looks_like_repo(value) else None


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
        "base_model": getattr(unlearner.family, "base_model", None),  # a Hub id, never a local path
        "parent_model": unlearner.source,
        "family": unlearner.family.name,
        "requests": requests,
    }


def _lora_summary(unlearner) -> Optional[dict]:
    cfg = unlearner.config
    if not cfg.lora:
        return None
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
    repo_id: Optional[str] = None,
) -> None:
    r"""Writes model, config, record and card into a temporary folder, then swaps it in with one rename.

    Args:
        unlearner ([`Unlearner`]): the model and its run.
        save_directory (`str` or `os.PathLike`): the output folder. What a run wrote there (checkpoints, the saliency
            mask, generated concept images) is kept beside the model.
        overwrite (`bool`, *optional*): replace a non-empty folder that is not an hf_unlearn output (defaults to
            the config's `overwrite_output_dir`).
        dataset_name (`str`, *optional*): the training data: a Hub dataset id (also the card's `datasets`) or a name.
        command (`str`, *optional*): the command line that produced the model, shown in the card.
        images (`dict[str, PIL.Image.Image]`, *optional*): sample grids (diffusion), saved as PNG beside the card.
        repo_id (`str`, *optional*): the Hub repo the folder is meant for; the card's load snippet reads from it
            (else from `save_directory`).

    Under several processes only the main process writes; the others wait until the folder is complete.
    """
    state = partial_state()
    overwrite = unlearner.config.overwrite_output_dir if overwrite is None else overwrite
    check_savable(unlearner)  # nothing non-finite, and no unfinished (diverged) run, is ever saved
    check_not_source(save_directory, unlearner.input_paths(), argument="save_directory")
    if state.is_main_process:
        restore_moved_aside(save_directory)  # a save killed between its two renames: the previous output is put back
    check_output_dir(save_directory, overwrite)
    split = getattr(unlearner, "_request_split", None)
    if unlearner.result is not None and unlearner.records and split is not None:
        # On every process (the passes are shared); the model as it is saved, unless `evaluate` measured it already.
        if getattr(unlearner, "earlier_metrics", None) is None:
            unlearner.earlier_metrics = remeasure_earlier(unlearner, split)
    if state.is_main_process:
        held = claim_output_dir(save_directory, argument="save_directory")
        try:
            _write_output(unlearner, save_directory, dataset_name, command, images, repo_id)
        finally:
            if not held:  # taken for this save only (not by a run or the CLI of this process): released now
                unlock_output_dir(save_directory)
    state.wait_for_everyone()


def _write_output(unlearner, save_directory, dataset_name, command, images, repo_id) -> None:
    """Model, config, record, card and images into a temporary folder that replaces `save_directory` at once."""
    record = build_record(unlearner, dataset_name=dataset_name, command=command)
    # What loads the base: the adapter's `base_model_name_or_path` (a local path is fine there); the card's
    # `base_model` metadata is a Hub id only.
    base_path = getattr(unlearner.family, "base_model_path", None) or unlearner.source
    with atomic_directory(save_directory) as tmp:
        save_model(unlearner.family, unlearner.model, tmp, unlearner.config, base_model=base_path)
        unlearner.config.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / RECORD_NAME, record)
        for name, image in (images or {}).items():
            image.save(Path(tmp) / f"{name}.png")
        write_model_card(
            record,
            tmp,
            model_id=repo_id or str(save_directory),
            images=sorted(images or {}),
            adapter=_is_adapter(unlearner),
        )
        _carry_run_artifacts(Path(save_directory), Path(tmp))


def _is_adapter(unlearner) -> bool:
    return bool(unlearner.config.lora and unlearner.config.lora_save == "adapter")


def _carry_run_artifacts(target: Path, tmp: Path) -> None:
    """Moves what a run wrote into `target` (checkpoints, mask, concept images) into the folder replacing it."""
    if not target.is_dir():
        return
    for child in target.iterdir():
        if RUN_ARTIFACTS.match(child.name) and not (tmp / child.name).exists():
            os.replace(child, tmp / child.name)


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

    Returns the commit URL. Without network it raises `RuntimeError` with the reason and where the local copy is.
    """
    local_dir = local_dir or os.path.join(unlearner.config.output_dir, "final")
    save_unlearned(unlearner, local_dir, overwrite=True, repo_id=repo_id, **save_kwargs)
    if not partial_state().is_main_process:
        return ""
    return upload_to_hub(local_dir, repo_id, private=private, token=token, commit_message=commit_message)


def upload_to_hub(
    folder, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None, commit_message: str = ""
) -> str:
    r"""Creates `repo_id` (if needed) and uploads a saved output `folder`, leaving out run artifacts.

    Checkpoints, the saliency mask and generated concept images stay local. The card is rendered again first, so that
    its load snippet reads from the repo (with the namespace the Hub gives a bare repo name).

    Returns the commit URL; raises `RuntimeError` with the reason (never the token) when the upload fails, saying that
    `folder` holds the complete local copy.
    """
    from huggingface_hub import HfApi  # noqa: PLC0415

    api = HfApi(token=token)
    try:  # every request bounded by HF_UNLEARN_HUB_TIMEOUT, retried HF_UNLEARN_HUB_RETRIES times (network.py)
        created = with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True))
        full_id = getattr(created, "repo_id", None) or repo_id
        record = read_record(folder)
        if record is not None:  # the uploaded card loads from the repo, not from the local folder
            write_model_card(record, folder, model_id=full_id, **card_inputs_of(folder))
        info = with_retries(
            lambda: api.upload_folder(
                repo_id=full_id,
                folder_path=str(folder),
                commit_message=commit_message or "Upload unlearned model",
                ignore_patterns=UPLOAD_IGNORE,
            )
        )
    except Exception as err:  # noqa: BLE001 (network errors come in many types)
        reason = scrub(" ".join(f"{type(err).__name__}: {err}".split()), token)  # the endpoint may echo headers
        raise RuntimeError(
            f"Could not push to the Hub repo '{repo_id}' ({reason}); the model is saved completely in {folder}. Check "
            "the network and your token (`hf auth login`), then retry push_to_hub or upload that folder."
        ) from None
    return str(getattr(info, "commit_url", info))
