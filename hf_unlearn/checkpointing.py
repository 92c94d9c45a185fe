"""Resumable checkpoints: accelerate's `save_state` plus the engine's own state, as JSON and safetensors (no pickle).

A checkpoint folder `output_dir/checkpoint-{cycle}` holds what `Accelerator.save_state` writes (model weights as
safetensors, optimizer state and RNG states, which accelerate reloads with `torch.load(weights_only=True)`) and:

- `engine_state.json`: the number of finished cycles, the batches each endless loader handed out (so the data order
  resumes exactly), the per-cycle history, and what identifies the run (method, seed, forget-set fingerprint, cycles);
- `engine_state.safetensors`: the saliency mask (so resuming skips the saliency pass) and the EWC anchor, if any;
- `engine_rng_{rank}.safetensors`: the state of each process's `StepContext.generator` (random labels, noise).

The folder is written under a temporary name and renamed in one step, so a kill during a save leaves the previous
checkpoint as the latest complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import skip_first_batches
from safetensors.torch import load_file, save_file

from .guard import check_checkpointable
from .training import Endless
from .utils import apply_umask, atomic_write_json, file_sha256, get_logger, sha256_of, to_jsonable

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
ENGINE_STATE_NAME = "engine_state.json"
ENGINE_TENSORS_NAME = "engine_state.safetensors"
ENGINE_RNG_NAME = "engine_rng_{rank}.safetensors"
MANIFEST_NAME = "checkpoint_manifest.json"
STATE_FORMAT = "hf_unlearn/engine-state-v1"
# What must match between the interrupted run and the one resuming it, or the resumed result would be silently wrong.
IDENTITY_KEYS = ("method", "seed", "max_steps", "fingerprint", "parameters", "hyperparameters")
# Fields that may differ on resume: where and how often the run writes and logs, not what it computes.
_FREE_FIELDS = (
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "logging_steps",
    "log_with",
    "eval_batch_size",
    "dataloader_num_workers",
)
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass
class EngineState:
    r"""The loop's state after `step` finished cycles, beside what accelerate saves.

    Args:
        step (`int`): cycles finished; the resumed run starts at this cycle.
        consumed (`dict[str, int]`): batches handed out so far by the `forget` and `remain` endless loaders.
        identity (`dict`): method, seed, cycles, forget-set fingerprint and trainable parameter names of the run.
        history (`list[dict]`, *optional*): per-cycle logs so far.
        mask (`dict[str, torch.Tensor]`, *optional*): the saliency mask.
        ewc (`list[tuple[torch.Tensor, torch.Tensor]]`, *optional*): EWC (Fisher, anchor) pairs, in parameter order.
        generator_state (`torch.Tensor`, *optional*): this process's `StepContext.generator` state.
        run_id (`str`, *optional*): the run that wrote it (a fresh run draws one; a resumed one keeps its own).
        work (`dict`, *optional*): the passes and steps counted so far, and `runtime_s` / `saliency_runtime_s` the
            seconds spent so far, so the record of a resumed run counts the whole run.
    """

    step: int
    consumed: dict[str, int]
    identity: dict[str, Any]
    history: list[dict] = field(default_factory=list)
    mask: Optional[dict[str, torch.Tensor]] = None
    ewc: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None
    generator_state: Optional[torch.Tensor] = None
    folder: Optional[Path] = None
    run_id: Optional[str] = None
    work: Optional[dict] = None
    runtime_s: float = 0.0
    saliency_runtime_s: float = 0.0

    def save(self, folder: str | os.PathLike, rank: int = 0, main: bool = True) -> None:
        """Writes the JSON and safetensors files into `folder` (the JSON and tensors from the main process only)."""
        folder = Path(folder)
        if self.generator_state is not None:
            save_file({"state": self.generator_state.contiguous()}, folder / ENGINE_RNG_NAME.format(rank=rank))
        if not main:
            return
        tensors = {}
        for name, m in (self.mask or {}).items():
            tensors[f"mask.{name}"] = m.to(torch.uint8).contiguous().cpu()
        for i, (fisher, anchor) in enumerate(self.ewc or []):
            tensors[f"ewc.fisher.{i}"] = fisher.detach().contiguous().cpu()
            tensors[f"ewc.anchor.{i}"] = anchor.detach().contiguous().cpu()
        if tensors:
            save_file(tensors, folder / ENGINE_TENSORS_NAME, metadata={"format": STATE_FORMAT})
        meta = {
            "format": STATE_FORMAT,
            "step": self.step,
            "consumed": self.consumed,
            "identity": self.identity,
            "history": to_jsonable(self.history),
            "has_mask": self.mask is not None,
            "num_ewc": len(self.ewc or []),
            "run_id": self.run_id,
            "work": to_jsonable(self.work),
            "runtime_s": self.runtime_s,
            "saliency_runtime_s": self.saliency_runtime_s,
        }
        atomic_write_json(folder / ENGINE_STATE_NAME, meta)

    @classmethod
    def load(cls, folder: str | os.PathLike, rank: int = 0, device: Optional[torch.device] = None) -> EngineState:
        folder = Path(folder)
        file = folder / ENGINE_STATE_NAME
        if not file.is_file():
            raise ValueError(
                f"`resume_from_checkpoint` is {str(folder)!r}, which holds no {ENGINE_STATE_NAME}: it is not a "
                "complete hf_unlearn checkpoint. Pass a `checkpoint-N` folder of an earlier run, or 'latest'."
            )
        with open(file) as fh:
            meta = json.load(fh)
        verify_manifest(folder, meta.get("run_id"))
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(
                f"`resume_from_checkpoint`: {file} has format {meta.get('format')!r}; expected {STATE_FORMAT}"
                ", from this version of hf_unlearn."
            )
        tensors = load_file(folder / ENGINE_TENSORS_NAME) if (folder / ENGINE_TENSORS_NAME).is_file() else {}
        device = device or torch.device("cpu")
        mask = None
        if meta["has_mask"]:
            mask = {k[len("mask.") :]: v.bool().to(device) for k, v in tensors.items() if k.startswith("mask.")}
        ewc = [
            (tensors[f"ewc.fisher.{i}"].to(device), tensors[f"ewc.anchor.{i}"].to(device))
            for i in range(meta["num_ewc"])
        ] or None
        rng_file = folder / ENGINE_RNG_NAME.format(rank=rank)
        generator_state = load_file(rng_file)["state"] if rng_file.is_file() else None
        return cls(
            step=int(meta["step"]),
            consumed={k: int(v) for k, v in meta["consumed"].items()},
            identity=meta["identity"],
            history=meta.get("history") or [],
            mask=mask,
            ewc=ewc,
            generator_state=generator_state,
            folder=folder,
            run_id=meta.get("run_id"),
            work=meta.get("work"),
            runtime_s=float(meta.get("runtime_s") or 0.0),
            saliency_runtime_s=float(meta.get("saliency_runtime_s") or 0.0),
        )

    def check_identity(self, expected: dict[str, Any], folder) -> None:
        """Refuses to resume a checkpoint of another run (other method, seed, forget set, cycles or parameters)."""
        for key in IDENTITY_KEYS:
            if self.identity.get(key) != expected.get(key):
                saved, now = self.identity.get(key), expected.get(key)
                if key == "parameters":
                    saved, now = f"{len(saved or [])} tensors", f"{len(now or [])} tensors (or other names)"
                if key == "hyperparameters":
                    saved, now = f"hash {str(saved)[:12]}", f"hash {str(now)[:12]} (a hyperparameter differs)"
                raise ValueError(
                    f"`resume_from_checkpoint` {folder} belongs to another run: its {key} is {saved!r}, this run's is "
                    f"{now!r}. Resume with the same config and forget set, or start a fresh run (another output_dir)."
                )
        if self.step > int(expected["max_steps"]):
            raise ValueError(f"`resume_from_checkpoint` {folder} is at cycle {self.step}, past `max_steps`.")


def run_identity(config, method_name: str, fingerprint: str, param_names: list[str]) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it."""
    values = {k: v for k, v in config.to_dict().items() if k not in _FREE_FIELDS}
    return {
        "method": method_name,
        "seed": config.seed,
        "max_steps": config.max_steps,
        "fingerprint": fingerprint,
        "parameters": list(param_names),
        "hyperparameters": sha256_of(values),
    }


