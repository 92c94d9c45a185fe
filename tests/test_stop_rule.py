"""`stop_rule='held_out'`, the classifier default's budget set from data: random rows end the run when the forget
loss reaches the held-out loss and backtrack any cycle that costs more than the tolerance of remain or held-out
accuracy, class-wise rounds repeat until forget accuracy is at the floor, and a budget the user gives runs as given."""

import copy

import pytest
import torch

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.evaluation import predict_logits
from hf_unlearn.resolve import resolve_config
from hf_unlearn.stopping import HARM_TOLERANCE


def _unlearner(trained_resnet, **config):
    model = copy.deepcopy(trained_resnet.model)
    processor = trained_resnet.family.image_processor
    return Unlearner.from_pretrained(model, UnlearnConfig(seed=0, output_dir="", **config), image_processor=processor)


def _loss(unl, dataset):
    logits, labels = predict_logits(unl.family, unl.model, dataset)
    return torch.nn.functional.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def test_defaults_set_the_rule_only_for_a_default_budget():
    resolved = resolve_config(UnlearnConfig(method="sfr_on_bound"), "image_classifier")
    assert resolved.stop_rule == "held_out"
    assert resolve_config(UnlearnConfig(method="sfr_on_bound", max_steps=12), "image_classifier").stop_rule == "none"
    assert (
        resolve_config(UnlearnConfig(method="sfr_on_bound", num_forget_epochs=2), "image_classifier").stop_rule
        == "none"
    )
    explicit = UnlearnConfig(method="sfr_on_bound", max_steps=12, stop_rule="held_out")
    assert resolve_config(explicit, "image_classifier").stop_rule == "held_out"
    assert resolve_config(UnlearnConfig(method="finetune"), "image_classifier").stop_rule == "none"
    with pytest.raises(ValueError, match="stop_rule"):
        UnlearnConfig(stop_rule="sometimes")


def test_random_rows_end_the_run_where_they_look_held_out(trained_resnet, digits):
    split = ForgetRemainSplit.from_dataset(digits["train"], forget_fraction=0.2, seed=0, test_dataset=digits["test"])
    unl = _unlearner(trained_resnet, method="sfr_on_bound")
    start_forget, _ = _loss(unl, split.forget)
    start_held_out, _ = _loss(unl, split.test_dataset)
    assert start_forget < start_held_out  # trained rows: the rule has something to do
    result = unl.unlearn(split)
    last = result.history[-1]
    # Every cycle took its forget step: the run ends where the target is reached (no remain-only cycles after it,
    # which pulled the forget rows back) or with its first round (no further rounds on random rows).
    assert result.work["forget_steps"] == result.steps == last["stop_cycles"] <= unl.config.max_steps
    # Reached: the entropy attack calls forget rows members no more often than held-out rows, as it would under RT.
    assert last["stop_reached"] == (last["stop_forget_members"] <= last["stop_held_out_members"])
    assert last["stop_reached"] or result.steps == unl.config.max_steps


def test_random_rows_never_cost_more_than_the_tolerance(trained_resnet, digits):
    """A rate that wrecks the model (the ViT's first steps at the default rate, in small): each cycle that costs more
    than `HARM_TOLERANCE` points of remain or held-out accuracy is backtracked, so the run ends where it started or
    better on both, where the previous rule left it far below."""
    split = ForgetRemainSplit.from_dataset(digits["train"], forget_fraction=0.1, seed=0, test_dataset=digits["test"])
    rows = len(digits["train"])  # the rule reads every row: its check and this test's measure the same sets
    unl = _unlearner(trained_resnet, method="sfr_on_bound", learning_rate=0.05, stop_max_rows=rows)
    _, start_remain = _loss(unl, split.remain)
    _, start_held_out = _loss(unl, split.test_dataset)
    result = unl.unlearn(split)
    _, remain = _loss(unl, split.remain)
    _, held_out = _loss(unl, split.test_dataset)
    assert 100 * remain >= 100 * start_remain - HARM_TOLERANCE
    assert 100 * held_out >= 100 * start_held_out - HARM_TOLERANCE
    assert result.history[-1]["stop_backtracked"] > 0  # the rate did wreck it: the rule had to act
    # The same rate without the rule: the damage the rule prevents.
    fixed = _unlearner(trained_resnet, method="sfr_on_bound", learning_rate=0.05, max_steps=result.steps)
    fixed.unlearn(split)
    assert 100 * _loss(fixed, split.test_dataset)[1] < 100 * start_held_out - 5 * HARM_TOLERANCE


def test_class_wise_rounds_repeat_until_the_floor(trained_resnet, digits):
    split = ForgetRemainSplit.from_dataset(digits["train"].select(range(300)), forget_classes=[3])
    # A rate too small to forget in one round: rounds repeat up to the cap.
    slow = _unlearner(trained_resnet, method="sfr_on_bound", learning_rate=1e-5, stop_max_rounds=3)
    result = slow.unlearn(split)
    assert result.steps == 3 * slow.config.max_steps
    assert result.history[-1].get("stop_forget_accuracy") is None  # never reached: no stop record
    _, accuracy = _loss(slow, split.forget)
    assert accuracy > 0.01
    # The default rate: stops at the end of the first round whose forget accuracy is at the target.
    unl = _unlearner(trained_resnet, method="sfr_on_bound", stop_forget_accuracy=1.0)
    result = unl.unlearn(split)
    assert result.steps % unl.config.max_steps == 0 and result.history[-1]["stop_cycles"] == result.steps
    _, accuracy = _loss(unl, split.forget)
    assert 100 * accuracy <= 1.0 and result.history[-1]["stop_forget_accuracy"] == pytest.approx(100 * accuracy)


def test_a_given_budget_runs_as_given_and_no_test_set_falls_back(trained_resnet, digits, caplog):
    split = ForgetRemainSplit.from_dataset(digits["train"], forget_fraction=0.2, seed=0)
    unl = _unlearner(trained_resnet, method="sfr_on_bound", max_steps=3)
    result = unl.unlearn(split)
    assert result.steps == 3 and result.work["forget_steps"] == 3
    unl = _unlearner(trained_resnet, method="sfr_on_bound")  # the rule, but no held-out rows for random forgetting
    result = unl.unlearn(split)
    assert result.steps == unl.config.max_steps and "needs held-out rows" in caplog.text
