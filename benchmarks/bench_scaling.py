"""Cost of the saliency mask and of the cycles as the forget and remain sets grow, next to the passes the run made.

The digits training rows (1,347; class 3 forgotten: 137 forget, 1,210 remain rows) repeated 1×, 10× and 100× (both
sets grow by the factor), the same SFR-on job on each size, each size in a fresh process: a full saliency pass over
each set (as published: `saliency_max_batches=None`), then `--cycles` cycles of one forget step and one remain step.
Per size: the seconds of the mask and of the cycles (the run's `saliency_runtime_s`, and `runtime_s` minus it), the
peak anonymous resident memory (heap and tensors, sampled every 5 ms, as benchmarks/memory_scaling.py) during each
phase above the process's memory once the data is loaded, and the passes of each phase from the run's `work`.
Expected: the mask follows its passes (linear in the rows), the cycles stay flat (their passes do not depend on the
sizes).

    python benchmarks/bench_scaling.py --factors 1 10 100 --output benchmark_results/performance/scaling
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from memory_scaling import PeakSampler, memory_mb


class PhaseSampler(PeakSampler):
    """Anonymous RSS and the process's CPU time, sampled with their wall times, so that the peak memory and the CPU
    seconds of each phase of a run can be read afterwards (CPU time: other jobs on a shared machine do not count)."""

    def __init__(self):
        super().__init__()
        self.samples: list[tuple[float, float, float]] = []

    def run(self):
        while self.running:
            self.samples.append((time.perf_counter(), time.process_time(), memory_mb()["RssAnon"]))
            time.sleep(0.005)

    def peak(self, start: float, end: float) -> float:
        return max((mb for t, _, mb in self.samples if start <= t <= end), default=float("nan"))

    def cpu(self, start: float, end: float) -> float:
        """CPU seconds of the process between two wall times (to the sampling interval)."""
        inside = [c for t, c, _ in self.samples if start <= t <= end]
        return inside[-1] - inside[0] if inside else float("nan")


def child(factor: int, cycles: int, cache_mb) -> dict:
    import torch

    torch.set_num_threads(1)
    from datasets import concatenate_datasets

    from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, load_digits_dataset
    from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier

    train = load_digits_dataset()["train"]
    data = concatenate_datasets([train] * factor) if factor > 1 else train
    split = ForgetRemainSplit.from_dataset(data, forget_classes=[3])
    config = UnlearnConfig(
        method="sfr_on",
        output_dir="",
        seed=0,
        max_steps=cycles,
        remain_steps_per_forget=1,
        per_device_train_batch_size=64,
        saliency_max_batches=None,
        logging_steps=10**6,
    )
    unlearner = Unlearner.from_pretrained(
        tiny_classifier("resnet", seed=0), config, image_processor=digits_image_processor()
    )
    if cache_mb is not None:  # the family keeps preprocessed rows up to this budget (0: decodes every batch again)
        unlearner.family.preprocessed_cache_bytes = int(cache_mb * 2**20)
    baseline = memory_mb()["RssAnon"]
    sampler = PhaseSampler()
    sampler.start()
    start = time.perf_counter()
    result = unlearner.unlearn(split)
    end = time.perf_counter()
    sampler.running = False
    sampler.join()
    cycle_s = result.runtime_s - result.saliency_runtime_s
    boundary = end - cycle_s  # the cycles are the run's last `cycle_s` seconds; the mask comes right before them
    work = result.work
    return {
        "factor": factor,
        "forget_rows": len(split.forget),
        "remain_rows": len(split.remain),
        "mask_s": round(result.saliency_runtime_s, 3),
        "mask_cpu_s": round(sampler.cpu(start, boundary), 3),
        "mask_passes": work["passes"]["saliency"],
        "mask_rows": work["rows"]["saliency"],
        "mask_peak_anon_growth_mb": round(sampler.peak(start, boundary) - baseline, 1),
        "cycles": cycles,
        "cycles_s": round(cycle_s, 3),
        "cycles_cpu_s": round(sampler.cpu(boundary, end), 3),
        "cycle_passes": work["passes"]["forget"] + work["passes"]["remain"],
        "cycle_rows": work["rows"]["forget"] + work["rows"]["remain"],
        "cycles_peak_anon_growth_mb": round(sampler.peak(boundary, end) - baseline, 1),
        "anon_with_data_mb": round(baseline, 1),
    }


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["forget_rows"] + r["remain_rows"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (
        ("mask_cpu_s", "saliency mask (full pass over both sets)"),
        ("cycles_cpu_s", f"{rows[0]['cycles']} cycles"),
    ):
        left.plot(sizes, [r[key] for r in rows], "o-", label=label)
    ideal = [rows[0]["mask_cpu_s"] * s / sizes[0] for s in sizes]
    left.plot(sizes, ideal, ":", color="grey", label="linear in rows (from the 1× mask)")
    left.set(xscale="log", yscale="log", xlabel="rows (forget + remain)", ylabel="CPU seconds", title="time")
    for r, s in zip(rows, sizes):
        left.annotate(f"{r['mask_passes']} passes", (s, r["mask_cpu_s"]), textcoords="offset points", xytext=(4, -12))
        left.annotate(f"{r['cycle_passes']} passes", (s, r["cycles_cpu_s"]), textcoords="offset points", xytext=(4, 4))
    left.legend(fontsize=8)
    for key, label in (
        ("mask_peak_anon_growth_mb", "during the mask"),
        ("cycles_peak_anon_growth_mb", "during the cycles"),
    ):
        right.plot(sizes, [r[key] for r in rows], "o-", label=label)
    right.set(xscale="log", xlabel="rows (forget + remain)", ylabel="MB above the loaded data", title="peak anon RSS")
    right.legend(fontsize=8)
    fig.suptitle("SFR-on on repeated digits, tiny ResNet, batch 64, one thread")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--output", help="Write <output>.json, .md and .png (the chart).")
    parser.add_argument(
        "--preprocessed-cache-mb",
        type=float,
        help="The image-classifier family's budget of kept preprocessed rows (default: the family's; 0: none).",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.cycles, args.preprocessed_cache_mb)))
        return 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    rows = []
    for factor in args.factors:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(factor), "--cycles", str(args.cycles)]
            + (
                []
                if args.preprocessed_cache_mb is None
                else ["--preprocessed-cache-mb", str(args.preprocessed_cache_mb)]
            ),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    base = rows[0]
    for r in rows:  # per pass and relative to the smallest size: what "follows the passes" means in numbers
        r["mask_cpu_ms_per_pass"] = round(1000 * r["mask_cpu_s"] / r["mask_passes"], 2)
        r["cycles_cpu_ratio_to_first"] = round(r["cycles_cpu_s"] / base["cycles_cpu_s"], 2)
    keys = ["factor", "forget_rows", "remain_rows", "mask_passes", "mask_s", "mask_cpu_s", "mask_cpu_ms_per_pass"]
    keys += ["mask_peak_anon_growth_mb", "cycle_passes", "cycles_s", "cycles_cpu_s", "cycles_cpu_ratio_to_first"]
    keys += ["cycles_peak_anon_growth_mb"]
    table = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    table += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    print("\n".join(table))
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/bench_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
        path.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
        path.with_suffix(".md").write_text(f"`{command}`\n\n" + "\n".join(table) + "\n")
        chart(rows, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
