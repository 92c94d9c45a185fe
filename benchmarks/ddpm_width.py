"""Issue 28's held-out DDPM: the class-conditional default (`method=None`: `sfr_on_remap`, its 150 cycles and every
other default) on digits UNets of a width the diffusion benchmark does not use, judged as the demo judges.

Each seed trains its own original: a class-conditional `UNet2DModel` with `--widths` block channels (the benchmark's
is 32,64), trained by the library's training loop with the benchmark's UNet recipe (400 steps, lr 2e-3, batch 128),
then erases class 3 with the family's defaults. The judge (a tiny ResNet, 300 steps, seed 0) names 20 DDIM samples per
class (10 steps, guidance 2) before and after: forget-class and remaining-class accuracy. One JSON per seed.

    OMP_NUM_THREADS=1 python benchmarks/ddpm_width.py --widths 48,96 --seeds 0,1,2 \\
        --output benchmark_results/ddpm_width
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed

from hf_unlearn import UnlearnConfig, Unlearner
from hf_unlearn.data import ForgetRemainSplit, load_digits_dataset
from hf_unlearn.demos import DiffusionDemoSettings, class_samples, digits_judge, judged
from hf_unlearn.tiny.diffusion import RECIPES, tiny_unet, train_diffusion
from hf_unlearn.utils import atomic_write_json

FORGET_CLASS = 3
SAMPLING = DiffusionDemoSettings()  # 20 samples per class, DDIM 10 steps, guidance 2


def run(widths, seed: int, train, judge, tmp: Path) -> dict:
    model = tiny_unet(seed=seed, widths=widths)
    original = train_diffusion("unet", train, seed=seed, model=model, **RECIPES["unet"])
    folder = tmp / f"original-s{seed}"
    original.family.save_pretrained(original.model, str(folder))
    before = judged(judge, class_samples(original, SAMPLING, 0), FORGET_CLASS, SAMPLING.samples_per_class)
    erased = Unlearner.from_pretrained(str(folder), UnlearnConfig(seed=seed, output_dir=str(tmp / f"run-s{seed}")))
    split = ForgetRemainSplit.from_dataset(train, forget_classes=[FORGET_CLASS])
    set_seed(seed)
    start = time.perf_counter()
    erased.unlearn(split)
    after = judged(judge, class_samples(erased, SAMPLING, 0), FORGET_CLASS, SAMPLING.samples_per_class)
    resolved = erased.config
    return {
        "widths": list(widths), "seed": seed, "method": resolved.method, "cycles": resolved.max_steps,
        "learning_rate": resolved.learning_rate, "before": before, "after": after,
        "unlearn_s": time.perf_counter() - start,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="48,96", help="Block channels of the UNet, comma-separated.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds (original training and erasure).")
    parser.add_argument("--output", default="benchmark_results/ddpm_width")
    args = parser.parse_args()
    torch.set_num_threads(1)
    widths = tuple(int(w) for w in args.widths.split(","))
    train = load_digits_dataset()["train"]
    judge = digits_judge(train, 300, 0)
    out = Path(args.output)
    for seed in (int(s) for s in args.seeds.split(",")):
        path = out / f"unet-{'x'.join(map(str, widths))}-s{seed}.json"
        if path.exists():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            record = run(widths, seed, train, judge, Path(tmp))
        atomic_write_json(path, record)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
