"""Variants of the random-rows stop rule on ten validation seeds, against the default and against RT with another seed.

    OMP_NUM_THREADS=1 python benchmarks/default_rule_variants.py --variant NAME [--seeds 100,...,109]
    python benchmarks/default_rule_variants.py --summary

Each variant runs the four random settings of `benchmarks/default_rule.py` (ResNet and ViT, half and a tenth of the
rows) on the validation seeds 100-109, one JSON per run under `OUTPUT/<variant>/runs` (rerunning skips finished runs);
`--summary` writes `OUTPUT/summary.md`: mean ± std Avg.D of each variant's `default` row and of RT trained with
another seed (the noise floor), and in brackets their difference from doing nothing paired per seed. The variants
(`VARIANTS`) change the library's rule in this process only:

- **offset target**: the forget rows' member share minus the held-out rows' must fall to what it was, at the start,
  against the remain rows (the rows' own pull, kept by RT) instead of to 0;
- **landing**: the cycle that reached the target is bisected (4 checks) to the smallest fraction of its update that
  reaches it, since RT's share is a level and one cycle can pass it;
- **forget loss**: the SFR-on variant whose forget step uses random other labels (`sfr_on_rl`) or a pull toward the
  uniform distribution (`sfr_on_kl`) instead of the bounded loss of the default `sfr_on_bound`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

import hf_unlearn.unlearner as engine
from hf_unlearn.benchmarks.runner import BenchmarkContext
from hf_unlearn.stopping import HeldOutStop, _floats
from hf_unlearn.utils import atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from default_rule import RECIPES, ROWS, run  # noqa: E402

SETTINGS = ("resnet-random-f0.5", "resnet-random-f0.1", "vit-random-f0.5", "vit-random-f0.1")
# name: (what it is, config overrides of the default, offset target, landing checks)
VARIANTS = {
    "default": ("the default: attack target, do no harm, one round", {}, False, 0),
    "offset": ("offset target", {}, True, 0),
    "land": ("landing", {}, False, 4),
    "offset_land": ("offset target, landing", {}, True, 4),
    "rl": ("forget loss `sfr_on_rl`", {"method": "sfr_on_rl"}, False, 0),
    "rl_offset": ("forget loss `sfr_on_rl`, offset target", {"method": "sfr_on_rl"}, True, 0),
    "rl_land": ("forget loss `sfr_on_rl`, landing", {"method": "sfr_on_rl"}, False, 4),
    "rl_offset_land": ("forget loss `sfr_on_rl`, offset target, landing", {"method": "sfr_on_rl"}, True, 4),
    "kl": ("forget loss `sfr_on_kl`", {"method": "sfr_on_kl"}, False, 0),
    "kl_offset": ("forget loss `sfr_on_kl`, offset target", {"method": "sfr_on_kl"}, True, 0),
}


class VariantStop(HeldOutStop):
    """The library's rule with a variant's target and landing (class attributes, set per variant)."""

    offset_target, land_steps = False, 0

    def __init__(self, family, forget, held_out, config, remain=None):
        super().__init__(family, forget, held_out, config, remain=remain)
        self.offset = 0.0
        if not self.class_wise and self.offset_target:
            members = self._members(family.model)
            self.offset = members["forget"] - members["remain"]

    def reached(self, members: dict) -> bool:
        return members["forget"] - members["held_out"] <= self.offset

    def after_cycle(self, model, cycles_done: int) -> str:
        before = self.kept
        action = super().after_cycle(model, cycles_done)
        if self.land_steps and not self.class_wise and self.last.get("reached"):
            self.last["landed"] = self._land(model, before)
        return action

    @torch.no_grad()
    def _land(self, model, before: dict) -> float:
        """Keeps the smallest fraction of the last cycle's update (bisected) that still reaches the target."""
        state, after = model.state_dict(), _floats(model)
        low, high = 0.0, 1.0
        for _ in range(self.land_steps):
            mid = (low + high) / 2
            for key, kept in before.items():
                state[key].copy_(kept).lerp_(after[key], mid)
            if self.reached(self._members(model)):
                high = mid
            else:
                low = mid
        for key, kept in before.items():
            state[key].copy_(kept).lerp_(after[key], high)
        return high


def run_variant(name: str, seeds: list[int], output: Path, models: str) -> None:
    _, overrides, VariantStop.offset_target, VariantStop.land_steps = VARIANTS[name]
    ROWS["default"] = overrides  # this process only: the `default` row runs the variant
    engine.HeldOutStop = VariantStop
    for tag in SETTINGS:
        model, _, fraction = tag.split("-")
        ctx = BenchmarkContext(models, model, "random", RECIPES[model], forget_fraction=float(fraction[1:]))
        for seed in seeds:
            for row in ("original", "RT, another seed", "default") if name == "default" else ("original", "default"):
                record = run(ctx, seed, row, output / name)
                print(f"{name} {tag} s{seed} {row}: Avg.D {record['avg_d']:.2f}", flush=True)


def summary(output: Path) -> str:
    """Mean ± std Avg.D per variant and setting, and the paired difference from doing nothing."""
    header = "| rows | " + " | ".join(SETTINGS) + " | mean |"
    lines = [header, "|---" * (len(SETTINGS) + 2) + "|"]
    reference = [json.loads(f.read_text()) for f in (output / "default" / "runs").glob("*.json")]
    rows = [("original (doing nothing)", reference, "original"), ("RT, another seed", reference, "RT, another seed")]
    for name, (label, *_rest) in VARIANTS.items():
        rows.append(
            (
                f"`{name}`: {label}",
                [json.loads(f.read_text()) for f in (output / name / "runs").glob("*.json")],
                "default",
            )
        )
    for label, runs, row in rows:
        cells = [_cell(runs, tag, row) for tag in SETTINGS]
        mean = statistics.mean(m for _, m in cells)
        lines.append(f"| {label} | " + " | ".join(c for c, _ in cells) + f" | {mean:.2f} |")
    return "\n".join(lines) + "\n"


def _cell(runs: list[dict], tag: str, row: str) -> tuple[str, float]:
    """`mean ± std (n) [paired difference from doing nothing, mean ± std]` of `row`'s Avg.D in `tag`, and the mean."""
    mine = {r["seed"]: r["avg_d"] for r in runs if r["tag"] == tag and r["row"] == row}
    base = {r["seed"]: r["avg_d"] for r in runs if r["tag"] == tag and r["row"] == "original"}
    mean = statistics.mean(mine.values())
    text = f"{mean:.2f} ± {statistics.stdev(mine.values()):.2f} (n={len(mine)})"
    if row != "original":
        paired = [mine[s] - base[s] for s in mine]
        text += f" [{statistics.mean(paired):+.2f} ± {statistics.stdev(paired):.2f}]"
    return text, mean


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=list(VARIANTS), help="Run this variant.")
    p.add_argument("--summary", action="store_true", help="Write OUTPUT/summary.md from the runs.")
    p.add_argument("--seeds", default=",".join(str(s) for s in range(100, 110)), help="Validation seeds.")
    p.add_argument("--models", default="benchmark_results")
    p.add_argument("--output", default="benchmark_results/default_rule/validation_10seeds")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    output = Path(args.output)
    if args.variant:
        run_variant(args.variant, [int(s) for s in args.seeds.split(",")], output, args.models)
    if args.summary:
        text = summary(output)
        atomic_write_text(output / "summary.md", text)
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
