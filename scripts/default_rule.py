"""The classifier default with `stop_rule='held_out'` against the previous fixed budget and against doing nothing.

    OMP_NUM_THREADS=1 python scripts/default_rule.py [--part benchmark|heldout|all] [--seeds 0,1,2,3,4]
        [--settings vit-random-f0.1,...] [--output benchmark_results/default_rule]

- **benchmark**: the digits benchmark's ResNet and ViT (benchmark_results/models), class 3 and random rows at two
  forget sizes (half of the rows, the benchmark's, and a tenth; RT for the tenth is trained into
  benchmark_results/models as the benchmark does), on the report seeds;
- **heldout**: two architectures that were not used to choose anything: a wider BatchNorm ResNet (widths 32/64/128,
  two blocks per stage) on 32-pixel digits and a tiny ConvNeXt (widths 24/48) built from its config, trained here on
  digits with the benchmark's recipe (300 steps, lr 2e-3, batch 64), one original per seed (committed under
  `OUTPUT/models`; their RT models for random rows are trained here and not committed).

Rows: `original` (doing nothing), `default` (the library default: `sfr_on_bound`, stop rule on), `fixed budget` (the
same default with `stop_rule='none'`: the previous default). One JSON per run under `OUTPUT/runs` (rerunning skips
finished runs), then `OUTPUT/results.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification

from hf_unlearn import UnlearnConfig, Unlearner, load_digits_dataset
from hf_unlearn.benchmarks.runner import BenchmarkContext
from hf_unlearn.models import TrainingRecipe, digits_image_processor, train_classifier
from hf_unlearn.utils import atomic_directory, atomic_write_json, atomic_write_text

RECIPES = {"resnet": TrainingRecipe(300, 2e-3, 64), "vit": TrainingRecipe(600, 2e-3, 64)}
HELD_OUT = {"wide_resnet32": 32, "convnext16": 16}  # architecture: image size
ROWS = {"original": None, "default": {}, "fixed budget": {"stop_rule": "none"}}
KEYS = ("FA", "RA", "TA", "MIA", "avg_d", "steps")


def held_out_model(arch: str, seed: int):
    from transformers import ConvNextConfig, ConvNextForImageClassification, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    labels = {"id2label": {i: str(i) for i in range(10)}, "label2id": {str(i): i for i in range(10)}}
    if arch == "wide_resnet32":
        config = ResNetConfig(
            num_channels=1, embedding_size=32, hidden_sizes=[64, 128], depths=[2, 2], layer_type="basic",
            downsample_in_first_stage=False, num_labels=10, **labels,
        )  # fmt: skip
        return ResNetForImageClassification(config)
    config = ConvNextConfig(num_channels=1, patch_size=2, num_stages=2, hidden_sizes=[24, 48], depths=[2, 2],
                            num_labels=10, **labels)  # fmt: skip
    return ConvNextForImageClassification(config)


def trained(folder: Path, make, data, recipe, seed, processor):
    """A model trained with `recipe` on `data`, kept in `folder` (trained once)."""
    if not (folder / "config.json").exists():
        unl = train_classifier(make(), data, recipe, seed=seed, image_processor=processor)
        with atomic_directory(folder) as tmp:
            unl.model.save_pretrained(tmp, safe_serialization=True)
            processor.save_pretrained(tmp)
    return AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True).eval()


class HeldOutContext(BenchmarkContext):
    """A `BenchmarkContext` for an architecture outside the library's tiny ones (its own models and processor)."""

    def __init__(self, output, arch, scenario, fraction):
        super().__init__(output, arch, scenario, RECIPES["resnet"], forget_fraction=fraction)
        self.processor = digits_image_processor(HELD_OUT[arch])

    def reference_model(self, seed, name):
        split = self.split(seed)
        data = load_digits_dataset()["train"] if name == "original" else split.remain
        folder = self._model_dir(seed, name)
        make = lambda: held_out_model(self.model, seed)  # noqa: E731
        return trained(folder, make, data, self.recipe, seed, self.processor), folder, {}


def run(ctx, seed: int, row: str, output: Path) -> dict:
    path = output / "runs" / f"{ctx.tag}-s{seed}-{row.replace(' ', '_')}.json"
    if path.exists():
        return json.loads(path.read_text())
    split = ctx.split(seed)
    model, folder, _ = ctx.reference_model(seed, "original")
    if ROWS[row] is None:
        unl = Unlearner.from_pretrained(model, UnlearnConfig(output_dir=""), image_processor=ctx.processor)
        steps, stop = 0, {}
    else:
        config = UnlearnConfig(method="sfr_on_bound", seed=seed, output_dir="", **ROWS[row])
        unl = Unlearner.from_pretrained(str(folder), config, image_processor=ctx.processor)
        result = unl.unlearn(split)
        steps = result.steps
        stop = {k: v for k, v in result.history[-1].items() if k.startswith("stop_")}
    metrics = ctx.score(unl.family, unl.model, split, seed)
    record = {"tag": ctx.tag, "seed": seed, "row": row, **metrics, "steps": steps, **stop}
    record["num_forget"] = len(split.forget_indices)
    atomic_write_json(path, record)
    return record


def table(records: list[dict]) -> str:
    lines = ["| setting | row | seeds | FA | RA | TA | MIA | Avg.D | cycles |", "|---" * 9 + "|"]
    for tag in dict.fromkeys(r["tag"] for r in records):
        for row in ROWS:
            mine = [r for r in records if r["tag"] == tag and r["row"] == row]
            if not mine:
                continue
            cells = []
            for key in KEYS:
                vals = [float(r[key]) for r in mine if r.get(key) is not None]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.2f} ± {sd:.2f}" if vals else "–")
            lines.append(f"| {tag} | {row} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="all", choices=["benchmark", "heldout", "all"])
    p.add_argument("--seeds", default="0,1,2,3,4", help="Benchmark seeds.")
    p.add_argument("--heldout-seeds", default="0,1,2")
    p.add_argument("--settings", default=None, help="Only these settings (tags, e.g. vit-random-f0.1).")
    p.add_argument("--models", default="benchmark_results")
    p.add_argument("--output", default="benchmark_results/default_rule")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    output = Path(args.output)
    contexts = []
    if args.part in ("benchmark", "all"):
        for model in ("resnet", "vit"):
            for scenario, fraction in (("class", 0.5), ("random", 0.5), ("random", 0.1)):
                ctx = BenchmarkContext(args.models, model, scenario, RECIPES[model], forget_fraction=fraction)
                contexts.append((ctx, [int(s) for s in args.seeds.split(",")]))
    if args.part in ("heldout", "all"):
        for arch in HELD_OUT:
            for scenario in ("class", "random"):
                ctx = HeldOutContext(output, arch, scenario, 0.5)
                contexts.append((ctx, [int(s) for s in args.heldout_seeds.split(",")]))
    if args.settings:
        contexts = [(ctx, seeds) for ctx, seeds in contexts if ctx.tag in args.settings.split(",")]
    records = []
    for ctx, seeds in contexts:
        for seed in seeds:
            for row in ROWS:
                record = run(ctx, seed, row, output)
                print(f"{ctx.tag} s{seed} {row}: " + " ".join(f"{k}={record.get(k)}" for k in KEYS), flush=True)
                records.append(record)
    atomic_write_text(output / f"results-{args.part}.md", table(records) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
