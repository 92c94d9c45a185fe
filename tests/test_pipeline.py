"""Generation metrics and the diffusion benchmark's quick mode (resumable)."""

import json

import numpy as np
import pytest
import torch

from hf_unlearn.metrics.generation import (
    Judge,
    class_histogram,
    forget_accuracy,
    frechet_distance,
    histogram_kl,
    per_class_accuracy,
    save_grid,
)


def test_histogram_metrics():
    preds = torch.tensor([3, 3, 5, 7, 5, 5])
    assert forget_accuracy(preds, [3]) == pytest.approx(2 / 6)
    counts = class_histogram(preds, 10)
    assert counts.tolist() == [0, 0, 0, 2, 0, 3, 0, 1, 0, 0]
    assert histogram_kl(counts, counts) == pytest.approx(0.0)
    assert histogram_kl(counts, class_histogram(torch.tensor([0] * 6), 10)) > 1.0
    accuracy = per_class_accuracy(torch.tensor([1, 1, 2, 0]), torch.tensor([1, 1, 2, 2]))
    assert accuracy == {1: 1.0, 2: 0.5}
    with pytest.raises(ValueError, match="preds"):
        forget_accuracy(torch.tensor([], dtype=torch.long), [3])


def test_fid_with_judge_features_separates_real_from_noise(trained_resnet, digits, tmp_path):
    judge = Judge(trained_resnet.model, image_size=16)
    real = torch.tensor(np.stack([np.asarray(r["image"]) for r in digits["test"].select(range(200))]))
    real = real.float().div(255).unsqueeze(1)
    same = frechet_distance(real[:100], real[100:], judge)
    noise = frechet_distance(real[:100], torch.rand(100, 1, 8, 8), judge)
    assert 0 <= same < noise / 5
    assert judge(real[:4]).shape == (4, 64)
    save_grid(real[:12], tmp_path / "grid.png", nrow=4)
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == ((4 * 9 + 1) * 4, (3 * 9 + 1) * 4)


@pytest.mark.slow  # the whole diffusion benchmark in small; its real run is committed (benchmark_results/diffusion/)
def test_benchmark_quick_runs_and_resumes(tmp_path):
    from hf_unlearn.cli import main

    out, report = tmp_path / "bench", tmp_path / "report.md"
    assert main(["benchmark-diffusion", "--quick", "--output", str(out), "--report", str(report)]) == 0
    text = report.read_text()
    assert "sfr_on_remap" in text and "RT (retrain)" in text and "judge's penultimate" in text
    result = out / "results" / "unet" / "sfr_on_remap-s0-b3.json"
    stored = json.loads(result.read_text())
    assert 0 <= stored["FA"] <= 1 and stored["FID"] >= 0 and stored["fid_features"].startswith("judge:")
    assert (out / "grids" / "unet" / "sfr_on_remap-b3.png").exists()
    model_file = next((out / "models" / "unet" / "original-s0").rglob("*.safetensors"))
    stamps = (model_file.stat().st_mtime_ns, result.stat().st_mtime_ns)
    assert main(["benchmark-diffusion", "--quick", "--output", str(out)]) == 0  # resumes: nothing is recomputed
    assert (model_file.stat().st_mtime_ns, result.stat().st_mtime_ns) == stamps


def test_diffusion_report_states_rt_seed_spread_as_the_noise_floor():
    from hf_unlearn.benchmarks.diffusion import _noise_floor

    rts = [
        {"FA": 0.0, "remain_acc": 0.98, "FID": 2.0, "hist_kl": 0.3},
        {"FA": 0.1, "remain_acc": 0.96, "FID": 3.0, "hist_kl": 0.5},
        {"diverged": True},
    ]
    (line,) = [t for t in _noise_floor(rts) if t]
    # std over the two seeds that ran: FA 0.0/10.0 points -> 7.1, acc 98/96 -> 1.4, FID 2/3 -> 0.71 (28% of 2.5)
    assert "over 2 seeds" in line and "FA 7.1 points" in line and "remaining acc 1.4 points" in line
    assert "FID 0.71 (28% of RT's mean)" in line and "hist KL between RT seeds 0.40" in line
    assert _noise_floor(rts[:1]) == []  # one seed has no spread


def test_diffusion_report_rebuilds_from_its_run_files(tmp_path, monkeypatch):
    """The committed report is its run files' report: a result file changed without the report fails here."""
    from pathlib import Path

    from hf_unlearn.cli import main

    root = Path(__file__).resolve().parents[1]
    committed = (root / "benchmark_results" / "diffusion" / "report.md").read_text()
    command = committed.split("Command: `", 1)[1].split("`", 1)[0].split()
    assert command[:2] == ["hf-unlearn", "benchmark-diffusion"]
    monkeypatch.chdir(root)  # the recorded command names its output folder relative to the repository
    rebuilt, threads = tmp_path / "report.md", torch.get_num_threads()
    try:
        assert main([*command[1:], "--report-only", "--report", str(rebuilt)]) == 0
    finally:
        torch.set_num_threads(threads)  # the command's --threads must not outlive it in this worker
    assert rebuilt.read_text() == committed
