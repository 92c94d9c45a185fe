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
from diffusers import UNet2DModel

from hf_unlearn import UnlearnConfig, Unlearner
from hf_unlearn.data import ForgetRemainSplit, TrainingSet, load_digits_dataset
from hf_unlearn.demos import DiffusionDemoSettings, _class_samples, _judged
from hf_unlearn.metrics.generation import Judge
from hf_unlearn.tiny.classifiers import RECIPES as CLASSIFIER_RECIPES
from hf_unlearn.tiny.classifiers import TrainingRecipe, tiny_classifier, train_classifier
from hf_unlearn.tiny.diffusion import RECIPES, tiny_scheduler
from hf_unlearn.utils import atomic_write_json

FORGET_CLASS = 3
SAMPLING = DiffusionDemoSettings()  # 20 samples per class, DDIM 10 steps, guidance 2


def unet(widths: tuple[int, ...], seed: int) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=widths, layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=11,
    )  # fmt: skip


def run(widths, seed: int, train, judge, tmp: Path) -> dict:
    recipe = RECIPES["unet"]
    config = UnlearnConfig(
        method="retrain", family="class_conditional_diffusion", retrain_init="config", seed=seed,
        max_steps=recipe["max_steps"], learning_rate=recipe["learning_rate"],
        per_device_train_batch_size=recipe["batch"], max_grad_norm=1.0, output_dir="", logging_steps=100,
    )  # fmt: skip
    original = Unlearner.from_pretrained(unet(widths, seed), config, scheduler=tiny_scheduler())
    original.unlearn(TrainingSet(train))
    folder = tmp / f"original-s{seed}"
    original.family.save_pretrained(original.model, str(folder))
    before = _judged(judge, _class_samples(original, SAMPLING, 0), FORGET_CLASS, SAMPLING.samples_per_class)
    erased = Unlearner.from_pretrained(str(folder), UnlearnConfig(seed=seed, output_dir=str(tmp / f"run-s{seed}")))
    split = ForgetRemainSplit.from_dataset(train, forget_classes=[FORGET_CLASS])
    set_seed(seed)
    start = time.perf_counter()
    erased.unlearn(split)
    after = _judged(judge, _class_samples(erased, SAMPLING, 0), FORGET_CLASS, SAMPLING.samples_per_class)
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
    recipe = TrainingRecipe(300, CLASSIFIER_RECIPES["resnet"].learning_rate)
    judge = Judge(train_classifier(tiny_classifier("resnet", seed=0), train, recipe, seed=0).model, 16)
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
