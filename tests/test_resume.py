"""Checkpoints and resume: a run killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_unlearn import UnlearnConfig
from hf_unlearn.checkpointing import ENGINE_STATE_NAME, endless_at, list_checkpoints, write_manifest
from hf_unlearn.run_lock import LOCK_NAME
from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier
from hf_unlearn.training import Endless, make_accelerator

WORKER = Path(__file__).with_name("resume_worker.py")


def _load_worker():
    spec = importlib.util.spec_from_file_location("resume_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume_model")
    tiny_classifier("resnet", seed=0).save_pretrained(folder)
    digits_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """The uninterrupted run, in this process, with the worker's settings and thread count."""
    threads = torch.get_num_threads()
    try:
        unlearner = worker.run(str(model_dir), str(tmp_path_factory.mktemp("reference")))
    finally:
        torch.set_num_threads(threads)
    return unlearner


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"


def test_sigkill_then_resume_is_bitwise_identical(model_dir, reference, tmp_path):
    kill_after = random.randint(1, worker.TOTAL_CYCLES - 6)  # a random cycle, leaving the run time to still be going
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS=str(worker.THREADS))
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(model_dir), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not (out / f"checkpoint-{kill_after}").is_dir():
        assert proc.poll() is None, f"worker ended early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "worker too slow"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = list_checkpoints(out)
    assert saved and not (out / f"checkpoint-{worker.TOTAL_CYCLES}").exists(), "the kill must land mid-run"
    resumed_from = int(saved[-1].name.split("-")[1])
    assert resumed_from >= kill_after
    saved_state = json.loads((saved[-1] / ENGINE_STATE_NAME).read_text())

    threads = torch.get_num_threads()
    try:
        resumed = worker.run(str(model_dir), str(out), resume=True)
    finally:
        torch.set_num_threads(threads)
    # The saved mask was loaded (no saliency pass: the saliency time is the killed run's), and the history and the
    # record's counts cover the whole run, not only the resumed part.
    assert resumed.result.saliency_runtime_s == saved_state["saliency_runtime_s"] > 0
    assert resumed.result.work == reference.result.work
    assert resumed.result.runtime_s > saved_state["runtime_s"] > 0
    assert [h["step"] for h in resumed.result.history] == list(range(worker.TOTAL_CYCLES))
    assert torch.equal(
        torch.tensor([h["remain_loss"] for h in resumed.result.history[resumed_from:]]),
        torch.tensor([h["remain_loss"] for h in reference.result.history[resumed_from:]]),
    )
    _assert_bitwise_equal(_state(resumed.model), _state(reference.model))
    assert all(torch.equal(resumed.mask[k], reference.mask[k]) for k in reference.mask)
    left = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME]
    assert not left, "a partial checkpoint was left behind"


def test_checkpoint_limit_and_no_partial_folders(reference):
    out = Path(reference.config.output_dir)
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    assert names == ["checkpoint-15", "checkpoint-16", "saliency_mask.safetensors"]
    assert (out / "checkpoint-16" / ENGINE_STATE_NAME).is_file()
    files = sorted(p.name for p in (out / "checkpoint-16").iterdir())
    # accelerate's part (its optimizer/RNG files are reloaded with weights_only=True) and the engine's own state.
    assert files == [
        "checkpoint_manifest.json",
        "engine_rng_0.safetensors",
        "engine_state.json",
        "engine_state.safetensors",
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
    ]


