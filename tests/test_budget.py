"""The unlearning budget in either unit: cycles (`max_steps`) or passes over the forget set (`num_forget_epochs`)."""

import dataclasses
import math

import pytest

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.methods import get_method
from hf_unlearn.resolve import resolve_config


def test_passes_become_cycles_from_the_forget_set_and_global_batch():
    cfg = resolve_config(UnlearnConfig(method="sfr_on", num_forget_epochs=2.5, output_dir=""), "image_classifier")
    assert cfg.max_steps is None  # stays a budget in passes until the forget set is known
    # 137 rows at a global batch of 64: ceil(137 / 64) = 3 forget batches per pass, 2.5 passes -> 7.5 -> 8 cycles
    assert cfg.resolve_budget(137, 64).max_steps == 8
    # two processes of 32 rows each read the same 64 rows per forget step as one process of 64: same cycles
    assert cfg.resolve_budget(137, 32 * 2).max_steps == cfg.resolve_budget(137, 64).max_steps
    # a 100x larger forget set: ceil(13700 / 64) = 215 batches per pass, so 2.5 passes are 538 cycles
    assert cfg.resolve_budget(13_700, 64).max_steps == math.ceil(2.5 * 215)


def test_the_default_classifier_budget_is_cycles_raised_to_one_pass_over_the_forget_set():
    cfg = resolve_config(UnlearnConfig(method="sfr_on", output_dir=""), "image_classifier")
    cycles = get_method("sfr_on").defaults_for("image_classifier")["max_steps"]
    assert (cfg.max_steps, cfg.num_forget_epochs) == (cycles, 1.0)
    assert cfg.resolve_budget(137, 64).max_steps == cycles  # the digits benchmark's class: 3 batches, cycles rule
    assert cfg.resolve_budget(5_000, 64).max_steps == 79  # CIFAR-10's 10%: every forget row is seen once
    # a method without a forget loss has no forget set to pass over: its cycles stay as they are
    finetune = resolve_config(UnlearnConfig(method="finetune", output_dir=""), "image_classifier")
    assert finetune.num_forget_epochs is None
    assert finetune.resolve_budget(5_000, 64).max_steps == finetune.max_steps


def test_both_units_given_take_the_larger_budget():
    cfg = resolve_config(
        UnlearnConfig(method="sfr_on", max_steps=10, num_forget_epochs=2, output_dir=""), "image_classifier"
    )
    assert cfg.resolve_budget(64, 64).max_steps == 10
    assert cfg.resolve_budget(640, 64).max_steps == 20


def test_explicit_max_steps_wins_over_any_default_budget():
    cfg = resolve_config(UnlearnConfig(method="sfr_on", max_steps=7, output_dir=""), "image_classifier")
    assert cfg.resolve_budget(50_000, 64).max_steps == 7
    assert cfg.num_forget_epochs is None


def test_a_family_default_in_cycles_stays_in_cycles():
    cfg = resolve_config(UnlearnConfig(method="sfr_on", output_dir=""), "class_conditional_diffusion")
    assert cfg.max_steps == get_method("sfr_on").defaults_for("class_conditional_diffusion")["max_steps"]
    assert cfg.resolve_budget(50_000, 64).max_steps == cfg.max_steps


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_a_budget_in_passes_must_be_positive(value):
    with pytest.raises(ValueError, match="num_forget_epochs"):
        UnlearnConfig(num_forget_epochs=value)


def test_the_run_gets_cycles_from_its_own_forget_set(untrained_resnet_dir, digits_small, tmp_path):
    """Through the public API: the same config on a 3x larger forget set runs 3x the cycles, and says so."""
    train = digits_small["train"]
    counts = {}
    for name, ids in {"small": list(range(40)), "large": list(range(120))}.items():
        split = ForgetRemainSplit.from_dataset(train, forget_ids=ids)
        config = UnlearnConfig(
            method="gradient_ascent",
            num_forget_epochs=1,
            per_device_train_batch_size=20,
            output_dir=str(tmp_path / name),
        )
        unlearner = Unlearner.from_pretrained(str(untrained_resnet_dir), config)
        result = unlearner.unlearn(split)
        counts[name] = (result.steps, unlearner.config.max_steps, result.work["forget_steps"])
    assert counts["small"] == (2, 2, 2)  # 40 rows / 20 per step: one pass is 2 cycles
    assert counts["large"] == (6, 6, 6)


def test_the_default_budget_covers_a_forget_set_larger_than_its_cycles(untrained_resnet_dir, digits_small, tmp_path):
    """Default gradient ascent (30 cycles) on 40 forget rows at one row per step: one pass is 40 cycles; it runs."""
    split = ForgetRemainSplit.from_dataset(digits_small["train"], forget_ids=list(range(40)))
    config = UnlearnConfig(method="gradient_ascent", per_device_train_batch_size=1, output_dir=str(tmp_path))
    unlearner = Unlearner.from_pretrained(str(untrained_resnet_dir), config)
    assert unlearner.config.max_steps == 30
    assert unlearner.unlearn(split).steps == 40
    assert unlearner.config.max_steps == 40


def test_a_second_split_and_a_changed_config_get_their_own_cycles(untrained_resnet_dir, digits_small, tmp_path):
    train = digits_small["train"]
    config = UnlearnConfig(
        method="gradient_ascent", num_forget_epochs=1, per_device_train_batch_size=20, output_dir=str(tmp_path)
    )
    unlearner = Unlearner.from_pretrained(str(untrained_resnet_dir), config)
    assert unlearner.unlearn(ForgetRemainSplit.from_dataset(train, forget_ids=list(range(120)))).steps == 6
    # the budget is still one pass: the smaller set's own cycles, not the 6 fixed for the first split
    assert unlearner.unlearn(ForgetRemainSplit.from_dataset(train, forget_ids=list(range(40)))).steps == 2
    # a budget set on the unlearner's config between runs is the one that runs
    unlearner.config = dataclasses.replace(unlearner.config, max_steps=3, num_forget_epochs=None)
    assert unlearner.unlearn(ForgetRemainSplit.from_dataset(train, forget_ids=list(range(120)))).steps == 3
