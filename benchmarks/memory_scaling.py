"""Peak memory of an unlearning run as the dataset grows: the data stays memory-mapped on disk, RAM stays flat.

Builds the bundled digits (1,797 real images, upscaled to 64×64 grayscale PNG so a row weighs about what a small
real image does) repeated `factor` times, saves each size with `save_to_disk`, then runs the same SFR-on job over
`load_from_disk(...)` of each size in a fresh process and reports its peak RSS. The job reads the same number of
batches whatever the size, so only per-row bookkeeping (row-id arrays, the sampler's permutation) may grow.

Two numbers per size: the peak *anonymous* resident memory (heap, tensors: what the process holds and cannot give
back), sampled every 5 ms, and the kernel's peak total RSS, which also counts pages of the memory-mapped Arrow files
that the process has touched; those are clean page cache that the kernel drops under memory pressure, which is what
lets a dataset larger than RAM work.

    python benchmarks/memory_scaling.py --factors 10 100 --workdir /tmp/memory_scaling
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


def memory_mb() -> dict[str, float]:
    """Resident memory now: anonymous (heap, tensors: what the process truly holds) and file-backed (mapped pages)."""
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("RssAnon", "RssFile", "VmRSS"):
                values[key] = int(line.split()[1]) / 1024
    return values


class PeakSampler(threading.Thread):
    """Samples anonymous RSS every few milliseconds (the kernel keeps a peak only for the total, VmHWM)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_anon = memory_mb()["RssAnon"]
        self.running = True

    def run(self):
        while self.running:
            self.peak_anon = max(self.peak_anon, memory_mb()["RssAnon"])
            time.sleep(0.005)


def build(workdir: Path, factor: int) -> Path:
    """`factor` copies of the digits as a `save_to_disk` folder (reused if already there)."""
    from datasets import concatenate_datasets

    folder = workdir / f"digits_x{factor}"
    if (folder / "dataset_info.json").is_file():
        return folder
    from PIL import Image

    from hf_unlearn import load_digits_dataset

    digits = load_digits_dataset()
    base = concatenate_datasets([digits["train"], digits["test"]])
    base = base.map(lambda row: {"image": row["image"].resize((64, 64), Image.BILINEAR)})
    concatenate_datasets([base] * factor).save_to_disk(str(folder), max_shard_size="200MB")
    return folder


def child(folder: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from datasets import load_from_disk

    from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
    from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier

    model = tiny_classifier("resnet", seed=0)
    baseline = memory_mb()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    data = load_from_disk(folder)
    split = ForgetRemainSplit.from_dataset(data, forget_classes=[3])
    config = UnlearnConfig(
        method="sfr_on",
        output_dir="",
        max_steps=steps,
        remain_steps_per_forget=1,
        per_device_train_batch_size=64,
        saliency_max_batches=4,
        logging_steps=10_000,
    )
    unlearner = Unlearner.from_pretrained(model, config, image_processor=digits_image_processor())
    unlearner.unlearn(split)
    sampler.running = False
    sampler.join()
    seconds = time.perf_counter() - start
    peak_total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    disk = sum(f.stat().st_size for f in Path(folder).glob("*.arrow")) / 2**20
    return {
        "rows": len(data),
        "arrow_on_disk_mb": round(disk, 1),
        "anon_before_data_mb": round(baseline["RssAnon"], 1),
        "peak_anon_mb": round(sampler.peak_anon, 1),
        "anon_growth_mb": round(sampler.peak_anon - baseline["RssAnon"], 1),
        "peak_total_rss_mb": round(peak_total, 1),
        "seconds": round(seconds, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workdir", default="/tmp/hf_unlearn_memory_scaling")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for factor in args.factors:
        folder = build(workdir, factor)
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1")
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), "--steps", str(args.steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append({"factor": factor, **json.loads(out.stdout.strip().splitlines()[-1])})
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
