"""Two processes (`accelerate launch`, gloo on CPU): a killed and resumed run against the uninterrupted one, and
workers that end when their launcher is killed. Slow (several launches of two ranks each on two shared cores)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from process_tree import kill_when
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "accelerate" / "cpu_2proc.yaml"
TOTAL = 16  # tests/resume_worker.py TOTAL_CYCLES


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(*args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE)])
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(CONFIG)]
    cmd += ["--main_process_port", str(_free_port()), *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def model_dir(untrained_resnet_dir):
    return untrained_resnet_dir  # conftest's saved tiny ResNet, only read


def _final(out: Path) -> dict:
    return load_file(out / f"checkpoint-{TOTAL}" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_kill_and_resume_equals_the_uninterrupted_two_process_run(model_dir, tmp_path):
    worker = HERE / "resume_worker.py"
    reference = _launch(worker, model_dir, tmp_path / "ref")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]

    out = tmp_path / "killed"
    kill_when(_launch(worker, model_dir, out, start_new_session=True), out / "checkpoint-5")
    assert not (out / f"checkpoint-{TOTAL}").exists(), "the kill must land mid-run"
    resumed = _launch(worker, model_dir, out, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]

    ref, got = _final(tmp_path / "ref"), _final(out)
    different = {
        k: float((ref[k].float() - got[k].float()).abs().max()) for k in ref if not torch.equal(ref[k], got[k])
    }
    assert not different, f"resumed 2-process run differs from the uninterrupted one: {different}"
    history = [
        json.loads((p / f"checkpoint-{TOTAL}" / "engine_state.json").read_text())["history"]
        for p in (tmp_path / "ref", out)
    ]
    assert [h["remain_loss"] for h in history[0]] == [h["remain_loss"] for h in history[1]]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_workers_end_when_the_launcher_is_killed(model_dir, tmp_path):
    out = tmp_path / "out"
    proc = _launch(
        "-m", "hf_unlearn.cli", "unlearn", "--model", model_dir, "--output_dir", out, "--forget_classes", "3",
        "--max_steps", "100000", "--checkpointing_steps", "1", "--do_eval", "false", "--saliency_max_batches", "1",
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-1").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:] if proc.poll() else ""
        time.sleep(0.05)
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid]
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)  # the launcher only: it cannot forward this signal
    proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its launcher"
        time.sleep(0.1)


def _ppid(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
