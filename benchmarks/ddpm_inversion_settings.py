"""Class-embedding inversion on the digits DDPM *before* erasure, attack seeds 100-102 (validation: the report table
uses 0-4): does the inversion reach the issue's bar (it recovers the class from the original at least 80% of the
time)? For each original (the demo's 200-step UNet, and `ddpm_attacks.MODEL`, the same code trained with
`benchmark-diffusion`'s sizes) and a few attack settings, prints the post- and pre-attack rates per seed and the means.

    OMP_NUM_THREADS=1 python benchmarks/ddpm_inversion_settings.py \\
        > benchmark_results/ddpm_attacks/inversion_settings.txt
"""

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from hf_unlearn.attacks.class_inversion import ClassInversionConfig, class_embedding_inversion
from hf_unlearn.benchmarks.ddpm_attacks import FORGET_CLASS, JUDGE, MODEL, Bench
from hf_unlearn.demos import DiffusionDemoSettings

ORIGINALS = {"demo_200_steps": DiffusionDemoSettings(), "benchmark_sizes_400_steps": MODEL}
# Written out in full (not as overrides of the config's defaults, which moved to the winner), so a rerun reproduces
# the committed output: 200 steps of 8 from 16 targets were the defaults before this comparison.
OLD = {"steps": 200, "learning_rate": 0.05, "batch_size": 8, "num_targets": 16}
VARIANTS = {
    "steps200_batch8_targets16": OLD,
    "steps200_batch16_targets64": {**OLD, "num_targets": 64, "batch_size": 16},
    "steps600_lr0.02_batch8_targets16": {**OLD, "steps": 600, "learning_rate": 0.02},
    "steps600_batch16_targets64": {**OLD, "num_targets": 64, "batch_size": 16, "steps": 600},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--originals", default=",".join(ORIGINALS), help=f"Comma-separated, from {list(ORIGINALS)}.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated, from {list(VARIANTS)}.")
    args = parser.parse_args()
    for name in args.originals.split(","):
        print(f"== original: {name} {ORIGINALS[name]}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            run(Bench(Path(tmp), settings=ORIGINALS[name]), args.variants.split(","))


def run(bench: Bench, variants: list[str]) -> None:
    original = bench.erase("original")
    for name in variants:
        rates = []
        for seed in (100, 101, 102):
            config = replace(ClassInversionConfig(seed=seed), **VARIANTS[name])
            card = class_embedding_inversion(
                original,
                bench.judge,
                FORGET_CLASS,
                original=bench.original,
                config=config,
                judge_name=JUDGE,
                judge_version=bench.judge_version,
            ).to_dict()["card"]
            rates.append((card["post_asr"], card["pre_asr"]))
        mean = [sum(r[i] for r in rates) / len(rates) for i in (0, 1)]
        print(name, rates, f"mean post {mean[0]:.3f} mean pre {mean[1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
