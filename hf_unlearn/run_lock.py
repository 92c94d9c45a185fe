"""One writer per output folder: an exclusive lock held from the first write of a run until the process ends.

Two runs writing into one `output_dir` used to both exit 0, with one run's model beside the other's mask, or
checkpoints mixing two runs. The first run now takes `output_dir/.hf_unlearn.lock` with an OS file lock
(`fcntl.flock`, which the kernel drops when the process dies, even under SIGKILL: a killed run never leaves a stale
lock); the lock file records the holder's pid, host, start time and run id, which name the holder in the refusal and
let a rerun recognise that the previous holder ended without releasing it (a kill), in which case its leftovers are
cleaned. On a platform without `fcntl` the lock falls back to `filelock.FileLock` (without the holder's details).
"""

from __future__ import annotations

import atexit
import datetime
import glob
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from accelerate.logging import get_logger

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from .utils import RUN_ARTIFACTS

logger = get_logger(__name__)

TEMP_FILE = re.compile(r"^\..+\.tmp$")  # mkstemp names of the atomic writes: `.NAME.XXXXXXXX.tmp`
PARTIAL_CHECKPOINT = re.compile(r"^\.checkpoint-\d+\.(partial|old)$")

LOCK_NAME = ".hf_unlearn.lock"
# Locks this process holds, by real folder path: taking one again (save after unlearn) is a no-op.
_HELD: dict[str, object] = {}


def _read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_output_dir(folder, argument: str = "output_dir", run_id: Optional[str] = None) -> Optional[dict]:
    """Takes the exclusive lock of `folder` (created if missing) for the rest of this process, or refuses.

    Returns the previous holder's details when it ended without releasing the lock (a killed run), else `None`.
    Raises `ValueError` naming `argument` and the live holder when another process holds it.
    """
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if fcntl is None:  # pragma: no cover (Windows)
        from filelock import FileLock, Timeout  # noqa: PLC0415

        lock = FileLock(str(path) + ".filelock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ValueError(_refusal(argument, folder, {})) from None
        _HELD[key] = lock
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(_refusal(argument, folder, _read_owner(path))) from None
    previous = _read_owner(path)  # non-empty: a holder that died without releasing (a kill)
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id or uuid.uuid4().hex,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    _HELD[key] = (fd, path)
    if previous:
        logger.warning(
            f"{folder}: the previous run into this folder (pid {previous.get('pid')} on {previous.get('host')}, "
            f"started {previous.get('started')}) ended without releasing its lock (killed?); its leftovers are "
            "cleaned."
        )
    return previous or None


def _refusal(argument: str, folder: Path, owner: dict) -> str:
    holder = f" (pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')})" if owner else ""
    same_host = owner.get("host") == socket.gethostname()
    state = "" if not owner or not same_host or _alive(int(owner.get("pid", 0) or 0)) else " (that pid has ended)"
    return (
        f"`{argument}` {folder} is being written by another run{holder}{state}; only one run may write into a folder "
        "at a time. Wait for it to finish, or choose another output folder."
    )


def unlock_output_dir(folder) -> None:
    """Releases the lock of `folder` and empties its holder record (a clean end, unlike a kill)."""
    held = _HELD.pop(os.path.realpath(folder), None)
    if held is None:
        return
    if isinstance(held, tuple):
        fd, _ = held
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    else:  # pragma: no cover (Windows)
        held.release()


def held_run_id(folder) -> Optional[str]:
    """The run id this process recorded in the lock of `folder`, if it holds it."""
    held = _HELD.get(os.path.realpath(folder))
    if isinstance(held, tuple):
        return _read_owner(held[1]).get("run_id")
    return None


def _lock_is_free(folder: Path) -> bool:
    """Whether nobody holds the lock file inside `folder` (a folder moved aside by a save that was killed)."""
    path = folder / LOCK_NAME
    if fcntl is None or not path.is_file():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the test lock
    return True


def restore_moved_aside(folder) -> None:
    """Puts back an output folder that a killed save had moved aside (`.NAME.old-PID`) before renaming the new one in.

    Safe without the lock of `folder`: it acts only when `folder` is missing and the moved copy's lock is free.
    """
    folder = Path(folder).absolute()
    if folder.exists() or not folder.parent.is_dir():
        return
    for old in sorted(folder.parent.glob(f".{glob.escape(folder.name)}.old-*")):
        if old.is_dir() and _lock_is_free(old):
            os.replace(old, folder)
            logger.warning(f"{folder}: a save was killed after moving the previous output aside; it was put back.")
            return


def clean_leftovers(folder) -> list[str]:
    """Removes what killed runs left in and beside `folder` (call it holding the lock of `folder`): temporary files
    of atomic writes (`.NAME.XXXX.tmp`), partial checkpoints, and the hidden copies of a killed save
    (`.NAME.tmp-XXXX`, `.NAME.old-PID` beside it), after moving back the checkpoints and mask a save had carried into
    its new copy. Returns the names removed."""
    folder = Path(folder).absolute()
    removed = []
    if folder.is_dir():
        for child in folder.iterdir():
            if TEMP_FILE.match(child.name) and child.is_file():
                child.unlink(missing_ok=True)
                removed.append(child.name)
            elif PARTIAL_CHECKPOINT.match(child.name) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
    for sibling in folder.parent.glob(f".{glob.escape(folder.name)}.*"):
        if not sibling.is_dir() or not (sibling.name.count(".tmp-") or sibling.name.count(".old-")):
            continue
        if sibling.name.startswith(f".{folder.name}.tmp-") and folder.is_dir():
            for child in sibling.iterdir():  # what the killed save had carried over from `folder`
                if RUN_ARTIFACTS.match(child.name) and not (folder / child.name).exists():
                    os.replace(child, folder / child.name)
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling.name)
    if removed:
        logger.warning(f"{folder}: removed what an interrupted run left: {sorted(removed)[:6]}")
    return removed


def claim_output_dir(folder, argument: str = "output_dir") -> bool:
    """The lock of `folder` for this process, then the leftovers of killed runs cleaned (see [`clean_leftovers`]).

    Returns whether this process held it already (then nothing is done)."""
    restore_moved_aside(folder)
    if os.path.realpath(folder) in _HELD:
        return True
    lock_output_dir(folder, argument)
    clean_leftovers(folder)
    return False


def exit_with_launcher(poll_s: float = 1.0) -> None:
    """In a worker of `accelerate launch` / `torchrun` (`LOCAL_RANK` set): end this process when its launcher dies.

    A launcher killed with SIGKILL cannot forward the signal, and its workers used to run on (holding the GPU and the
    output folder). The worker's parent is the launcher (torch's elastic agent runs inside it); when the parent dies
    the worker is re-parented, which a daemon thread sees within `poll_s` seconds and ends the worker (exit 143, as
    SIGTERM would). The kernel's lock on the output folder dies with it.
    """
    if "LOCAL_RANK" not in os.environ:
        return
    parent = os.getppid()
    if parent <= 1:
        return

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(143)

    threading.Thread(target=watch, name="hf_unlearn-launcher-watch", daemon=True).start()


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        unlock_output_dir(key)


__all__ = [
    "LOCK_NAME",
    "claim_output_dir",
    "clean_leftovers",
    "exit_with_launcher",
    "held_run_id",
    "lock_output_dir",
    "restore_moved_aside",
    "unlock_output_dir",
]
