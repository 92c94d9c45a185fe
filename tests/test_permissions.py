"""Everything hf_unlearn writes gets the modes the user's umask gives (0644 files, 0755 folders under 022), also what
goes through temporary files (mkstemp makes 0600, mkdtemp 0700) and what transformers, peft and accelerate save."""

import os
import stat
from pathlib import Path

import pytest

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(folder: Path) -> dict[str, str]:
    paths = [folder, *folder.rglob("*")]
    return {str(p.relative_to(folder.parent)): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-adapter"])
def test_outputs_are_readable_by_others_under_umask_022(umask_022, untrained_resnet_dir, digits_small, tmp_path, lora):
    run, out = tmp_path / "run", tmp_path / "out"
    config = UnlearnConfig(
        output_dir=str(run),
        max_steps=2,
        saliency_max_batches=1,
        per_device_train_batch_size=32,
        checkpointing_steps=1,  # checkpoints: accelerate's save_state and the engine state
        lora=lora,
    )
    unlearner = Unlearner.from_pretrained(str(untrained_resnet_dir), config)
    unlearner.unlearn(ForgetRemainSplit.from_dataset(digits_small["train"].select(range(200)), forget_classes=[3]))
    unlearner.save_pretrained(out)

    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert {weights, "unlearning_record.json", "unlearn_config.json", "README.md"} <= set(os.listdir(out))
    assert (run / "saliency_mask.safetensors").is_file() and list(run.glob("checkpoint-*"))
    modes = _modes(run) | _modes(out)
    folders = {p for p in modes if (tmp_path / p).is_dir()}
    assert {p: m for p, m in modes.items() if p in folders and m != "0o755"} == {}
    assert {p: m for p, m in modes.items() if p not in folders and m != "0o644"} == {}
    if lora:  # the card's load snippet names the real base model and the saved adapter
        card = (out / "README.md").read_text()
        assert f'AutoModelForImageClassification.from_pretrained("{untrained_resnet_dir}")' in card
        assert f'PeftModel.from_pretrained(base, "{out}")' in card and "BASE_MODEL" not in card


def test_a_stricter_umask_is_respected(untrained_resnet_dir, tmp_path):
    old = os.umask(0o077)
    try:
        Unlearner.from_pretrained(str(untrained_resnet_dir), UnlearnConfig(output_dir="")).save_pretrained(
            tmp_path / "private"
        )
    finally:
        os.umask(old)
    modes = _modes(tmp_path / "private")
    assert set(modes.values()) <= {"0o600", "0o700"} and "0o700" in modes.values()
