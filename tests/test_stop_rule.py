"""`stop_rule='held_out'`, the classifier default's budget set from data: random rows end their forget steps when the
forget loss reaches the held-out loss, class-wise rounds repeat until forget accuracy is at the floor, and a budget
the user gives runs as given."""

import copy

import pytest
import torch

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.evaluation import predict_logits
from hf_unlearn.resolve import resolve_config


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


def test_random_rows_stop_forgetting_at_the_held_out_loss(trained_resnet, digits):
    split = ForgetRemainSplit.from_dataset(digits["train"], forget_fraction=0.2, seed=0, test_dataset=digits["test"])
    unl = _unlearner(trained_resnet, method="sfr_on_bound")
    start_forget, _ = _loss(unl, split.forget)
    start_held_out, _ = _loss(unl, split.test_dataset)
    assert start_forget < start_held_out  # trained rows: the rule has something to do
    result = unl.unlearn(split)
    last = result.history[-1]
    reached = last["stop_cycles"]
    assert last["stop_reached"] and last["stop_forget_loss"] >= last["stop_held_out_loss"]
    # One forget step per cycle until the target was reached, remain steps only for the rest of the round.
    assert result.work["forget_steps"] == reached < result.steps
    assert result.steps % unl.config.max_steps == 0
    assert result.work["remain_steps"] == result.steps * unl.config.remain_steps_per_forget


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
