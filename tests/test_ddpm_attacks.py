"""The class-conditional attack benchmark (`hf_unlearn.benchmarks.ddpm_attacks`) and its resurgence measure."""

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from hf_unlearn.attacks.resurgence import class_units
from hf_unlearn.benchmarks import ddpm_attacks
from hf_unlearn.benchmarks.ddpm_attacks import ATTACKS, main, report_markdown, summary
from hf_unlearn.families.class_conditional_diffusion import ClassConditionalDiffusionFamily
from hf_unlearn.tiny.diffusion import tiny_unet

FOLDER = Path(__file__).resolve().parents[1] / "benchmark_results" / "ddpm_attacks"


def test_ddpm_attacks_report_rebuilds_from_its_run_files():
    """The committed table is the run files' table: a run file changed without its table fails here."""
    rows = [json.loads(p.read_text()) for p in sorted((FOLDER / "runs").glob("*-s[0-9]*.json"))]
    assert report_markdown(summary(rows, FOLDER)) == (FOLDER / "report.md").read_text()
    table = json.loads((FOLDER / "results.json").read_text())["table"]
    assert set(table) == {r["method"] for r in rows} and all(len(t["seeds"]) >= 5 for t in table.values())


def test_summary_takes_the_worst_attack_per_seed(tmp_path):
    """Worst case is the per-seed maximum over attacks, then its mean and 95% t-interval (not the max of means)."""
    asr = {"class_inversion": [0.5, 0.0, 0.25], "resurgence": [0.0, 0.75, 0.25]}
    rows = [
        {"method": "salun", "attack": a, "seed": s, "card": {"asr": v, "pre_asr": 0.0}}
        for a, values in asr.items()
        for s, v in enumerate(values)
    ]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "salun-collateral.json").write_text(json.dumps({"remain_acc": 0.9}))
    row = summary(rows, tmp_path)["salun"]
    mean, half = row["worst"]
    assert mean == pytest.approx(0.5) and half == pytest.approx(4.302653 * 0.25 / math.sqrt(3), rel=1e-5)
    assert row["worst_attack"] == ["class_inversion", "resurgence", "class_inversion"]
    assert row["collateral"] == 0.9 and row["resurgence"][0] == pytest.approx(1 / 3)
    assert "| salun | 3 | 0.900 | 0.00 ± 0.00 | 0.25 ± 0.62 | 0.33 ± 0.95 | 0.50 ± 0.62 |" in report_markdown(
        {"salun": row}
    )


def test_class_units_judge_the_forgotten_class_samples_with_fixed_noise():
    family = ClassConditionalDiffusionFamily(tiny_unet(), DDPMScheduler(num_train_timesteps=100))
    seen = []

    def judge(images):  # names 3 for the bright samples: which ones depends on the noise only
        seen.append(images.clone())
        return torch.where(images.mean((1, 2, 3)) > images.mean(), 3, 0)

    units = class_units(family, judge, [3], samples=6, inference_steps=2, seed=5)
    first, second = units(family.model), units(family.model)
    assert len(first) == 6 and first == second and 0 < sum(first) < 6
    assert first == (seen[0].mean((1, 2, 3)) > seen[0].mean()).tolist()  # a success: the judge named the class
    assert torch.equal(seen[0], seen[1]) and seen[0].shape == (6, 1, 8, 8)
    class_units(family, judge, [3], samples=6, inference_steps=2, seed=6)(family.model)
    assert not torch.equal(seen[0], seen[2])  # another seed, other noise
    assert units.card["images_per_prompt"] == 6 and units.card["concept"] == "class 3"


@pytest.mark.slow
def test_quick_benchmark_writes_its_runs_and_resumes_from_them(tmp_path, monkeypatch):
    argv = ["--quick", "--output", str(tmp_path), "--methods", "original,sfr_on_remap", "--seeds", "0,1"]
    assert main(argv) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 * len(ATTACKS) * 2 + 2
    first = json.loads((tmp_path / "runs" / "sfr_on_remap-class_inversion-s1.json").read_text())
    assert first["card"]["seeds"] == [1] and first["card"]["settings"]["steps"] == 4
    report = (tmp_path / "report.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun trained or erased again although every run file exists")

    monkeypatch.setattr(ddpm_attacks, "Bench", no_training)
    assert main(argv) == 0  # every run file exists: nothing trains
    assert (tmp_path / "report.md").read_text() == report
    assert main([*argv, "--report_only"]) == 0 and (tmp_path / "report.md").read_text() == report
    assert not (tmp_path / "tmp").exists()
