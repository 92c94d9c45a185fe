"""`evaluate` glue: known predictions give known metrics, KL is 0 against itself, nothing about the model changes."""

import copy

import pytest
import torch

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, evaluate
from hf_unlearn.tiny.classifiers import tiny_classifier

FORGET_CLASS = 3


@pytest.fixture(scope="module")
def small_split(digits):
    # Small on purpose: these tests check the glue, not the models.
    train, test = digits["train"].select(range(160)), digits["test"].select(range(80))
    return ForgetRemainSplit.from_dataset(train, forget_classes=[FORGET_CLASS], test_dataset=test)


def _unlearner(model, processor):
    return Unlearner.from_pretrained(model, UnlearnConfig(method="finetune", output_dir=""), image_processor=processor)


def _always(cls: int):
    """A tiny ResNet that predicts `cls` for every input: zero classifier weights, a one-hot bias."""
    model = tiny_classifier("resnet", seed=0)
    head = model.classifier[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[cls] = 10.0
    return model.eval()


def test_known_predictions_give_known_accuracies(small_split, processor):
    metrics = evaluate(_unlearner(_always(FORGET_CLASS), processor), small_split)
    # Every row is predicted FORGET_CLASS: all forget rows right, no remain row right, TA only counts other classes.
    assert metrics["FA"] == 100.0
    assert metrics["RA"] == 0.0
    assert metrics["TA"] == 0.0
    assert metrics["TA_forget"] == 100.0
    assert metrics["KL"] is None and metrics["JS"] is None and metrics["avg_d"] is None


def test_kl_is_zero_against_itself_and_positive_against_another_model(small_split, processor):
    unl = _unlearner(tiny_classifier("resnet", seed=1), processor)
    same = evaluate(unl, small_split, reference=unl)
    assert same["KL"] == pytest.approx(0.0, abs=1e-9)
    assert same["JS"] == pytest.approx(0.0, abs=1e-9)
    assert same["avg_d"] == pytest.approx(0.0, abs=1e-9)
    other = evaluate(unl, small_split, reference=_always(0))
    assert other["KL"] > 0.1 and other["avg_d"] > 1.0


def test_evaluation_leaves_mode_and_weights_unchanged(small_split, processor):
    unl = _unlearner(tiny_classifier("resnet", seed=2), processor)
    before = copy.deepcopy(unl.model.state_dict())
    for training in (True, False):
        unl.model.train(training)
        unl.evaluate(small_split, reference=_always(1))
        assert unl.model.training is training
        assert all(torch.equal(before[k], v) for k, v in unl.model.state_dict().items())


def test_reference_as_unlearner_model_or_path_agree(small_split, processor, tmp_path):
    unl = _unlearner(tiny_classifier("resnet", seed=3), processor)
    ref_model = tiny_classifier("resnet", seed=4).eval()
    ref_model.save_pretrained(tmp_path / "rt")
    by_model = unl.evaluate(small_split, reference=ref_model)
    by_unlearner = unl.evaluate(small_split, reference=_unlearner(copy.deepcopy(ref_model), processor))
    by_path = unl.evaluate(small_split, reference=str(tmp_path / "rt"))
    for key in ("KL", "JS", "avg_d"):
        assert by_model[key] is not None and by_model[key] > 0
        assert by_unlearner[key] == pytest.approx(by_model[key], rel=1e-6)
        assert by_path[key] == pytest.approx(by_model[key], rel=1e-6)


def test_result_carries_the_metrics_of_the_last_evaluation(small_split, processor):
    unl = Unlearner.from_pretrained(
        tiny_classifier("resnet", seed=5),
        UnlearnConfig(method="finetune", max_steps=2, output_dir=""),
        image_processor=processor,
    )
    unl.unlearn(small_split)
    metrics = unl.evaluate(small_split)
    assert unl.result.metrics == metrics
