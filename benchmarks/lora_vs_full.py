"""Full fine-tuning vs LoRA-only unlearning on the digits ViT: trainable parameters, peak memory, forgetting quality.

    python benchmarks/lora_vs_full.py --seeds 0 1 2 --output benchmark_results/lora_vs_full

Trains the tiny digits ViT (the benchmark recipe) once per seed, then runs SFR-on class-wise forgetting of one digit
twice, full and LoRA (`--lora-lr` for the adapters), each in its own process so the peak resident memory of one does
not hide the other's; the `original` (doing nothing) and RT (the same recipe on the remain rows only) rows per seed
set the scale. Writes `results.json` and `results.md` (the table docs/lora.md shows) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(args) -> dict:
    """One unlearning run in this process; returns counts, memory and metrics."""
    import torch

    from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, load_digits_dataset
    from hf_unlearn.lora import trainable_parameter_count

    torch.set_num_threads(args.threads)
    ds = load_digits_dataset()
    split = ForgetRemainSplit.from_dataset(ds["train"], forget_classes=[args.forget_class], test_dataset=ds["test"])
    lora = args.run == "lora"
    config = UnlearnConfig(
        method="sfr_on",
        seed=args.seed,
        lora=lora,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        learning_rate=args.lora_lr if lora else None,
        output_dir=os.path.join(args.output, "runs"),
    )
    unlearner = Unlearner.from_pretrained(args.model, config)
    before = _rss_mib()
    start = time.perf_counter()
    unlearner.unlearn(split)
    runtime = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable, total = trainable_parameter_count(unlearner.model)
    metrics = unlearner.evaluate(split)
    return {
        "variant": args.run,
        "seed": args.seed,
        "trainable": trainable,
        "total": total,
        "optimizer_state_kib": 2 * 4 * trainable / 1024,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "peak_increase_mib": peak - before,
        "runtime_s": runtime,
        "learning_rate": unlearner.config.learning_rate,
        **{k: metrics[k] for k in ("FA", "RA", "TA", "MIA")},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--forget-class", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=1e-2, help="Learning rate of the LoRA runs.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmark_results/lora_vs_full")
    parser.add_argument("--run", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        print("RESULT " + json.dumps(run_variant(args)), flush=True)
        return 0
    import torch

    from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, load_digits_dataset
    from hf_unlearn.tiny.classifiers import RECIPES, digits_image_processor, tiny_classifier, train_classifier
    from hf_unlearn.utils import atomic_write_json, atomic_write_text

    torch.set_num_threads(args.threads)
    ds = load_digits_dataset()
    rows = []
    split = ForgetRemainSplit.from_dataset(ds["train"], forget_classes=[args.forget_class], test_dataset=ds["test"])
    processor = digits_image_processor()
    for seed in args.seeds:
        model_dir = os.path.join(args.output, f"original_seed{seed}")
        if not os.path.isdir(model_dir):
            original = train_classifier(tiny_classifier("vit", seed=seed), ds["train"], RECIPES["vit"], seed=seed)
            original.save_pretrained(model_dir, overwrite=True)
        retrained = train_classifier(tiny_classifier("vit", seed=seed), split.remain, RECIPES["vit"], seed=seed)
        for name, model in (("original", model_dir), ("retrain", retrained.model)):
            unlearner = Unlearner.from_pretrained(model, UnlearnConfig(output_dir=""), image_processor=processor)
            metrics = unlearner.evaluate(split)
            rows.append({"variant": name, "seed": seed, **{k: metrics[k] for k in ("FA", "RA", "TA", "MIA")}})
        for variant in ("full", "lora"):
            cmd = [
                sys.executable,
                __file__,
                "--run",
                variant,
                "--model",
                model_dir,
                "--seed",
                str(seed),
                "--forget-class",
                str(args.forget_class),
                "--lora-r",
                str(args.lora_r),
                "--lora-lr",
                str(args.lora_lr),
                "--threads",
                str(args.threads),
                "--output",
                args.output,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:]))
    atomic_write_json(os.path.join(args.output, "results.json"), rows)
    lines = [
        "| variant | seed | lr | trainable | of total | Adam state (KiB) | peak RSS +MiB | time (s) | FA | RA | TA |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["variant"] in ("original", "retrain"):  # references: no run, only the model's metrics
            lines.append(
                f"| {r['variant']} | {r['seed']} | – | – | – | – | – | – | {r['FA']:.2f} | {r['RA']:.2f} | "
                f"{r['TA']:.2f} |"
            )
            continue
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['learning_rate']:g} | {r['trainable']:,} | {r['total']:,} | "
            f"{r['optimizer_state_kib']:.0f} | {r['peak_increase_mib']:.1f} | {r['runtime_s']:.1f} | {r['FA']:.2f} | "
            f"{r['RA']:.2f} | {r['TA']:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(args.output, "results.md"), table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