def test_resume_from_the_final_checkpoint_runs_nothing(model_dir, reference):
    threads = torch.get_num_threads()
    try:
        again = worker.run(str(model_dir), reference.config.output_dir, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert len(again.result.history) == worker.TOTAL_CYCLES
    _assert_bitwise_equal(_state(again.model), _state(reference.model))


@pytest.mark.parametrize(
    ("change", "forget", "named"),
    [({"seed": 8}, [3], "seed"), ({"learning_rate": 0.02}, [3], "hyperparameters"), ({}, [4], "fingerprint")],
)
def test_resume_refuses_a_checkpoint_of_another_run(model_dir, reference, change, forget, named):
    from hf_unlearn import ForgetRemainSplit, Unlearner

    cfg = UnlearnConfig(**(reference.config.to_dict() | {"resume_from_checkpoint": "latest"} | change))
    unlearner = Unlearner.from_pretrained(str(model_dir), cfg, image_processor=digits_image_processor())
    before = _state(unlearner.model)
    split = ForgetRemainSplit.from_dataset(worker.make_split().dataset, forget_classes=forget)
    with pytest.raises(ValueError, match=f"`resume_from_checkpoint`.*{named}"):
        unlearner.unlearn(split)
    _assert_bitwise_equal(_state(unlearner.model), before)


def test_skipping_batches_gives_the_replayed_order(reference, digits_small):
    """`endless_at` (index-level skip) hands out the same batches as replaying them one by one."""
    family = reference.family
    accelerator = make_accelerator(UnlearnConfig(output_dir=""))
    rows = digits_small["train"].select(range(70))  # 5 batches of 16 per epoch, the last one short

    def loader():
        return accelerator.prepare_data_loader(family.make_dataloader(rows, batch_size=16, shuffle=True, seed=3))

    for consumed in (0, 3, 5, 12):
        replayed, skipped = Endless(loader(), start=consumed), endless_at(loader(), consumed)
        for _ in range(7):
            a, b = next(replayed), next(skipped)
            assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["pixel_values"], b["pixel_values"])
            # and the position in the epoch, which marks the last (padded) batch under several processes
            assert replayed._position == skipped._position
        assert replayed.consumed == skipped.consumed == consumed + 7


def test_engine_state_round_trips_without_pickle(tmp_path):
    """Mask, EWC anchor, generator state and history come back exactly; only JSON and safetensors are written."""
    from hf_unlearn.checkpointing import EngineState

    generator = torch.Generator().manual_seed(5)
    torch.rand(3, generator=generator)
    mask = {"a.weight": torch.rand(4, 3) > 0.5, "b.bias": torch.tensor([True, False])}
    ewc = [(torch.rand(4, 3), torch.randn(4, 3)), (torch.rand(2), torch.randn(2))]
    history = [{"step": 0, "forget_loss": 0.1 + 0.2, "lr": 1e-3}]
    state = EngineState(7, {"forget": 9, "remain": 40}, {"seed": 1}, history, mask, ewc, generator.get_state())
    state.save(tmp_path)
    write_manifest(tmp_path, state.run_id)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".json", ".safetensors", ".safetensors"]
    loaded = EngineState.load(tmp_path)
    assert (loaded.step, loaded.consumed, loaded.identity, loaded.history) == (7, state.consumed, {"seed": 1}, history)
    assert all(torch.equal(loaded.mask[k], mask[k]) for k in mask) and loaded.mask.keys() == mask.keys()
    assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(loaded.ewc, ewc))
    resumed = torch.Generator()
    resumed.set_state(loaded.generator_state)
    assert torch.equal(torch.rand(5, generator=resumed), torch.rand(5, generator=generator))


def test_latest_without_a_checkpoint_is_checked_before_any_accelerate_state(untrained_resnet_dir, tmp_path):
    """`validate` runs before the Accelerator exists; its checkpoint lookup logs "starting a fresh run", which must not
    need accelerate's process state (a fresh process, as a user's script)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, load_digits_dataset\n"
        "rows = load_digits_dataset()['train'].select(range(60))\n"
        "split = ForgetRemainSplit.from_dataset(rows, forget_classes=[3])\n"
        "cfg = UnlearnConfig(resume_from_checkpoint='latest', checkpointing_steps=1, output_dir=sys.argv[2])\n"
        "Unlearner.from_pretrained(sys.argv[1], cfg).validate(split)\n"
        "print('validated')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(untrained_resnet_dir), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0 and "validated" in proc.stdout, proc.stderr[-2000:]
