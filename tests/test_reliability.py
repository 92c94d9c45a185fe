"""Faults: divergence, crashes during saves, the source model's files, loading only safe formats, lazy datasets."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from datasets import concatenate_datasets, load_from_disk

import hf_unlearn.checkpointing as checkpointing
import hf_unlearn.hub as hub
import hf_unlearn.parts.saliency as saliency
import hf_unlearn.utils as utils
from hf_unlearn import DivergenceError, ForgetRemainSplit, UnlearnConfig, Unlearner, list_methods
from hf_unlearn.checkpointing import list_checkpoints
from hf_unlearn.last_good import LastGood
from hf_unlearn.resolve import resolve_config
from hf_unlearn.run_lock import LOCK_NAME
from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier
from hf_unlearn.utils import file_sha256


@pytest.fixture(scope="module")
def rows(digits_small):
    return digits_small["train"].select(range(200))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability_model")
    tiny_classifier("resnet", seed=0).save_pretrained(folder)
    digits_image_processor().save_pretrained(folder)
    return folder


def _config(**kwargs):
    values = {
        "output_dir": "",
        "max_steps": 2,
        "saliency_max_batches": 1,
        "per_device_train_batch_size": 32,
        "remain_steps_per_forget": 1,
    }
    return UnlearnConfig(**(values | kwargs))


def _hashes(folder) -> dict[str, str]:
    # The lock file records who holds the folder (run_lock.py), not what it holds.
    return {p.name: file_sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != LOCK_NAME}


def _split(rows):
    return ForgetRemainSplit.from_dataset(rows, forget_classes=[3])


# Divergence guard
DIVERGING = {
    "method": "gradient_ascent",
    "optim": "sgd",
    "learning_rate": 1e10,
    "forget_alpha": 1e30,
    "max_grad_norm": 0.0,
    "lr_scheduler_type": "constant",
    "forget_alpha_schedule": "constant",
}


def test_nan_weight_stops_the_run_and_restores_the_last_good_weights(model_dir, rows):
    unlearner = Unlearner.from_pretrained(str(model_dir), _config(max_steps=5, **DIVERGING))
    with pytest.raises(DivergenceError) as info:
        unlearner.unlearn(_split(rows))
    message = str(info.value)
    assert (
        "A weight or buffer became NaN/Inf" in message and "`forget_alpha`" in message and "`learning_rate`" in message
    )
    cycle = int(message.split("cycle ")[1].split(";")[0])
    weights = {k: v.clone() for k, v in unlearner.model.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    # The restored weights are exactly those after `cycle` good cycles (schedules are constant, so a shorter run
    # follows the same trajectory); with cycle 0 they are the source model's.
    if cycle == 0:
        good = Unlearner.from_pretrained(str(model_dir), _config()).model.state_dict()
        good = {k: v for k, v in good.items() if "running" not in k and "num_batches" not in k}
    else:
        shorter = Unlearner.from_pretrained(str(model_dir), _config(max_steps=cycle, **DIVERGING))
        shorter.unlearn(_split(rows))
        good = shorter.model.state_dict()
    params = dict(unlearner.model.named_parameters())
    assert all(torch.equal(params[k], good[k]) for k in params)


def test_copy_guard_restores_the_step_before_a_late_divergence(model_dir, rows):
    # Two good cycles, then a NaN gradient in the third (no clipping, so it reaches the weights): the copy taken
    # before that step is put back, not the start's, so the copy must be refreshed every step.
    steady = {"method": "gradient_ascent", "max_grad_norm": 0.0, "divergence_guard": "copy"}
    steady |= {"lr_scheduler_type": "constant", "forget_alpha_schedule": "constant"}
    unlearner = Unlearner.from_pretrained(str(model_dir), _config(max_steps=5, **steady))
    calls = []

    def poison(grad):  # fault injection: the third backward pass yields a NaN gradient for this one tensor
        calls.append(1)
        return grad * float("nan") if len(calls) == 3 else grad

    next(unlearner.model.parameters()).register_hook(poison)
    with pytest.raises(DivergenceError, match=r"cycle 2; the weights and buffers of the last good step were restored"):
        unlearner.unlearn(_split(rows))
    shorter = Unlearner.from_pretrained(str(model_dir), _config(max_steps=2, **steady))
    shorter.unlearn(_split(rows))
    good = dict(shorter.model.named_parameters())
    start = dict(Unlearner.from_pretrained(str(model_dir), _config()).model.named_parameters())
    assert not all(torch.equal(p, start[n]) for n, p in good.items()), "two cycles moved the weights"
    assert all(torch.equal(p, good[n]) for n, p in unlearner.model.named_parameters())


def test_nan_loss_stops_the_run_with_finite_weights(model_dir, rows):
    diverging = DIVERGING | {"learning_rate": 1e3, "forget_alpha": 1e6}
    unlearner = Unlearner.from_pretrained(str(model_dir), _config(max_steps=20, **diverging))
    with pytest.raises(DivergenceError, match=r"loss became (nan|inf) at cycle \d+.*`forget_alpha`"):
        unlearner.unlearn(_split(rows))
    assert all(torch.isfinite(p).all() for p in unlearner.model.parameters())


def test_check_guard_keeps_no_copy_and_stops_before_a_step_with_nan_gradients(model_dir, rows, monkeypatch):
    steady = {"method": "gradient_ascent", "max_grad_norm": 0.0}  # no clipping norm: the guard checks the gradients
    steady |= {"lr_scheduler_type": "constant", "forget_alpha_schedule": "constant"}
    unlearner = Unlearner.from_pretrained(str(model_dir), _config(max_steps=5, divergence_guard="check", **steady))
    calls = []

    def poison(grad):  # fault injection: the third backward pass yields a NaN gradient for this one tensor
        calls.append(1)
        return grad * float("nan") if len(calls) == 3 else grad

    next(unlearner.model.parameters()).register_hook(poison)

    def no_copy(*args):
        raise AssertionError("divergence_guard='check' must not copy the weights")

    monkeypatch.setattr(LastGood, "keep", no_copy)
    with pytest.raises(DivergenceError, match=r"gradient became nan at cycle 2"):
        unlearner.unlearn(_split(rows))
    monkeypatch.undo()
    shorter = Unlearner.from_pretrained(str(model_dir), _config(max_steps=2, divergence_guard="check", **steady))
    shorter.unlearn(_split(rows))
    good = dict(shorter.model.named_parameters())
    assert all(torch.equal(p, good[n]) for n, p in unlearner.model.named_parameters())


def test_check_guard_reports_overflowed_weights_without_restoring_them(model_dir, rows):
    unlearner = Unlearner.from_pretrained(str(model_dir), _config(max_steps=5, divergence_guard="check", **DIVERGING))
    with pytest.raises(DivergenceError, match="NOT restored"):
        unlearner.unlearn(_split(rows))
    assert not all(torch.isfinite(p).all() for p in unlearner.model.parameters())


def test_all_finite_is_exact_including_norms_that_overflow():
    """The guard's fused check: finite norms prove finite weights; an overflowing norm falls back to the elements."""
    from hf_unlearn.validation import all_finite

    finite = [torch.randn(3, 4), torch.randn(5)]
    assert all_finite(finite) and all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        tensors = [t.clone() for t in finite]
        tensors[1][2] = bad
        assert not all_finite(tensors)
    huge = [torch.full((4,), 1e30), torch.ones(2, dtype=torch.bfloat16)]  # squares overflow float32, values do not
    assert not torch.isfinite(torch._foreach_norm(huge)[0]) and all_finite(huge)


