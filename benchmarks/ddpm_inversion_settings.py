"""Class-embedding inversion on the digits DDPM *before* erasure at a few settings, attack seeds 100-102 (validation:
the report table uses 0-4): does a stronger inversion reach the issue's bar (the attack recovers the class from the
original at least 80% of the time)? Prints each setting's post-attack rates (post, pre) per seed and their mean.

    OMP_NUM_THREADS=1 python benchmarks/ddpm_inversion_settings.py \
        > benchmark_results/ddpm_attacks/inversion_settings.txt
"""

import tempfile
from dataclasses import replace
from pathlib import Path

from hf_unlearn.attacks.class_inversion import ClassInversionConfig, class_embedding_inversion
from hf_unlearn.benchmarks.ddpm_attacks import FORGET_CLASS, JUDGE, Bench

VARIANTS = {
    "default": {},
    "targets64_batch16": {"num_targets": 64, "batch_size": 16},
    "steps600_lr0.02": {"steps": 600, "learning_rate": 0.02},
    "targets64_batch16_steps600": {"num_targets": 64, "batch_size": 16, "steps": 600},
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run(Bench(Path(tmp)))


def run(bench: Bench) -> None:
    original = bench.erase("original")
    for name, overrides in VARIANTS.items():
        rates = []
        for seed in (100, 101, 102):
            config = replace(ClassInversionConfig(seed=seed), **overrides)
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
        print(name, rates, "mean post", sum(p for p, _ in rates) / len(rates), flush=True)


if __name__ == "__main__":
    main()
