"""A new saliency criterion and a new geometry are a class and a registration: the loop needs no edit."""

import copy

import pytest
import torch

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.methods import UnlearnMethod, get_method
from hf_unlearn.methods.base import _REGISTRY
from hf_unlearn.parts import Ascent, Geometry, Saliency, Step, TaskLoss, get_geometry, get_saliency
from hf_unlearn.parts import geometry as geometry_module
from hf_unlearn.parts import saliency as saliency_module


class ClassifierHeadOnly(Saliency):
    """Only the classification head may move: a criterion that needs no gradient statistic at all."""

    name = "head_only"

    def compute(self, inputs):
        return {n: torch.full_like(p, n.startswith("classifier"), dtype=torch.bool) for n, p in inputs.named_params}


class TwoForgetSteps(Geometry):
    """Two forget steps then one remain step per cycle, the remain step pulled toward θ0 by a plain L2 penalty."""

    name = "two_forget_steps"

    def setup(self, inputs):
        return [p.detach().clone() for _, p in inputs.named_params]

    def steps(self, config, forget_on, has_remain):
        return [Step(forget=True, remain=False, clip=None)] * 2 + [Step(forget=False, remain=True, clip=None)]

    def penalty(self, state, named_params, config):
        return 0.5 * sum(((p - p0) ** 2).sum() for (_, p), p0 in zip(named_params, state))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(saliency_module._SALIENCY, "head_only", ClassifierHeadOnly())
    monkeypatch.setitem(geometry_module._GEOMETRY, "two_forget_steps", TwoForgetSteps())
    method = UnlearnMethod("probe", Ascent(), TaskLoss(), saliency="head_only", geometry="two_forget_steps")
    monkeypatch.setitem(_REGISTRY, "probe", method)
    return method


def test_registered_saliency_and_geometry_drive_the_loop(registered, trained_resnet, digits, processor, tmp_path):
    split = ForgetRemainSplit.from_dataset(digits["train"].select(range(200)), forget_classes=[3])
    config = UnlearnConfig(
        method="probe", max_steps=2, per_device_train_batch_size=16, optim="sgd", momentum=0.0, output_dir=""
    )
    model = copy.deepcopy(trained_resnet.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unlearner = Unlearner.from_pretrained(model, config, image_processor=processor)
    result = unlearner.unlearn(split)

    assert isinstance(registered.saliency, ClassifierHeadOnly) and isinstance(registered.geometry, TwoForgetSteps)
    assert registered.describe()["saliency"] == "head_only" and registered.describe()["geometry"] == "two_forget_steps"
    # The geometry's plan: per cycle two forget steps and one remain step.
    assert (
        result.work["forget_steps"] == 4 and result.work["remain_steps"] == 2 and result.work["optimizer_steps"] == 6
    )
    assert result.work["passes"]["saliency"] == 0  # this criterion reads no data
    # The mask: forget steps move the head only; the unmasked remain steps move the body as well.
    after = dict(unlearner.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert any(n.startswith("classifier") for n in moved) and any(not n.startswith("classifier") for n in moved)
    assert 0 < result.mask_fraction < 0.5


def test_head_only_mask_alone_keeps_the_body_fixed(registered, trained_resnet, digits, processor, monkeypatch):
    """With the remain part removed (plain masked ascent), nothing outside the head may move."""
    monkeypatch.setitem(
        _REGISTRY, "probe_ga", UnlearnMethod("probe_ga", Ascent(), None, saliency="head_only", geometry="euclidean")
    )
    split = ForgetRemainSplit.from_dataset(digits["train"].select(range(200)), forget_classes=[3])
    config = UnlearnConfig(method="probe_ga", max_steps=2, per_device_train_batch_size=16, output_dir="")
    model = copy.deepcopy(trained_resnet.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unlearner = Unlearner.from_pretrained(model, config, image_processor=processor)
    unlearner.unlearn(split)
    after = dict(unlearner.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and all(n.startswith("classifier") for n in moved)


def test_unknown_part_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"`saliency` is 'nope'; choose None or one of .*fisher_ratio"):
        get_saliency("nope")
    with pytest.raises(ValueError, match=r"`geometry` is 'nope'; choose one of .*fast_slow"):
        get_geometry("nope")
    with pytest.raises(ValueError, match="already registered"):
        saliency_module.register_saliency(saliency_module.TopK())


def test_builtin_methods_keep_their_part_names():
    assert get_method("sfr_on").describe()["saliency"] == "fisher_ratio"
    assert get_method("sfr_on").describe()["geometry"] == "fast_slow"
    assert get_method("salun").describe()["saliency"] == "topk"
    assert get_method("finetune").describe()["saliency"] is None
    assert get_method("finetune").describe()["geometry"] == "euclidean"
    assert get_method("selective_amnesia").geometry.name == "ewc"
    assert get_method("selective_amnesia").remain_source == "replay"


def test_a_registered_family_is_detected_without_other_edits(monkeypatch):
    from hf_unlearn import detect_family
    from hf_unlearn.families import _ALIASES, _FAMILIES, get_family_class, normalize_family, register_family
    from hf_unlearn.families.image_classifier import ImageClassifierFamily

    class ToyNet(torch.nn.Module):
        pass

    class ToyFamily(ImageClassifierFamily):
        name = "toy"

        @classmethod
        def can_load(cls, model_or_path):
            return isinstance(model_or_path, ToyNet)

    monkeypatch.setattr("hf_unlearn.families._FAMILIES", dict(_FAMILIES))
    monkeypatch.setattr("hf_unlearn.families._ALIASES", dict(_ALIASES))
    with pytest.raises(ValueError, match="Cannot tell the family of a ToyNet"):
        detect_family(ToyNet())
    register_family("toy", ToyFamily, aliases=("toy-family",))
    assert detect_family(ToyNet()) == "toy" and normalize_family("toy-family") == "toy"
    assert get_family_class("toy") is ToyFamily
    with pytest.raises(ValueError, match="already registered"):
        register_family("toy", ToyFamily)
    with pytest.raises(ValueError, match="ModelFamily subclass"):
        register_family("other", ToyNet)