def test_text_to_image_defaults_to_the_check_guard_and_classifiers_to_the_copy():
    assert resolve_config(UnlearnConfig(), "text_to_image").divergence_guard == "check"
    assert resolve_config(UnlearnConfig(), "image_classifier").divergence_guard == "copy"
    with pytest.raises(ValueError, match="divergence_guard"):
        UnlearnConfig(divergence_guard="sometimes")


# Nothing half-written
def test_crash_while_saving_keeps_the_previous_output(model_dir, rows, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = Unlearner.from_pretrained(str(model_dir), _config(method="finetune"))
    first.unlearn(_split(rows))
    first.save_pretrained(out)
    before = _hashes(out)
    assert {"model.safetensors", "unlearning_record.json", "README.md", "unlearn_config.json"} <= before.keys()

    second = Unlearner.from_pretrained(str(model_dir), _config(method="gradient_ascent"))
    second.unlearn(_split(rows))

    def crash(record, folder, **kwargs):  # the model, config and record are written by now; the card is not
        assert (Path(folder) / "model.safetensors").is_file()
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(hub, "write_model_card", crash)
    with pytest.raises(KeyboardInterrupt):
        second.save_pretrained(out)
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "a temporary folder was left behind"


def test_crash_while_checkpointing_keeps_the_previous_checkpoint(model_dir, rows, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = _config(max_steps=4, output_dir=str(out), checkpointing_steps=1, checkpoints_total_limit=3)
    real_save = checkpointing.EngineState.save

    def crash_at_cycle_3(self, folder, rank=0, main=True):
        real_save(self, folder, rank, main)
        if self.step == 3:  # accelerate's files and the engine state are written; the rename is not done
            raise KeyboardInterrupt("killed while checkpointing")

    monkeypatch.setattr(checkpointing.EngineState, "save", crash_at_cycle_3)
    with pytest.raises(KeyboardInterrupt):
        Unlearner.from_pretrained(str(model_dir), cfg).unlearn(_split(rows))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME]
    assert checkpointing.resolve_checkpoint("latest", out).name == "checkpoint-2"


def test_crash_while_saving_the_mask_keeps_the_previous_mask(tmp_path, monkeypatch):
    path = tmp_path / "saliency_mask.safetensors"
    saliency.save_mask({"w": torch.ones(3, dtype=torch.bool)}, path)
    before = file_sha256(path)

    def half_then_crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(saliency, "save_file", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        saliency.save_mask({"w": torch.zeros(3, dtype=torch.bool)}, path)
    assert file_sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saliency_mask.safetensors"]


def test_crash_while_writing_config_yaml_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    _config(learning_rate=0.5).to_yaml(path)
    before = file_sha256(path)

    def crash(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        _config(learning_rate=0.25).to_yaml(path)
    assert file_sha256(path) == before and UnlearnConfig.from_yaml(path).learning_rate == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# The source model is never modified
CLASSIFIER_METHODS = list_methods("image_classifier")


def test_source_files_untouched_by_every_classifier_method(model_dir, rows, tmp_path):
    before = _hashes(model_dir)
    for method in CLASSIFIER_METHODS:
        cfg = _config(method=method, output_dir=str(tmp_path / method))
        unlearner = Unlearner.from_pretrained(str(model_dir), cfg)
        unlearner.unlearn(_split(rows))
        unlearner.save_pretrained(tmp_path / f"{method}-model")
        assert _hashes(model_dir) == before, f"{method} modified the source model's files"
        assert file_sha256(tmp_path / f"{method}-model" / "model.safetensors") != before["model.safetensors"], method
    # Saving over the source folder itself is refused: it holds no unlearning record.
    with pytest.raises(ValueError, match="`save_directory`"):
        unlearner.save_pretrained(model_dir)
    assert _hashes(model_dir) == before


def test_foreign_output_folder_is_not_replaced(model_dir, rows, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"jpeg")
    unlearner = Unlearner.from_pretrained(str(model_dir), _config(method="finetune", max_steps=1))
    unlearner.unlearn(_split(rows))
    with pytest.raises(ValueError, match="`save_directory`.*overwrite=True"):
        unlearner.save_pretrained(out)
    assert _hashes(out) == {"holiday.jpg": file_sha256(out / "holiday.jpg")}


# Security
def test_pickle_only_model_folder_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    model = tiny_classifier("resnet")
    model.save_pretrained(folder)
    os.remove(folder / "model.safetensors")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="`model_or_path`.*only pickle weight files.*pytorch_model.bin"):
        Unlearner.from_pretrained(str(folder), _config(), image_processor=digits_image_processor())


def test_remote_code_is_not_run_by_default(tmp_path):
    folder = tmp_path / "remote"
    tiny_classifier("resnet").save_pretrained(folder)
    marker = tmp_path / "code_ran"
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_custom.Custom"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import ResNetForImageClassification as Custom\n"
    )
    unlearner = Unlearner.from_pretrained(str(folder), _config(), image_processor=digits_image_processor())
    assert type(unlearner.model).__module__.startswith("transformers.models.resnet")
    assert not marker.exists()


def test_yaml_with_python_tags_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "yaml_ran"
    path = tmp_path / "config.yaml"
    path.write_text(f"method: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(yaml.YAMLError):
        UnlearnConfig.from_yaml(path)
    assert not marker.exists()


def test_no_token_is_written_to_outputs(model_dir, rows, tmp_path, monkeypatch):
    token = "hf_reliabilityTestToken0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    unlearner = Unlearner.from_pretrained(str(model_dir), _config(method="finetune", max_steps=1))
    unlearner.unlearn(_split(rows))
    unlearner.save_pretrained(tmp_path / "out")
    for path in (tmp_path / "out").iterdir():
        assert token.encode() not in path.read_bytes(), path.name


def test_library_code_loads_no_pickle():
    package = Path(__import__("hf_unlearn").__file__).parent
    for path in package.rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}: {line.strip()}"
            assert "yaml.load(" not in line and "pickle.load" not in line, f"{path.name}: {line.strip()}"


# Load: datasets stay memory-mapped
def test_unlearning_a_memory_mapped_dataset_keeps_it_on_disk(model_dir, rows, tmp_path):
    big = concatenate_datasets([rows] * 5)
    big.save_to_disk(tmp_path / "data")
    data = load_from_disk(tmp_path / "data")
    split = ForgetRemainSplit.from_dataset(data, forget_classes=[3])
    unlearner = Unlearner.from_pretrained(str(model_dir), _config(method="sfr_on"))
    unlearner.unlearn(split)
    for part in (split.dataset, split.forget, split.remain):
        assert part.cache_files and all(f["filename"].startswith(str(tmp_path)) for f in part.cache_files)
        assert type(part.data).__name__ == "MemoryMappedTable"
    assert unlearner.result.steps == 2
