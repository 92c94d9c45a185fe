"""Which unit should the default unlearning budget be expressed in: cycles, or passes over the forget set?

The library default for classifiers (`sfr_on_bound`) was tuned on the digits benchmark, where the class-wise forget set
has 137 rows: a budget fixed in cycles would silently give a 50,000-row forget set the same 20 steps. This study runs
the default method on the benchmark's *validation* seeds (never the report seeds) at two model sizes (the tiny ResNet
and the tiny ViT) and two forget-set sizes (class 3: 137 rows; random 50%: 674 rows), with budgets laid on a grid of
passes over the forget set, and asks which unit keeps the best budget constant across forget-set sizes.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/budget_unit.py --output benchmark_results

Run files go to `<output>/runs/budget-*.json` (resumable; the benchmark's committed reference models are reused), the
summary to `<output>/budget_unit/results.json` and `results.md`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
import yaml
from accelerate import PartialState

from hf_unlearn.benchmarks.classification import DEFAULT_CONFIG
from hf_unlearn.benchmarks.runner import BenchmarkContext, run_one
from hf_unlearn.tiny.classifiers import TrainingRecipe
from hf_unlearn.utils import atomic_write_json, atomic_write_text

METHOD = "sfr_on_bound"  # the classifier family's default method
PASSES = (0.5, 1, 2, 4, 8)
TABLES = (("resnet", "class"), ("resnet", "random"), ("vit", "class"))


def _stats(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def study(output: str, seeds: list[int], batch: int) -> dict:
    cfg = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
    rows = []
    for model, scenario in TABLES:
        ctx = BenchmarkContext(
            output,
            model,
            scenario,
            TrainingRecipe(**cfg["recipes"][model]),
            forget_class=cfg["forget_class"],
            forget_fraction=cfg["forget_fraction"],
        )
        for passes in PASSES:
            scores, cycles_seen = [], set()
            for seed in seeds:
                batches = math.ceil(len(ctx.split(seed).forget_indices) / batch)
                cycles = math.ceil(passes * batches)
                cycles_seen.add(cycles)
                record = run_one(ctx, "budget", seed, METHOD, {"max_steps": cycles}, resume=True)
                scores.append(record["avg_d"])
                print(f"{ctx.tag} seed={seed} passes={passes} cycles={cycles} avg_d={record['avg_d']:.3f}", flush=True)
            mean, std = _stats(scores)
            rows.append(
                {
                    "tag": ctx.tag,
                    "passes": passes,
                    "cycles": sorted(cycles_seen),
                    "avg_d": mean,
                    "avg_d_std": std,
                    "num_forget": len(ctx.split(seeds[0]).forget_indices),
                    "seeds": seeds,
                }
            )
    return {"method": METHOD, "per_device_train_batch_size": batch, "rows": rows}


def best_by_unit(rows: list[dict]) -> dict:
    best = {}
    for tag in dict.fromkeys(r["tag"] for r in rows):
        mine = [r for r in rows if r["tag"] == tag]
        top = min(mine, key=lambda r: r["avg_d"])
        best[tag] = {"passes": top["passes"], "cycles": top["cycles"], "avg_d": top["avg_d"]}
    return best


def to_markdown(summary: dict) -> str:
    lines = [
        f"Method `{summary['method']}` (library default), batch {summary['per_device_train_batch_size']}, "
        f"validation seeds {summary['rows'][0]['seeds']}; Avg.D (lower is better), mean ± std.",
        "",
        "| table | forget rows | passes over forget set | cycles | Avg.D |",
        "|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        cycles = "/".join(str(c) for c in r["cycles"])
        lines.append(
            f"| {r['tag']} | {r['num_forget']} | {r['passes']} | {cycles} | {r['avg_d']:.2f} ± {r['avg_d_std']:.2f} |"
        )
    lines += ["", "| table | best passes | best cycles | Avg.D |", "|---|---|---|---|"]
    for tag, b in summary["best"].items():
        lines.append(f"| {tag} | {b['passes']} | {'/'.join(map(str, b['cycles']))} | {b['avg_d']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="benchmark_results", help="The benchmark's output folder (models, runs).")
    p.add_argument("--seeds", default=None, help="Comma-separated seeds (default: the benchmark's validation seeds).")
    p.add_argument("--threads", type=int, default=1, help="torch threads.")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    PartialState()
    cfg = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(cfg["validation_seeds"])
    summary = study(args.output, seeds, batch=64)
    summary["best"] = best_by_unit(summary["rows"])
    folder = Path(args.output) / "budget_unit"
    atomic_write_json(folder / "results.json", summary)
    atomic_write_text(folder / "results.md", to_markdown(summary))
    print(to_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