def continue_run(resume: Optional[EngineState], work: dict) -> tuple[str, dict]:
    """The run id (a new one for a fresh run, the checkpoint's on resume) and the seconds spent before the resume; the
    saved pass and step counts are added into `work` so the record counts the whole run, not the resumed part."""
    if resume is None:
        return uuid.uuid4().hex, {"runtime_s": 0.0, "saliency_runtime_s": 0.0}
    _add_counts(work, resume.work or {})
    return resume.run_id or uuid.uuid4().hex, {
        "runtime_s": resume.runtime_s,
        "saliency_runtime_s": resume.saliency_runtime_s,
    }


def _add_counts(into: dict, saved: dict) -> None:
    for key, value in saved.items():
        if isinstance(value, dict):
            _add_counts(into.setdefault(key, {}), value)
        elif isinstance(value, (int, float)):
            into[key] = into.get(key, 0) + value


def endless_at(loader, consumed: int = 0) -> Endless:
    """An [`Endless`] over `loader` that has already handed out `consumed` batches, without loading them.

    The loaders shuffle with accelerate's seedable sampler, whose order depends on the epoch only, so the position is
    the epoch and the batches to skip in it; `skip_first_batches` skips those at the index level.
    """
    endless = Endless(loader)
    if not consumed:
        return endless
    per_epoch = len(loader)
    epoch, offset = divmod(consumed, per_epoch)
    endless._epoch, endless.consumed = epoch, consumed
    if offset:
        loader.set_epoch(epoch)
        endless._iter = iter(skip_first_batches(loader, offset))
        # The position in the epoch tells which batch is the last one, whose padding rows weigh zero (several
        # processes): without it a resumed run would weigh the padded batch of the resumed epoch as full.
        endless._position = offset - 1
    return endless


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of `output_dir`, oldest first (partial temporary folders are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / ENGINE_STATE_NAME).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(resume_from_checkpoint: Optional[str], output_dir: str | os.PathLike) -> Optional[Path]:
    """The folder to resume from: `None` (fresh run), the newest complete one for `"latest"`, or the given path.

    `"latest"` with no checkpoint yet starts a fresh run, so one command serves both the first start and restarts.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info(f"resume_from_checkpoint='latest': no checkpoint in {output_dir} yet; starting a fresh run.")
            return None
        return found[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ValueError(
            f"`resume_from_checkpoint` is {resume_from_checkpoint!r}, which is not a folder; pass a `checkpoint-N` "
            "folder of an earlier run or 'latest' (the newest one in output_dir)."
        )
    return path


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, state: EngineState, total_limit: Optional[int] = None, shards=None
) -> Path:
    """Writes `output_dir/checkpoint-{state.step}` under a temporary name, then renames it; keeps `total_limit`.

    Every process takes part (accelerate saves one RNG file per process); the main process renames and prunes.
    `shards` (an [`~fsdp.Fsdp2`]) writes each rank's shards of a model and optimizer that accelerate does not hold.
    """
    check_checkpointable(accelerator._models or ([shards.model] if shards else []), state.step)
    output_dir = Path(output_dir).absolute()
    target = output_dir / f"{CHECKPOINT_PREFIX}{state.step}"
    tmp = output_dir / f".{target.name}.partial"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if shards is not None:
            shards.save(tmp)
        state.save(tmp, rank=accelerator.process_index, main=accelerator.is_main_process)
        accelerator.wait_for_everyone()
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        write_manifest(tmp, state.run_id)
        _fsync_tree(tmp)
        apply_umask(tmp, recursive=True)  # accelerate and torch may save through 0600 temporary files
        old = output_dir / f".{target.name}.old"
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return target


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: Optional[int]) -> None:
    """Deletes the oldest complete checkpoints beyond `total_limit`, and partial folders left by a killed save."""
    output_dir = Path(output_dir)
    for child in output_dir.glob(f".{CHECKPOINT_PREFIX}*"):
        if child.is_dir() and (child.name.endswith(".partial") or child.name.endswith(".old")):
            shutil.rmtree(child, ignore_errors=True)
    if total_limit:
        for path in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(path, ignore_errors=True)


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_NAME}


def write_manifest(folder: Path, run_id: Optional[str]) -> None:
    """Names every file of a finished checkpoint with its sha256 and the run that wrote it."""
    atomic_write_json(
        folder / MANIFEST_NAME, {"format": STATE_FORMAT, "run_id": run_id, "files": _file_hashes(folder)}
    )


def verify_manifest(folder: Path, run_id: Optional[str]) -> None:
    """Refuses a checkpoint whose files are not exactly those its run wrote: a file changed, missing or added since
    (two runs writing one folder, a planted pickle), or whose engine state is another run's."""
    file = folder / MANIFEST_NAME
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError):
        raise ValueError(
            f"`resume_from_checkpoint` {folder} has no readable {MANIFEST_NAME}: it was not written completely by "
            "this version of hf_unlearn (nor is a folder of pickle files from elsewhere ever loaded). Resume from "
            "another checkpoint or start a fresh run."
        ) from None
    saved, found = manifest.get("files") or {}, _file_hashes(folder)
    changed = sorted(n for n in set(saved) | set(found) if saved.get(n) != found.get(n))
    if changed or manifest.get("run_id") != run_id:
        what = f"the files {changed[:4]} differ from its manifest" if changed else "its engine state is another run's"
        raise ValueError(
            f"`resume_from_checkpoint` {folder} is not one run's checkpoint: {what} (two runs wrote into one folder, "
            "or the folder was changed). Resume from another checkpoint or start a fresh run."
        )


def _fsync_tree(folder: Path) -> None:
    # The rename must not become visible before the files' contents are on disk (power loss, not only a kill).
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


__all__ = [
    "EngineState",
    "continue_run",
    "endless_at",
    "list_checkpoints",
    "prune_checkpoints",
    "resolve_checkpoint",
    "run_identity",
    "save_checkpoint",
]
