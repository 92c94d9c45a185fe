"""The classifier default's evidence: a method's validation Avg.D at every grid point on every benchmark setting.

    python benchmarks/default_choice.py sfr_on_bound [--output benchmark_results] [--write]

Reads the search runs (validation seeds only) of the four digits settings and prints one row per grid point: its mean
Avg.D per setting and the mean over the settings. The library's classifier default is the grid point with the lowest
mean over the settings (docs/benchmarks.md); `--write` saves the table as
`<output>/validation/default_choice_<method>.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from hf_unlearn.benchmarks.classification import DEFAULT_CONFIG
from hf_unlearn.benchmarks.runner import config_hash
from hf_unlearn.utils import atomic_write_text

TAGS = ("resnet-class-c3", "resnet-random-f0.5", "vit-class-c3", "vit-random-f0.5")


def table(method: str, output: Path) -> str:
    grid = yaml.safe_load(DEFAULT_CONFIG.read_text())["grids"][method]
    runs = [json.loads(f.read_text()) for f in (output / "runs").glob(f"search-*-{method}-*.json")]
    lines = [f"| {method} grid point | " + " | ".join(TAGS) + " | mean over settings |"]
    lines.append("|---" * (len(TAGS) + 2) + "|")
    for point in grid:
        key = config_hash(dict(point))
        means = []
        for tag in TAGS:
            mine = [r["avg_d"] for r in runs if r["tag"] == tag and r["method"] == method and r["config_hash"] == key]
            means.append(statistics.mean(mine) if mine else float("nan"))
        name = ", ".join(f"{k}={v}" for k, v in point.items())
        cells = " | ".join(f"{m:.2f}" for m in means)
        lines.append(f"| {name} | {cells} | {statistics.mean(means):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method")
    p.add_argument("--output", default="benchmark_results")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    text = table(args.method, Path(args.output))
    if args.write:
        atomic_write_text(Path(args.output, "validation", f"default_choice_{args.method}.md"), text)
    print(text, end="")


if __name__ == "__main__":
    main()
