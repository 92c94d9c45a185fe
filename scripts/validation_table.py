"""Prints the validation-search table of one benchmark tag as markdown, from the run files and the frozen selection.

    python scripts/validation_table.py resnet-class-c3 [--output benchmark_results]
        [--config hf_unlearn/benchmarks/benchmark_classification.yaml]

One row per method: the grid point frozen by `hf-unlearn benchmark --phase select --freeze`, its mean ± std Avg.D and
D_KL over the validation seeds, the sensitivity (mean Avg.D over the whole grid), and when its search runs finished
(methods whose search was not rerun keep the runs of an earlier session).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tag")
    p.add_argument("--output", default="benchmark_results")
    p.add_argument("--config", default="hf_unlearn/benchmarks/benchmark_classification.yaml")
    args = p.parse_args()
    tuned = yaml.safe_load(Path(args.config).read_text())["tuned"][args.tag]
    runs = [json.loads(f.read_text()) for f in Path(args.output, "runs").glob(f"search-{args.tag}-*.json")]
    print("| method | chosen on validation | val. Avg.D | val. D_KL | sensitivity (grid mean) | search runs from |")
    print("|---|---|---|---|---|---|")
    for method, entry in sorted(tuned.items(), key=lambda kv: kv[1]["val_avg_d"]):
        mine = [r for r in runs if r["method"] == method and r["overrides"] == entry["overrides"]]
        kl = [r["KL"] for r in mine]
        kl_text = f"{statistics.mean(kl):.2f} ± {statistics.pstdev(kl):.2f}" if kl else "–"
        dates = sorted({r.get("finished_at", "")[:10] for r in mine})
        point = ", ".join(f"{k}={v}" for k, v in entry["overrides"].items())
        print(
            f"| {method} | {point} | {entry['val_avg_d']:.2f} ± {entry['val_avg_d_std']:.2f} | {kl_text} | "
            f"{entry['sensitivity']:.2f} | {', '.join(dates)} |"
        )


if __name__ == "__main__":
    main()
