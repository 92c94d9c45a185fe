"""Killing a multi-process launch mid-run, shared by the kill-and-resume tests."""

import time
from pathlib import Path

import psutil


def kill_when(proc, ready: Path, timeout: float = 600) -> None:
    """Waits until `ready` (a checkpoint folder) exists, then kills the launcher `proc` and every process under it.

    The launcher and both ranks at once: torchrun starts its workers in sessions of their own, so a kill of the
    launcher's process group alone left them running to the end of the run (and the resume resumed nothing).
    """
    deadline = time.monotonic() + timeout
    while not ready.is_dir():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for process in reversed(tree):
        process.kill()
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
