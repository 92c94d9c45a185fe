"""Several concepts erased in one run, each remapped to its own anchor; anchors that cannot be paired are refused."""

import pytest
import torch
from tiny_sd import ANCHOR, FORGET, Probe, captioned, snapshot, unlearn_config

from hf_unlearn import ConceptSplit, Unlearner
from hf_unlearn.cli import main

CAR, FRUIT = "red sports car", "bowl of fruit"
# Two concepts with different anchors: the nudity prompt goes to the dressed one, the car to the unconditional prompt.
ANCHORS = {FORGET: ANCHOR, CAR: ""}


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def _split(anchors=ANCHORS):
    data = captioned(8, seed=1)
    return ConceptSplit(
        forget_dataset=data.filter(lambda r: r["text"] in (FORGET, CAR)),
        remain_dataset=data.filter(lambda r: r["text"] in (ANCHOR, FRUIT)),
        anchor_prompts=anchors,
    )


def test_each_concept_goes_to_its_own_anchor_and_unrelated_prompts_stay(sd_path, tmp_path):
    config = unlearn_config(
        tmp_path,
        "sfr_on_remap",
        learning_rate=3e-3,
        forget_alpha=5.0,
        forget_alpha_schedule="constant",
        train_modules="cross_attention",
    )
    unlearner = Unlearner.from_pretrained(sd_path, config)
    probe = Probe(unlearner.family)
    prompts = (FORGET, CAR, ANCHOR, FRUIT, "")
    before = probe(unlearner.model, prompts)
    split = _split()
    result = unlearner.unlearn(split)
    after = probe(unlearner.model, prompts)
    assert split.concepts == [(FORGET, ANCHOR), (CAR, "")]
    assert result.num_forget == 16
    moved_fruit = _rms(after[FRUIT], before[FRUIT])
    for concept, anchor in ANCHORS.items():
        gap_before, gap_after = _rms(before[concept], before[anchor]), _rms(after[concept], after[anchor])
        moved = _rms(after[concept], before[concept])
        ratio = moved_fruit / moved
        print(f"{concept!r} -> {anchor!r}: gap {gap_before:.4f} -> {gap_after:.4f}; unrelated/forget move {ratio:.2f}")
        assert gap_after <= 0.25 * gap_before, (concept, gap_before, gap_after)
        assert ratio < 0.3, (concept, moved, moved_fruit)
    # Each concept went to its own anchor, not to the other one's.
    assert _rms(after[CAR], after[""]) < _rms(after[CAR], after[ANCHOR])
    assert _rms(after[FORGET], after[ANCHOR]) < _rms(after[FORGET], after[""])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(forget_prompts=[FORGET], anchor_prompts=[ANCHOR, "street"]), "2 anchors for 1 distinct forget prompts"),
        (dict(forget_prompts=[FORGET, CAR], anchor_prompts={FORGET: ANCHOR}), r"no anchor for \['red sports car'\]"),
        (dict(forget_prompts=[FORGET], anchor_prompts={FORGET: ANCHOR, CAR: ""}), "keys that are not forget prompts"),
        (dict(forget_prompts=[FORGET], anchor_prompts={}), "`anchor_prompts` is empty"),
        (dict(forget_prompts=[FORGET], anchor_prompts={FORGET: 3}), "must map non-empty prompt strings"),
    ],
)
def test_anchors_that_cannot_be_paired_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConceptSplit(**kwargs)


def test_dataset_captions_without_an_anchor_are_refused_before_any_weight_change(sd_path, tmp_path):
    unlearner = Unlearner.from_pretrained(sd_path, unlearn_config(tmp_path, "sfr_on_remap", max_steps=2))
    before = snapshot(unlearner.model)
    with pytest.raises(ValueError, match=r"no anchor for \['red sports car'\]"):
        unlearner.unlearn(_split({FORGET: ANCHOR}))
    assert all(torch.equal(p, before[n]) for n, p in unlearner.model.named_parameters())


def test_cli_refuses_more_anchors_than_forget_prompts_in_one_line(sd_path, tmp_path, capsys):
    args = ["unlearn", "--model", sd_path, "--forget_prompts", FORGET, "--anchor_prompts", ANCHOR, "street"]
    code = main([*args, "--output_dir", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: `anchor_prompts` has 2 anchors for 1 distinct forget prompts"), err
    assert not (tmp_path / "out" / "model_index.json").exists()


def test_record_and_card_pair_each_forget_prompt_with_its_own_anchor():
    from hf_unlearn.modelcard import describe_forgotten

    split = ConceptSplit(forget_prompts=[FORGET, CAR], anchor_prompts={CAR: "", FORGET: ANCHOR})
    described = split.describe()
    assert described["anchor_prompts"] == [ANCHOR, ""]
    text = describe_forgotten({"forget_set": described})
    assert text.endswith(f"(remapped to '{ANCHOR}', '')"), text
