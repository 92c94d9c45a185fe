"""One writer per output folder, checkpoints that belong to one run, and what kills leave behind.

The lock (hf_unlearn/run_lock.py) is an OS file lock inside the output folder, so a second run is refused with one
line naming the holder, and a SIGKILLed holder never leaves a stale lock. Kills are real SIGKILLs of a subprocess
(tests/kill_worker.py) at the worst points: halfway through writing the saliency mask, and inside the final save after
the complete new copy was written and the run's checkpoints moved into it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.checkpointing import list_checkpoints
from hf_unlearn.cli import main
from hf_unlearn.run_lock import LOCK_NAME, claim_output_dir, unlock_output_dir

WORKER = Path(__file__).with_name("kill_worker.py")
ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--forget_classes", "3", "--max_steps", "2", "--saliency_max_batches", "1", "--do_eval", "false"]


@pytest.fixture(scope="module")
def source(untrained_resnet_dir):
    return untrained_resnet_dir  # conftest's saved tiny ResNet, only read


@pytest.fixture(scope="module")
def split(digits):
    return ForgetRemainSplit.from_dataset(digits["train"].select(range(200)), forget_classes=[3])


def _env():
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", TQDM_DISABLE="1")


def _worker(mode, source, out, **kwargs):
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(source), str(out)], env=_env(), text=True, **kwargs
    )


def _hidden_beside(out: Path) -> list:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(source, split, tmp_path, capsys):
    out = tmp_path / "out"
    holder = _worker("hold", source, out, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["unlearn", "--model", str(source), "--output_dir", str(out), *QUICK]) == 2
        err = _error_line(capsys)
        assert f"`--output_dir` {out} is being written by another run (pid {holder.pid} on host" in err
        cfg = UnlearnConfig(output_dir=str(out), max_steps=1, saliency_max_batches=1)
        with pytest.raises(ValueError, match=f"`output_dir` {out} is being written by another run"):
            Unlearner.from_pretrained(str(source), cfg).unlearn(split)
        unlearner = Unlearner.from_pretrained(str(source), UnlearnConfig(output_dir="", max_steps=1))
        unlearner.unlearn(split)
        with pytest.raises(ValueError, match="`save_directory` .* is being written by another run"):
            unlearner.save_pretrained(out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # none of the three wrote anything
        assert not _hidden_beside(out)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock: the next run takes the folder, and knows the holder ended uncleanly.
    assert main(["unlearn", "--model", str(source), "--output_dir", str(out), *QUICK]) == 0
    assert (out / "model.safetensors").is_file()
    unlock_output_dir(out)
    assert json.loads((out / LOCK_NAME).read_text() or "{}") == {}  # a clean release empties the holder record


@pytest.mark.slow
def test_two_concurrent_cli_runs_the_second_is_refused_and_the_first_result_is_intact(source, tmp_path, capsys):
    out = tmp_path / "out"
    first = ["unlearn", "--model", str(source), "--output_dir", str(out), "--forget_classes", "3", "--seed", "1"]
    first += ["--max_steps", "60", "--checkpointing_steps", "5", "--saliency_max_batches", "1", "--do_eval", "false"]
    proc = subprocess.Popen([sys.executable, "-m", "hf_unlearn.cli", *first], env=_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_NAME).is_file() or not (out / LOCK_NAME).read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = ["unlearn", "--model", str(source), "--output_dir", str(out), *QUICK, "--seed", "2"]
        assert main(second) == 2
        assert "is being written by another run" in _error_line(capsys)
        assert proc.poll() is None, "the first run must still be running when the second is refused"
    finally:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    record = json.loads((out / "unlearning_record.json").read_text())
    assert record["requests"][-1]["seed"] == 1 and record["requests"][-1]["steps"] == 60
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-55", "checkpoint-60"]
    final = load_file(out / "checkpoint-60" / "model.safetensors")
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in final.items() if k in saved)


@pytest.mark.slow  # a subprocess run killed, then a rerun: ~10 s on two shared cores
def test_kill_during_the_mask_write_does_not_block_a_rerun(source, tmp_path, capsys):
    out = tmp_path / "out"
    proc = _worker("mask", source, out, stderr=subprocess.PIPE)
    assert proc.wait(timeout=180) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    left = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert left and not (out / "saliency_mask.safetensors").exists()  # the kill left a half-written temporary file
    assert main(["unlearn", "--model", str(source), "--output_dir", str(out), *QUICK]) == 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / "saliency_mask.safetensors").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.slow  # a subprocess run killed, then a resume: ~10 s on two shared cores
def test_kill_during_the_final_save_leaves_no_hidden_copy_after_the_rerun(source, split, tmp_path):
    out = tmp_path / "out"
    proc = _worker("save", source, out, stderr=subprocess.PIPE)
    assert proc.wait(timeout=180) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    hidden = _hidden_beside(out)
    assert hidden and not list_checkpoints(out)  # a full hidden copy, holding the checkpoints it had moved away
    assert (out.parent / hidden[0] / "model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(out.parent / hidden[0])] == ["checkpoint-1", "checkpoint-2"]
    # The same run resumed from its checkpoints: they are found again, and the hidden copy is gone.
    cfg = UnlearnConfig(
        method="sfr_on", max_steps=2, saliency_max_batches=1, per_device_train_batch_size=32, output_dir=str(out),
        checkpointing_steps=1, checkpoints_total_limit=2, resume_from_checkpoint="latest",
    )  # fmt: skip
    unlearner = Unlearner.from_pretrained(str(source), cfg)
    unlearner.unlearn(split)
    assert not _hidden_beside(out)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert len(unlearner.result.history) == 2 and unlearner.result.saliency_runtime_s > 0  # resumed, not rerun
    unlearner.save_pretrained(out)
    assert (out / "model.safetensors").is_file() and not _hidden_beside(out)


def test_a_folder_moved_aside_by_a_killed_save_is_put_back(source, split, tmp_path):
    out = tmp_path / "out"
    first = Unlearner.from_pretrained(str(source), UnlearnConfig(output_dir="", max_steps=1, saliency_max_batches=1))
    first.unlearn(split)
    first.save_pretrained(out)
    unlock_output_dir(out)
    before = (out / "model.safetensors").read_bytes()
    os.replace(out, out.parent / f".out.old-{2**22 + 7}")  # what a kill between the save's two renames leaves
    claim_output_dir(out)
    assert (out / "model.safetensors").read_bytes() == before and not _hidden_beside(out)
    unlock_output_dir(out)


def _checkpointed(source, split, out, seed):
    cfg = UnlearnConfig(
        output_dir=str(out), max_steps=2, saliency_max_batches=1, checkpointing_steps=1, seed=seed,
        checkpoints_total_limit=None,
    )  # fmt: skip
    Unlearner.from_pretrained(str(source), cfg).unlearn(split)
    return cfg


def test_a_checkpoint_mixing_two_runs_is_refused(source, split, tmp_path):
    cfg = _checkpointed(source, split, tmp_path / "a", seed=1)
    _checkpointed(source, split, tmp_path / "b", seed=1)  # the same settings: an identical identity
    mixed = tmp_path / "a" / "checkpoint-1"
    shutil.copy(tmp_path / "b" / "checkpoint-2" / "model.safetensors", mixed / "model.safetensors")
    resume = Unlearner.from_pretrained(str(source), replace(cfg, resume_from_checkpoint=str(mixed)))
    with pytest.raises(ValueError, match="`resume_from_checkpoint` .* is not one run's checkpoint: the files"):
        resume.unlearn(split)
    # Another run's engine state beside this run's files: refused by the run id.
    other = json.loads((tmp_path / "b" / "checkpoint-2" / "engine_state.json").read_text())
    own = tmp_path / "a" / "checkpoint-2"
    manifest = json.loads((own / "checkpoint_manifest.json").read_text())
    assert other["run_id"] != manifest["run_id"]
    (own / "checkpoint_manifest.json").write_text(json.dumps(manifest | {"run_id": other["run_id"]}))
    again = Unlearner.from_pretrained(str(source), replace(cfg, resume_from_checkpoint=str(own)))
    with pytest.raises(ValueError, match="engine state is another run's"):
        again.unlearn(split)
