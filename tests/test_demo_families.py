"""`hf-unlearn demo --family ...`: the class-conditional diffusion and text-to-image demos, and their refusals.

The fast tests run each demo with tiny settings (seconds of training): the models are barely trained, so the tests
check what an erasure must do at any size (the forget class's or prompt's samples change more than the others', the
numbers and the labelled grid are there), not the demo's quality; the `slow` tests run the demos as shipped.
"""

import re

import pytest
from PIL import Image

from hf_unlearn.cli import main
from hf_unlearn.demos import (
    FAMILIES,
    GRID_NAME,
    QUICK,
    DiffusionDemoSettings,
    TextToImageDemoSettings,
    diffusion_demo,
    text_to_image_demo,
)
from hf_unlearn.tiny.colour import CAPTIONS
from hf_unlearn.utils import umask_mode

TILE, LABEL_BAND = 64, 14  # comparison_grid enlarges 8×8 samples to 64 px tiles under a 14 px band of names


def grid_size(rows: int, per_row: int, longest_label: str) -> tuple[int, int]:
    """Two blocks (before, after) of `per_row` tiles, 4 px apart, after a label column sized to the longest label."""
    return 6 * len(longest_label) + 8 + 2 * per_row * TILE + 4, LABEL_BAND + rows * TILE


@pytest.mark.parametrize(
    "argv, argument",
    [
        (["--family", "audio"], "--family"),
        (["--family", "text_to_image", "--method", "no_such_method"], "no_such_method"),
        (["--family", "class_conditional_diffusion", "--forget-class", "12"], "--forget-class"),
    ],
)
def test_bad_demo_arguments_are_one_line_before_any_work(argv, argument, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", *argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and argument in err, err
    if argument == "--family":  # the valid choices are named
        assert all(family in err for family in FAMILIES), err
    assert not out.exists()  # refused before anything trained or was written


def _assert_umask_modes(folder):
    """Every file the demo saved has the mode a plain write gives under the umask (not 0600 of a temporary file)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == umask_mode(p) for p in files), [
        (p.name, oct(p.stat().st_mode & 0o777)) for p in files if p.stat().st_mode & 0o777 != umask_mode(p)
    ]


def test_diffusion_demo_erases_the_forget_class_more_than_the_others(tmp_path, capsys):
    report = diffusion_demo(str(tmp_path), settings=QUICK["class_conditional_diffusion"])
    for when in ("before", "after"):
        assert 0 <= report[when]["forget_acc"] <= 1 and 0 <= report[when]["remain_acc"] <= 1
    # Same noise before and after: the erasure changed the forgotten class's samples the most.
    assert report["moved"]["forget"] > 1.2 * report["moved"]["remain"] > 0, report["moved"]
    assert report["method"] == "sfr_on_remap"  # the family's default
    shown = min(QUICK["class_conditional_diffusion"].samples_per_class, 4)
    assert Image.open(tmp_path / GRID_NAME).size == grid_size(10, shown, "class 0")
    assert (tmp_path / "unlearned" / "model_index.json").exists()
    # The saved card's before/after table holds the judge's scores, both columns.
    card = (tmp_path / "unlearned" / "README.md").read_text()
    before, after = report["before"]["forget_acc"], report["after"]["forget_acc"]
    assert f"| FA (judge's forget-class accuracy) | {before:.3f} | {after:.3f} |" in card, card
    _assert_umask_modes(tmp_path / "original")
    printed = capsys.readouterr().out
    assert re.search(r"\| class 3 \(forgotten\) \| \d+% \| \d+% \|", printed), printed
    assert re.search(r"\| other classes \(mean\) \| \d+% \| \d+% \|", printed), printed


def test_text_to_image_demo_moves_the_concept_toward_the_anchor(tmp_path, capsys):
    report = text_to_image_demo(str(tmp_path), settings=QUICK["text_to_image"])
    gap = report["gap_to_anchor"]
    assert gap["after"] < gap["before"], gap  # the concept's samples came closer to the anchor's
    assert report["ratio"] < 1, report["moved"]  # and moved more than the unrelated prompts' samples
    assert report["method"] == "anchor_remap"  # the family's default
    _assert_umask_modes(tmp_path / "original")
    per_prompt = QUICK["text_to_image"].samples_per_prompt
    assert Image.open(tmp_path / GRID_NAME).size == grid_size(len(CAPTIONS), per_prompt, max(CAPTIONS, key=len))
    printed = capsys.readouterr().out
    assert "ratio unrelated/forget" in printed and "of the way to the anchor's" in printed, printed


def test_cli_dispatches_on_family(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--family", "text_to_image", "--quick", "--output", str(out)]) == 0
    assert (out / "text_to_image" / GRID_NAME).exists()
    assert "Unlearning 'a nude person'" in capsys.readouterr().out


@pytest.mark.slow
def test_diffusion_demo_as_shipped_forgets_the_class_and_keeps_the_others(tmp_path):
    report = diffusion_demo(str(tmp_path), settings=DiffusionDemoSettings())
    before, after = report["before"], report["after"]
    assert before["forget_acc"] >= 0.6 and after["forget_acc"] <= 0.2, report
    assert after["remain_acc"] >= before["remain_acc"] - 0.15, report


@pytest.mark.slow
def test_text_to_image_demo_as_shipped_remaps_the_concept(tmp_path):
    report = text_to_image_demo(str(tmp_path), settings=TextToImageDemoSettings())
    assert report["concept_colour"]["before"] >= 0.75 and report["concept_colour"]["after"] <= 0.25, report
    # Measured on one thread (as the CLI runs it): 70% of the way, anchor colour 100%, unrelated/forget move 0.52;
    # docs/stable_diffusion.md's benchmark puts the default's held-out ratio at 0.50 ± 0.22, so a bound of 0.5 on one
    # model would test the seed, not the method: the erasure must stay mostly with the concept.
    assert report["gap_closed"] >= 0.5 and report["anchor_colour"]["after"] >= 0.75, report
    assert report["ratio"] < 1, report
