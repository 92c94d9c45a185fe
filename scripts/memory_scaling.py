"""Peak memory of an unlearning run as the dataset grows: the data stays memory-mapped on disk, RAM stays flat.

Builds the bundled digits (1,797 real images, upscaled to 64×64 grayscale PNG so a row weighs about what a small
real image does) repeated `factor` times, saves each size with `save_to_disk`, then runs the same SFR-on job over
`load_from_disk(...)` of each size in a fresh process and reports its peak RSS. The job reads the same number of
batches whatever the size, so only per-row bookkeeping (row-id arrays, the sampler's permutation) may grow.

    python scripts/memory_scaling.py --factors 10 100 --workdir /tmp/memory_scaling
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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
    from hf_unlearn.models import digits_image_processor, tiny_classifier

    model = tiny_classifier("resnet", seed=0)
    baseline = rss_mb()
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    disk = sum(f.stat().st_size for f in Path(folder).glob("*.arrow")) / 2**20
    return {
        "rows": len(data),
        "disk_mb": round(disk, 1),
        "rss_before_data_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_minus_baseline_mb": round(peak - baseline, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "memory_mapped": type(data.data).__name__,
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
