"""Variants of the text-to-image remap on the shape world's validation seeds, to find why the masked `sfr_on_remap`
lost to the hand-written loop (docs/world.md, "Why the default changed"). Not rows of the benchmark: each variant
runs at fixed trainable modules and cycles on the seeds given, and prints the mean of the benchmark's columns.

    python benchmarks/world_variants.py --rows sfr_on_remap_nomask,sfr_on_remap,remap_preserve --seeds 100,101 \
        --train_modules cross_attention_kv --cycles 120 --output benchmark_results/world_t2i/variants

Rows: any row of `benchmarks.world_t2i` (`hand_remap`, `sfr_on_remap`, its `_nomask` variant, ...) and
`remap_preserve`: the remap forget step with a remain step that keeps the original's prediction on the remain rows,
‖ε(x_t, c) − ε₀(x_t, c)‖² (a preservation loss, as in concept ablation and MACE), instead of refitting their noise.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hf_unlearn.benchmarks import world_t2i
from hf_unlearn.families.noise_losses import row_mse
from hf_unlearn.methods import Remap, UnlearnMethod, register_method
from hf_unlearn.parts.remain import RemainLoss


class Preserve(RemainLoss):
    """‖ε(x_t, c) − ε₀(x_t, c)‖² on remain rows, ε₀ the frozen model at θ0."""

    name = "preserve"

    def setup(self, ctx):
        ctx.ensure_original()

    def __call__(self, ctx, batch):
        family = ctx.family
        noisy, _, t = family._noised(family.encode_images(batch["pixel_values"]))
        states = family.encode_prompts(batch["input_ids"])
        with torch.no_grad():
            target = family.predict(ctx.original, noisy, t, states)
        loss = ctx.batch_mean(row_mse(family.predict(ctx.model, noisy, t, states), target))
        return loss, {"remain_loss": loss.detach().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", required=True)
    parser.add_argument("--seeds", default="100,101")
    parser.add_argument("--train_modules", default="cross_attention")
    parser.add_argument("--cycles", type=int, default=120)
    parser.add_argument("--output", default="benchmark_results/world_t2i/variants")
    args = parser.parse_args()
    defaults = {"text_to_image": {"forget_alpha": 1.0, "forget_alpha_schedule": "constant", "max_grad_norm": 0.0}}
    register_method(
        UnlearnMethod("remap_preserve", Remap(), Preserve(), geometry="fast_slow", defaults=defaults), overwrite=True
    )
    # The name the first exploration gave it (its run files keep it).
    world_t2i.VARIANTS["x_remap_preserve"] = ("remap_preserve", {})
    # The forget step's weight (α 1 was `anchor_remap`'s default until α 4 won here): fast-slow steps share Adam's
    # moments, so α sets the forget step's size against the remain step's (Adam alone is scale-free).
    for alpha in (1.0, 2.0, 4.0, 8.0):
        world_t2i.VARIANTS[f"anchor_remap_alpha{alpha:g}"] = ("anchor_remap", {"forget_alpha": alpha})
        # Two remain steps per forget step (SFR-on's K): more of the update on what must stay.
        world_t2i.VARIANTS[f"anchor_remap_alpha{alpha:g}_k2"] = (
            "anchor_remap",
            {"forget_alpha": alpha, "remain_steps_per_forget": 2},
        )
    bench = world_t2i.Benchmark(args.output, resume=True)
    for row in args.rows.split(","):
        runs = [bench.run("validate", row, int(s), args.train_modules, args.cycles) for s in args.seeds.split(",")]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in ("explicit_rate", "implicit_rate", "unrelated_mmd")}
        cost = float(np.mean([world_t2i.collateral(r) for r in runs]))
        print(f"{row} {args.train_modules} {args.cycles}: {mean} collateral {cost:.3f}", flush=True)


if __name__ == "__main__":
    main()
