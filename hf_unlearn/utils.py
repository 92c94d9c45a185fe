"""Small helpers shared by the engine: atomic file writes, hashing, seeding."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

RECORD_NAME = "unlearning_record.json"
CONFIG_NAME = "unlearn_config.json"


def sha256_of(*parts: Any) -> str:
    """A stable sha256 over JSON-serialisable parts (lists are hashed in the order given)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux exposes it (`/proc/self/status`)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the classic read (set and restore at once)
    os.umask(mask)
    return mask


def umask_mode(path: str | os.PathLike) -> int:
    """The mode a plain `open` or `mkdir` would have given `path` under the current umask (0644 / 0755 under 022)."""
    path = Path(path)
    executable = path.is_dir() or bool(path.stat().st_mode & 0o111)
    return (0o777 if executable else 0o666) & ~current_umask()


def apply_umask(path: str | os.PathLike, recursive: bool = False) -> None:
    """Gives `path` (and with `recursive` everything under it) the mode the umask gives new files and folders.

    `tempfile.mkstemp` and `tempfile.mkdtemp` create 0600 files and 0700 folders whatever the umask, and some
    libraries save through them; an output renamed into place from there would be unreadable to other users.
    """
    path = Path(path)
    paths = [path]
    if recursive and path.is_dir():
        paths += [p for p in path.rglob("*") if not p.is_symlink()]
    for p in paths:
        os.chmod(p, umask_mode(p))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, fsyncs it, then renames it over `path` (umask's mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_image(image, path: str | os.PathLike) -> None:
    """Saves a PIL image as PNG to a temporary file beside `path`, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary folder beside `target`; on success it replaces `target` in one rename.

    A crash inside the block leaves `target` as it was (the previous good output) and removes the partial folder. The
    previous folder is moved aside first and deleted only after the new one is in place. Everything in the new folder
    gets the umask's modes before the rename (see [`apply_umask`]).
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    apply_umask(tmp, recursive=True)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


# What a run writes into its `output_dir`: mask, checkpoints, partial folders of a killed save, tracker logs
# (`hf_unlearn-{method}`, see tracking.py), generated concept images, the run's lock and the temporary files of a
# killed atomic write. They are kept when a model is saved into that folder and never uploaded.
RUN_ARTIFACTS = re.compile(
    r"^(\.?checkpoint-\d+(\.partial|\.old)?|saliency_mask\.safetensors|hf_unlearn-[\w.-]+|concept_cache"
    r"|unlearn_config\.(yaml|json)"
    r"|\.hf_unlearn\.lock|\..+\.tmp)$"
)


def read_record(path: str | os.PathLike) -> Optional[dict]:
    """The unlearning record of an earlier output folder, or `None` if the folder holds none."""
    file = Path(path) / RECORD_NAME
    if not file.is_file():
        return None
    with open(file) as fh:
        return json.load(fh)


def check_output_dir(
    path: str | os.PathLike, overwrite: bool, argument: str = "save_directory", refuse_finished: bool = False
) -> None:
    """Refuses to write into a non-empty folder that is not an earlier output of ours, unless `overwrite`.

    A folder is ours when it holds an unlearning record, or only what a run writes (checkpoints, the saliency mask).
    With `refuse_finished`, a folder that holds a finished result (a record) is refused too unless `overwrite`.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"`{argument}` {path} is a file; give a folder path.")
    if refuse_finished and not overwrite and read_record(path) is not None:
        raise ValueError(
            f"`{argument}` {path} already holds a finished result ({RECORD_NAME}); choose another folder, or pass "
            "--overwrite_output_dir (overwrite_output_dir=True) to replace it."
        )
    foreign = [p.name for p in path.iterdir() if not RUN_ARTIFACTS.match(p.name)]
    if foreign and read_record(path) is None and not overwrite:
        raise ValueError(
            f"`{argument}` {path} is not empty (it holds {sorted(foreign)[:3]}) and holds no {RECORD_NAME}, so it is "
            "not an earlier hf_unlearn output; choose another folder or pass overwrite=True (overwrite_output_dir) "
            "to replace it."
        )


class _StateSafeLogger(logging.LoggerAdapter):
    """accelerate's logger (main process only) once a process state exists, the plain logger before it: checks that
    run before the `Accelerator` is built (`from_pretrained`, `validate`) must be able to log, and accelerate's
    logger raises there."""

    def __init__(self, name: str):
        from accelerate.logging import get_logger as accelerate_logger  # noqa: PLC0415

        super().__init__(logging.getLogger(name), {})
        self._accelerate = accelerate_logger(name)

    def log(self, level, msg, *args, **kwargs):
        from accelerate.state import PartialState  # noqa: PLC0415

        if PartialState._shared_state:
            self._accelerate.log(level, msg, *args, **kwargs)
        else:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("main_process_only", "in_order")}
            self.logger.log(level, msg, *args, **kwargs)


def get_logger(name: str) -> logging.LoggerAdapter:
    """A logger for library code that may run before or after accelerate's process state exists."""
    return _StateSafeLogger(name)
