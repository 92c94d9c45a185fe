"""Variants of the random-rows stop rule on ten validation seeds, against the default and against RT with another seed.

    OMP_NUM_THREADS=1 python benchmarks/default_rule_variants.py --variant NAME [--seeds 100,...,109]
    python benchmarks/default_rule_variants.py --summary

Each variant runs the six random settings of `benchmarks/default_rule.py` (ResNet and ViT, half, a quarter and a tenth
of the rows) on the validation seeds 100-109, one JSON per run under `OUTPUT/<variant>/runs` (rerunning skips finished
runs); `--summary` writes `OUTPUT/summary.md`: mean ± std Avg.D of each variant's `default` row and of RT trained with
another seed (the noise floor), and in brackets their difference from doing nothing paired per seed. The variants
(`VARIANTS`) change the library's rule in this process only:

- **offset target**: the forget rows' member share minus the held-out rows' must fall to what it was, at the start,
  against the remain rows (the rows' own pull, kept by RT) instead of to 0;
- **landing**: the cycle that reached the target is bisected (4 checks) to the smallest fraction of its update that
  reaches it, since RT's share is a level and one cycle can pass it;
- **forget loss**: the SFR-on variant whose forget step uses random other labels (`sfr_on_rl`) or a pull toward the
  uniform distribution (`sfr_on_kl`) instead of the bounded loss of the default `sfr_on_bound`;
- **harm tolerance / rate**: the do-no-harm check at 0.5 point instead of 1, or the learning rate 1e-3 instead of 3e-3;
- **revert**: a round that ends without reaching the target and further from it than at the start is undone;
- **both signals**: the target also asks the forget rows' accuracy to fall to the held-out rows' accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

import hf_unlearn.unlearner as engine
from hf_unlearn.benchmarks.runner import BenchmarkContext
from hf_unlearn.metrics.classification import mia_entropy
from hf_unlearn.stopping import HARM_TOLERANCE, HeldOutStop, _floats
from hf_unlearn.utils import atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from default_rule import RECIPES, ROWS, run  # noqa: E402

SETTINGS = tuple(f"{m}-random-f{f}" for m in ("resnet", "vit") for f in ("0.5", "0.25", "0.1"))


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: dict = field(default_factory=dict)  # of the default's config
    offset: bool = False  # offset target
    land: int = 0  # landing checks
    tolerance: float = HARM_TOLERANCE  # do no harm, in points
    revert: bool = False  # a round that ends further from the target than it started is undone
    accuracy: bool = False  # the target also asks forget accuracy to fall to the held-out rows' accuracy


RL, KL = {"method": "sfr_on_rl"}, {"method": "sfr_on_kl"}
VARIANTS = {
    "default": Variant("the default: attack target, do no harm, one round"),
    "offset": Variant("offset target", offset=True),
    "land": Variant("landing", land=4),
    "offset_land": Variant("offset target, landing", offset=True, land=4),
    "rl": Variant("forget loss `sfr_on_rl`", RL),
    "rl_offset": Variant("forget loss `sfr_on_rl`, offset target", RL, offset=True),
    "rl_land": Variant("forget loss `sfr_on_rl`, landing", RL, land=4),
    "rl_offset_land": Variant("forget loss `sfr_on_rl`, offset target, landing", RL, offset=True, land=4),
    "kl": Variant("forget loss `sfr_on_kl`", KL),
    "kl_offset": Variant("forget loss `sfr_on_kl`, offset target", KL, offset=True),
    "rl_land_tol0.5": Variant("forget loss `sfr_on_rl`, landing, do no harm (0.5 point)", RL, land=4, tolerance=0.5),
    "rl_land_lr1e-3": Variant("forget loss `sfr_on_rl` at lr 1e-3, landing", RL | {"learning_rate": 1e-3}, land=4),
    "revert": Variant("undo a round that ends further from the target", revert=True),
    "both": Variant("target: member share and forget accuracy at most the held-out rows'", accuracy=True),
    "rl_land_both": Variant(
        "forget loss `sfr_on_rl`, landing, target: member share and forget accuracy", RL, land=4, accuracy=True
    ),
    "rl_land_revert": Variant(
        "forget loss `sfr_on_rl`, landing, undo a round further from the target", RL, land=4, revert=True
    ),
}


class VariantStop(HeldOutStop):
    """The library's rule with a variant's target, landing, tolerance and undo (`variant`, set per process)."""

    variant = VARIANTS["default"]

    def __init__(self, family, forget, held_out, config, remain=None):
        self.harm_tolerance = self.variant.tolerance
        super().__init__(family, forget, held_out, config, remain=remain)
        self.offset, self.first = 0.0, None
        if not self.class_wise and (self.variant.offset or self.variant.revert):
            members = self._members(self._outputs(family.model))
            self.offset = members["forget"] - members["remain"] if self.variant.offset else 0.0
            self.first = (members["forget"] - members["held_out"], _floats(family.model))

    def _members(self, outs: dict) -> dict:
        found = super()._members(outs)
        if self.variant.offset:  # the remain rows' share, from the same attack
            attack = {"remain_logits": outs["remain"][0], "test_logits": outs["held_out"][0], "seed": self.seed}
            found["remain"] = mia_entropy(forget_logits=outs["remain"][0], **attack)
        if self.variant.accuracy:
            for name in ("forget", "held_out"):
                logits, labels = outs[name]
                found[f"{name}_accuracy"] = 100.0 * (logits.argmax(1) == labels).float().mean().item()
        return found

    def reached(self, members: dict) -> bool:
        reached = members["forget"] - members["held_out"] <= self.offset
        if self.variant.accuracy:
            reached = reached and members["forget_accuracy"] <= members["held_out_accuracy"]
        return reached

    def after_cycle(self, model, cycles_done: int) -> str:
        before = self.kept
        action = super().after_cycle(model, cycles_done)
        if self.class_wise:
            return action
        if self.variant.land and self.last.get("reached"):
            self.last["landed"] = self._land(model, before)
        if self.variant.revert and action == "stop" and not self.last["reached"]:
            gap = self.last["forget_members"] - self.last["held_out_members"]
            if gap > self.first[0]:  # further from the target than at the start: the round is undone
                with torch.no_grad():
                    state = model.state_dict()
                    for key, kept in self.first[1].items():
                        state[key].copy_(kept)
                self.last["reverted"] = True
        return action

    @torch.no_grad()
    def _land(self, model, before: dict) -> float:
        """Keeps the smallest fraction of the last cycle's update (bisected) that still reaches the target."""
        state, after = model.state_dict(), _floats(model)
        low, high = 0.0, 1.0
        for _ in range(self.variant.land):
            mid = (low + high) / 2
            for key, kept in before.items():
                state[key].copy_(kept).lerp_(after[key], mid)
            if self.reached(self._members(self._outputs(model))):
                high = mid
            else:
                low = mid
        for key, kept in before.items():
            state[key].copy_(kept).lerp_(after[key], high)
        return high


