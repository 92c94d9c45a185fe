"""The device suite's pipeline: `benchmarks/device_suite.py --tiny` runs every tiny setting through `Unlearner` and
writes one JSON with throughput, peak memory and pass counts (numbers checked for sense, never for speed)."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_suite.py"


@pytest.mark.slow
def test_tiny_suite_reports_every_setting_with_positive_numbers_and_passes(tmp_path):
    output = tmp_path / "suite.json"
    cycles = 2
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--cycles", str(cycles), "--output", str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["tiny"] is True and report["device"]
    expected = runpy.run_path(str(SCRIPT))["TINY_SETTINGS"]
    rows = {(r["model"], r["precision"], r["train"], r["checkpointing"]): r for r in report["settings"]}
    assert set(rows) == set(expected)
    for key, row in rows.items():
        assert "error" not in row, (key, row)
        for name in ("cycles_per_s", "samples_per_s", "peak_memory_mb", "saliency_s", "cycle_s"):
            assert row[name] > 0, (key, name, row[name])
        passes, rows_through = row["work"]["passes"], row["work"]["rows"]
        # Two saliency batches per set, one forget and one remain batch (K = 1) per cycle.
        assert passes["saliency"] == 4 and passes["forget"] == cycles and passes["remain"] == cycles, (key, passes)
        assert rows_through["forget"] == cycles * row["batch"] and rows_through["remain"] == cycles * row["batch"]
        # samples/s is the rows of the step passes over the cycles' time, as the docstring says.
        assert row["samples_per_s"] == pytest.approx(2 * cycles * row["batch"] / row["cycle_s"])
        has_hand = row["train"] == "full" and not row["checkpointing"]
        assert ("engine_hand_ratio" in row) == has_hand
        if has_hand:
            assert row["engine_hand_ratio"] > 0 and row["hand_cycle_s"] > 0
    # LoRA and the cross-attention subset train fewer weights than the full UNet / ViT.
    full_unet = rows[("unet", "fp32", "full", False)]["trainable_parameters"]
    assert rows[("unet", "fp32", "xattn", True)]["trainable_parameters"] < full_unet
    assert rows[("unet", "bf16", "lora", False)]["trainable_parameters"] < full_unet
    assert (
        rows[("vit", "bf16", "lora", True)]["trainable_parameters"]
        < rows[("vit", "fp32", "full", False)]["trainable_parameters"]
    )


def test_full_settings_cover_every_combination():
    settings = runpy.run_path(str(SCRIPT))["all_settings"]()
    # A ViT has no cross-attention subset; SD3 and FLUX run bf16 with checkpointing (FLUX-dev: no full run).
    assert len(settings) == len(set(settings)) == 2 * 2 * 2 + 2 * 3 * 2 + 5
    assert {s[1] for s in settings} == {"fp32", "bf16"} and {s[3] for s in settings} == {False, True}
    assert ("unet", "bf16", "xattn", True) in settings and ("vit", "fp32", "xattn", False) not in settings
    assert ("flux", "bf16", "lora", True) in settings and ("flux", "bf16", "full", True) not in settings
