"""The text-to-image benchmark: its sample scores on images whose answer is known, and the whole path in quick mode."""

import json

import numpy as np
import pytest
from PIL import Image

from hf_unlearn.benchmarks import text_to_image as bench


def _images(colour, n=3):
    return [Image.fromarray(np.full((8, 8, 3), colour, dtype=np.uint8)) for _ in range(n)]


def _samples(replace=None):
    """One row of flat images per prompt, in the palette's colour, or in another prompt's colour where `replace`
    says so ({prompt: prompt whose colour it takes})."""
    replace = replace or {}
    return [_images(bench.PALETTE[replace.get(p, p)]) for p in bench.PROMPTS]


def test_a_perfect_erasure_scores_as_one():
    after = _samples({forget: anchor for forget, anchor in bench.CONCEPTS})
    scores = bench.score(_samples(), after)
    for forget, _ in bench.CONCEPTS:
        concept = scores["concepts"][forget]
        assert concept["gap_closed"] == pytest.approx(1.0)
        assert concept["concept_rate"] == 0.0 and concept["anchor_rate"] == 1.0
        assert concept["moved"] > 0
    assert scores["max_concept_rate"] == 0.0 and scores["held_out_rate"] == 1.0
    assert scores["held_out_moved"] == 0.0 and scores["held_out_ratio"] == 0.0


def test_nothing_done_and_side_effects_score_as_such():
    unchanged = bench.score(_samples(), _samples())
    assert unchanged["gap_closed"] == 0.0 and unchanged["max_concept_rate"] == 1.0
    # Only a held-out prompt changes: no concept moved, the held-out prompt is no longer drawn right.
    held = bench.HELD_OUT[0]
    side = bench.score(_samples(), _samples({held: bench.CONCEPTS[0][0]}))
    assert side["gap_closed"] == 0.0 and side["held_out_rate"] == 0.5 and side["held_out_moved"] > 0


def test_choice_prefers_erasing_points_then_least_side_effect():
    def row(modules, cycles, rate, moved, gap):
        return dict(train_modules=modules, cycles=cycles, max_concept_rate=rate, held_out_moved=moved, gap_closed=gap)

    rows = [row("all", 20, 0.0, 0.3, 0.9), row("cross_attention", 20, 0.0, 0.1, 0.5), row("all", 80, 0.5, 0.0, 1.0)]
    assert bench.choose(rows) == {"train_modules": "cross_attention", "cycles": 20, "erases_all": True}
    assert bench.choose(rows[2:] + [row("all", 40, 0.25, 0.0, 0.4)])["cycles"] == 80  # none erases: the largest gap


def test_every_method_of_the_family_is_a_row():
    methods = bench.methods_for_family()
    assert {"sfr_on_remap", "esd", "selective_amnesia", "sfr_on"} <= set(methods)
    assert "sfr_on_bound" not in methods and "retrain" not in methods  # RT is a reference row


@pytest.mark.slow
def test_quick_run_writes_the_report_with_every_row(tmp_path):
    out = tmp_path / "t2i"
    assert bench.main(["--quick", "--output", str(out), "--methods", "sfr_on_remap,esd"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"] for r in results["rows"]}
    assert rows == {"original", "resampled", "retrain", "hand_remap", "sfr_on_remap", "esd"}
    assert set(results["selection"]) == {"hand_remap", "sfr_on_remap", "esd"}
    report = (out / "report.md").read_text()
    assert all(f"| {m} |" in report for m in rows)
    floor = next(r for r in results["rows"] if r["method"] == "hand_remap")
    assert floor["work"] == {"optimizer_steps": 8, "forget_steps": 4, "remain_steps": 4}
    assert not (out / "tmp").exists()