def run_variant(name: str, seeds: list[int], output: Path, models: str) -> None:
    VariantStop.variant = VARIANTS[name]
    ROWS["default"] = VARIANTS[name].overrides  # this process only: the `default` row runs the variant
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
    for name, variant in VARIANTS.items():
        rows.append(
            (
                f"`{name}`: {variant.label}",
                [json.loads(f.read_text()) for f in (output / name / "runs").glob("*.json")],
                "default",
            )
        )
    for label, runs, row in rows:
        cells = [_cell(runs, tag, row) for tag in SETTINGS]
        mean = statistics.mean(m for _, m in cells)
        lines.append(f"| {label} | " + " | ".join(c for c, _ in cells) + f" | {mean:.2f} |")
    # Where each row stands against doing nothing, seed by seed, and which of Avg.D's terms it moved.
    lines += ["", "| rows: seeds worse than doing nothing; mean change of FA, MIA | " + " | ".join(SETTINGS) + " |"]
    lines.append("|---" * (len(SETTINGS) + 1) + "|")
    for label, runs, row in rows[1:]:
        lines.append(f"| {label} | " + " | ".join(_moves(runs, tag, row) for tag in SETTINGS) + " |")
    return "\n".join(lines) + "\n"


def _moves(runs: list[dict], tag: str, row: str) -> str:
    mine = {r["seed"]: r for r in runs if r["tag"] == tag and r["row"] == row}
    base = {r["seed"]: r for r in runs if r["tag"] == tag and r["row"] == "original"}
    worse = sum(mine[s]["avg_d"] > base[s]["avg_d"] for s in mine)
    change = {k: statistics.mean(mine[s][k] - base[s][k] for s in mine) for k in ("FA", "MIA")}
    return f"{worse}/{len(mine)}; FA {change['FA']:+.1f}, MIA {change['MIA']:+.1f}"


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
