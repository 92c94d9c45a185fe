"""Saliency masks under sharded training: under DeepSpeed refused before any work instead of silently not applied
(directly, through `Unlearner` and through the CLI); under FSDP run on FSDP2 shards (tests/test_fsdp2_engine.py), with
what those shards do not support refused."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.methods import get_method
from hf_unlearn.tiny.classifiers import tiny_classifier
from hf_unlearn.training import check_sharding

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["sfr_on", "sfr_on_bound", "salun"])
def test_masked_methods_are_refused_under_deepspeed_naming_fsdp(method):
    with pytest.raises(ValueError, match=rf"'{method}' uses a saliency mask.*under DeepSpeed.*FSDP.*DDP"):
        check_sharding(DistributedType.DEEPSPEED, get_method(method), UnlearnConfig(method=method))


@pytest.mark.parametrize("method", ["sfr_on", "sfr_on_bound", "salun"])
def test_masked_methods_run_under_fsdp(method, monkeypatch):
    # The engine shards with FSDP2 and applies the mask per shard (tests/test_fsdp2_engine.py runs it).
    check_sharding(DistributedType.FSDP, get_method(method), UnlearnConfig(method=method))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_sharding(None, get_method(method), UnlearnConfig(method=method))


@pytest.mark.parametrize(
    "method, settings, named",
    [
        ("sfr_on", {"lora": True}, "`lora=True`"),
        ("finetune", {"gradient_checkpointing": True}, "`gradient_checkpointing=True`"),
        ("selective_amnesia", {}, "EWC anchor"),
    ],
)
def test_what_fsdp2_shards_do_not_support_is_refused_under_a_multi_process_fsdp_launch(
    method, settings, named, monkeypatch
):
    config = UnlearnConfig(method=method, **settings)
    check_sharding(None, get_method(method), config)  # one process, or no FSDP launch: nothing is sharded
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_sharding(None, get_method(method), config)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=rf"{named}.*FSDP launch.*(DDP|False)"):
        check_sharding(None, get_method(method), config)


@pytest.mark.parametrize("kind", [DistributedType.DEEPSPEED, DistributedType.FSDP])
def test_unmasked_methods_run_under_deepspeed_and_fsdp(kind):
    for method in ["finetune", "gradient_ascent", "random_label", "scrub"]:
        check_sharding(kind, get_method(method), UnlearnConfig(method=method))


@pytest.mark.parametrize("kind", [DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU])
def test_masks_run_without_sharding(kind):
    check_sharding(kind, get_method("sfr_on"), UnlearnConfig(method="sfr_on"))


@pytest.fixture
def small_split(digits_small):
    return ForgetRemainSplit.from_dataset(digits_small["train"].select(range(200)), forget_classes=[3])


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_deepspeed_launch_refuses_a_masked_method_through_unlearner(small_split, processor, tmp_path, monkeypatch):
    flag = "ACCELERATE_USE_DEEPSPEED"
    monkeypatch.setenv(flag, "true")  # what `accelerate launch` sets from a DeepSpeed config
    config = UnlearnConfig(method="sfr_on", max_steps=2, output_dir=str(tmp_path / "out"))
    unlearner = Unlearner.from_pretrained(tiny_classifier("resnet", seed=0), config, image_processor=processor)
    before = _weights(unlearner.model)
    with pytest.raises(ValueError) as info:
        unlearner.unlearn(small_split)
    message = str(info.value)
    assert "under DeepSpeed" in message and flag in message  # the option that asked for sharding
    assert "FSDP" in message and "fsdp2_cpu.yaml" in message and "DDP" in message  # and the alternatives
    assert all(torch.equal(v, before[k]) for k, v in unlearner.model.state_dict().items())
    assert unlearner.result is None and unlearner.mask is None and not (tmp_path / "out").exists()


def test_a_sharded_launch_still_runs_an_unmasked_method(small_split, processor, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = UnlearnConfig(method="finetune", max_steps=1, output_dir="")
    unlearner = Unlearner.from_pretrained(tiny_classifier("resnet", seed=0), config, image_processor=processor)
    before = _weights(unlearner.model)
    try:
        result = unlearner.unlearn(small_split)
    finally:  # the accelerator state was built under the FSDP flag: later tests in this process get a fresh one
        AcceleratorState._reset_state(reset_partial_state=False)
    assert result.work["optimizer_steps"] == 1
    assert any(not torch.equal(v, before[k]) for k, v in unlearner.model.state_dict().items())


def test_the_cli_refuses_a_masked_method_under_a_deepspeed_launch_in_one_line_before_writing(
    untrained_resnet_dir, tmp_path
):
    files = {p.name: p.read_bytes() for p in Path(untrained_resnet_dir).iterdir()}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hf_unlearn.cli", "unlearn", "--model", str(untrained_resnet_dir)]
    command += ["--dataset_name", "digits", "--forget_classes", "3", "--method", "sfr_on", "--max_steps", "2"]
    command += ["--output_dir", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    env["ACCELERATE_USE_DEEPSPEED"] = "true"  # what `accelerate launch` sets from a DeepSpeed config
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "'sfr_on' uses a saliency mask" in errors[0], proc.stderr[-2000:]
    assert "under DeepSpeed" in errors[0] and "ACCELERATE_USE_DEEPSPEED" in errors[0] and "FSDP" in errors[0]
    assert {p.name: p.read_bytes() for p in Path(untrained_resnet_dir).iterdir()} == files
    assert not out.exists()


def test_a_checkpoint_resumes_only_under_the_sharding_that_wrote_it(tmp_path):
    from hf_unlearn.fsdp import check_layout

    sharded, plain = tmp_path / "sharded", tmp_path / "plain"
    sharded.mkdir()
    plain.mkdir()
    for rank in (0, 1):
        (sharded / f"fsdp_rank_{rank}.safetensors").write_bytes(b"")
    check_layout(sharded, 2)
    check_layout(plain, None)
    with pytest.raises(ValueError, match=r"written by an FSDP2 run on 2 processes, and this run is not sharded"):
        check_layout(sharded, None)
    with pytest.raises(ValueError, match=r"FSDP2 run on 2 processes, and this run shards over 4 processes"):
        check_layout(sharded, 4)
    with pytest.raises(ValueError, match=r"written by a run that was not sharded, and this run shards over 2"):
        check_layout(plain, 2)
