"""Nothing non-finite is ever saved: the divergence guard watches buffers (BatchNorm running statistics) as well as
the weights, and every save, checkpoint and evaluation refuses a model holding NaN/Inf.

The repro of the issue: SFR-on, SGD, learning rate 1e6, no clipping, one cycle on the digits ResNet. The optimizer
step leaves the weights finite, and the next forward pass writes Inf into BatchNorm `running_var`; that model used to
be saved with exit code 0.
"""

import pytest
import torch

from hf_unlearn import DivergenceError, ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.checkpointing import list_checkpoints
from hf_unlearn.cli import main

# One forget and two remain steps (the probe's setting): the huge step overflows the BatchNorm buffers, no loss is NaN.
HUGE = {"method": "sfr_on", "optim": "sgd", "learning_rate": 1e6, "max_grad_norm": 0.0, "max_steps": 1}
HUGE["remain_steps_per_forget"] = 2


@pytest.fixture(scope="module")
def source(untrained_resnet_dir):
    return untrained_resnet_dir  # a BatchNorm ResNet folder (conftest), only read


@pytest.fixture(scope="module")
def split(digits_small):
    return ForgetRemainSplit.from_dataset(
        digits_small["train"].select(range(300)), forget_classes=[3], test_dataset=digits_small["test"]
    )


def _floating(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _unlearner(source, tmp_path, **kwargs):
    cfg = UnlearnConfig(output_dir=str(tmp_path / "run"), saliency_max_batches=1, **(HUGE | kwargs))
    return Unlearner.from_pretrained(str(source), cfg)


def test_copy_guard_restores_the_buffers_and_nothing_is_saved(source, split, tmp_path):
    unlearner = _unlearner(source, tmp_path, divergence_guard="copy")
    before = _floating(unlearner.model)
    assert any("running_var" in k for k in before)
    with pytest.raises(DivergenceError, match="weights and buffers of the last good step were restored") as info:
        unlearner.unlearn(split)
    assert "`learning_rate`" in str(info.value) and "`max_grad_norm`" in str(info.value)
    # The remain step of cycle 0 wrote Inf into the running variances (its forward pass); the state before that step
    # (after the forget step) is back: weights and buffers finite, the variances positive.
    after = _floating(unlearner.model)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert all((v > 0).all() for k, v in after.items() if k.endswith("running_var"))
    with pytest.raises(ValueError, match="stopped with a DivergenceError"):
        unlearner.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("guard", ["off", "check"])
def test_without_a_copy_the_corrupt_model_is_neither_evaluated_nor_saved(guard, source, split, tmp_path):
    unlearner = _unlearner(source, tmp_path, divergence_guard=guard)
    if guard == "check":  # the step check sees the Inf buffer and says the weights were not restored
        with pytest.raises(DivergenceError, match="NOT restored"):
            unlearner.unlearn(split)
    else:
        unlearner.unlearn(split)
    bad = [k for k, v in _floating(unlearner.model).items() if not torch.isfinite(v).all()]
    assert bad and all("running_var" in k or "running_mean" in k for k in bad)  # the weights stayed finite
    with pytest.raises(ValueError, match="running_"):
        unlearner.evaluate(split)
    with pytest.raises(ValueError, match="NaN/Inf|DivergenceError"):
        unlearner.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_no_checkpoint_of_a_non_finite_model(source, split, tmp_path):
    unlearner = _unlearner(source, tmp_path, divergence_guard="off", checkpointing_steps=1)
    with pytest.raises(DivergenceError, match="no checkpoint is written"):
        unlearner.unlearn(split)
    assert list_checkpoints(tmp_path / "run") == []


@pytest.mark.parametrize(("guard", "do_eval"), [("copy", "false"), ("off", "false"), ("off", "true")])
def test_cli_repro_exits_2_and_saves_no_model(guard, do_eval, source, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["unlearn", "--model", str(source), "--method", "sfr_on", "--optim", "sgd", "--learning_rate", "1e6"]
    argv += ["--max_grad_norm", "0", "--max_steps", "1", "--do_eval", do_eval, "--forget_classes", "3"]
    argv += ["--saliency_max_batches", "1", "--divergence_guard", guard, "--output_dir", str(out)]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # beside progress bars
    assert len(errors) == 1 and errors[0].startswith("error: ") and "learning_rate" in errors[0]
    assert not (out / "model.safetensors").exists() and not (out / "unlearning_record.json").exists()
