"""`benchmarks/bench_scaling.py`: the mask's passes grow with the repeated digits, the cycles' passes do not, and the
committed outputs (JSON, table, chart) are written; the numbers are checked for sense and against the planner."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearn import UnlearnConfig
from hf_unlearn.methods import get_method
from hf_unlearn.passes import planned_work
from hf_unlearn.resolve import resolve_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mask_passes_follow_the_rows_and_cycle_passes_stay(tmp_path):
    cycles = 3
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"), "--factors", "1", "2"]
    command += ["--cycles", str(cycles), "--output", str(tmp_path / "scaling")]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "scaling.json").read_text())["rows"]
    assert [r["factor"] for r in rows] == [1, 2]
    assert (
        rows[1]["forget_rows"] == 2 * rows[0]["forget_rows"] and rows[1]["remain_rows"] == 2 * rows[0]["remain_rows"]
    )
    config = UnlearnConfig(
        method="sfr_on", max_steps=cycles, remain_steps_per_forget=1, per_device_train_batch_size=64
    )
    method = get_method("sfr_on", "image_classifier")
    for r in rows:
        planned = planned_work(resolve_config(config, "image_classifier"), method, r["forget_rows"], r["remain_rows"])
        assert (
            r["mask_passes"] == planned["passes"]["saliency"] and r["mask_rows"] == r["forget_rows"] + r["remain_rows"]
        )
        assert r["cycle_passes"] == 2 * cycles == planned["passes"]["forget"] + planned["passes"]["remain"]
        for key in ("mask_s", "mask_cpu_s", "cycles_s", "cycles_cpu_s"):
            assert r[key] > 0, (key, r)
    assert rows[1]["mask_passes"] > rows[0]["mask_passes"]
    table = (tmp_path / "scaling.md").read_text()
    assert "| factor |" in table and table.count("\n| ") == 3  # header and one row per size
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
