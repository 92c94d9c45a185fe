"""The classifier default with `stop_rule='held_out'` against the previous fixed budget and against doing nothing.

    OMP_NUM_THREADS=1 python benchmarks/default_rule.py [--part benchmark|heldout|all] [--seeds 0,1,2,3,4]
        [--settings vit-random-f0.1,...] [--output benchmark_results/default_rule]
    python benchmarks/default_rule.py --part validation-summary
    OMP_NUM_THREADS=1 python benchmarks/default_rule.py --part trace

- **benchmark**: the digits benchmark's ResNet and ViT (benchmark_results/models), class 3 and random rows at two
  forget sizes (half of the rows, the benchmark's, and a tenth; RT for the tenth is trained into
  benchmark_results/models as the benchmark does), on the report seeds;
- **heldout**: two architectures that were not used to choose anything: a wider BatchNorm ResNet (widths 32/64/128,
  two blocks per stage) on 32-pixel digits and a tiny ConvNeXt (widths 24/48) built from its config, trained here on
  digits with the benchmark's recipe (300 steps, lr 2e-3, batch 64), one original per seed (committed under
  `OUTPUT/models`; their RT models for random rows are trained here and not committed).

Rows: `original` (doing nothing), `RT, another seed` (RT trained with another seed: the noise floor), `default` (the
library default: `sfr_on_bound`, stop rule on), `fixed budget` (the same default with `stop_rule='none'`: the previous
default). One JSON per run under `OUTPUT/runs` (rerunning skips finished runs), then `OUTPUT/results-PART.md`.
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
from hf_unlearn.benchmarks.runner import SEED2_OFFSET, BenchmarkContext
from hf_unlearn.tiny.classifiers import TrainingRecipe, digits_image_processor, train_classifier
from hf_unlearn.utils import atomic_directory, atomic_write_json, atomic_write_text

RECIPES = {"resnet": TrainingRecipe(300, 2e-3, 64), "vit": TrainingRecipe(600, 2e-3, 64)}
HELD_OUT = {"wide_resnet32": 32, "convnext16": 16}  # architecture: image size
# A row is doing nothing with a reference model (`original`, or RT trained with another seed: the noise floor) or the
# default's config with these overrides.
ROWS = {
    "original": "original",
    "RT, another seed": "retrain_seed2",
    "default": {},
    "fixed budget": {"stop_rule": "none"},
}
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
        train_seed = seed + SEED2_OFFSET if name == "retrain_seed2" else seed
        make = lambda: held_out_model(self.model, train_seed)  # noqa: E731
        return trained(folder, make, data, self.recipe, train_seed, self.processor), folder, {}


def run(ctx, seed: int, row: str, output: Path) -> dict:
    path = output / "runs" / f"{ctx.tag}-s{seed}-{row.replace(' ', '_')}.json"
    if path.exists():
        return json.loads(path.read_text())
    split = ctx.split(seed)
    if isinstance(ROWS[row], str):
        model, _, _ = ctx.reference_model(seed, ROWS[row])
        unl = Unlearner.from_pretrained(model, UnlearnConfig(output_dir=""), image_processor=ctx.processor)
        steps, stop = 0, {}
    else:
        _, folder, _ = ctx.reference_model(seed, "original")
        config = UnlearnConfig(**{"method": "sfr_on_bound", "seed": seed, "output_dir": "", **ROWS[row]})
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


VARIANTS = {  # validation/<folder>: what the rule was when it ran (docs/benchmarks.md)
    "v1_rounds": "loss target, do no harm, up to 4 rounds",
    "v2_one_round": "loss target, do no harm, one round",
    "v3_attack": "attack target, do no harm (1 point), one round (the default)",
    "v3_attack_tolerance0.5": "attack target, do no harm (0.5 point), one round",
    "v3_attack_tolerance2.0": "attack target, do no harm (2 points), one round",
    "v4_attack_rounds": "attack target, do no harm, up to 4 rounds",
    "v5_attack_and_accuracy": "attack target and forget accuracy at most held-out accuracy, do no harm, one round",
}


def validation_summary(folder: Path) -> str:
    """Mean Avg.D of `default` per variant and random setting on the validation seeds, and `original`'s."""
    tags = ("resnet-random-f0.5", "resnet-random-f0.1", "vit-random-f0.5", "vit-random-f0.1")
    lines = ["| rule variant (validation seeds) | " + " | ".join(tags) + " | mean |", "|---" * (len(tags) + 2) + "|"]
    references = [("v3_attack", "original (doing nothing)", "original"), ("v3_attack", "fixed budget", "fixed budget")]
    for name, label, row in references + [(name, label, "default") for name, label in VARIANTS.items()]:
        runs = [json.loads(f.read_text()) for f in (folder / name / "runs").glob("*.json")]
        means = []
        for tag in tags:
            vals = [r["avg_d"] for r in runs if r["tag"] == tag and r["row"] == row]
            means.append((statistics.mean(vals), statistics.stdev(vals), len(vals)))
        cells = " | ".join(f"{m:.2f} ± {sd:.2f} (n={n})" for m, sd, n in means)
        lines.append(f"| {label} | {cells} | {statistics.mean(m for m, _, _ in means):.2f} |")
    return "\n".join(lines) + "\n"


# Diagnostic runs on a validation seed (vit/resnet, a tenth of the rows, seed 100): what each cycle does.
TRACES = {
    "vit-fixed_budget": ("vit", {"stop_rule": "none", "max_steps": 12}),
    "vit-forget_step_only": ("vit", {"stop_rule": "none", "max_steps": 2, "remain_steps_per_forget": 0}),
    "vit-remain_steps_only_finetune": ("vit", {"method": "finetune", "learning_rate": 3e-3, "max_steps": 12}),
    "vit-default": ("vit", {}),
    "resnet-fixed_budget": ("resnet", {"stop_rule": "none", "max_steps": 12}),
    "resnet-default": ("resnet", {}),
}


def trace(output: Path, seed: int = 100) -> None:
    """Per-cycle loss and accuracy on the forget, held-out and remain rows (at most 512 of each) of `TRACES`.

    Diagnostic only: it swaps the engine's stop rule for a wrapper that measures after every cycle (the rule, when
    the run has one, still decides), so the engine needs no tracing hook."""
    import hf_unlearn.unlearner as engine
    from hf_unlearn.stopping import HeldOutStop, _sample

    class Traced:
        def __init__(self, family, split, config):
            self.rule = HeldOutStop.build(family, split, config)
            self.total = self.rule.total if self.rule else config.max_steps
            self.sets = {"forget": split.forget, "held_out": split.test_dataset, "remain": split.remain}
            self.sets = {k: _sample(v, 512, seed + i) for i, (k, v) in enumerate(self.sets.items())}
            self.probe, self.rows = HeldOutStop(family, self.sets["forget"], None, config), []
            self.measure(family.model, 0, "start")

        @property
        def last(self):
            return self.rule.last

        def measure(self, model, cycles, action):
            row = {"cycle": cycles, "action": action}
            for name, data in self.sets.items():
                loss, accuracy = self.probe._loss_and_accuracy(model, data)
                row |= {f"{name} loss": f"{loss:.3f}", f"{name} acc": f"{accuracy:.1f}"}
            self.rows.append(row)

        def after_cycle(self, model, cycles):
            action = self.rule.after_cycle(model, cycles) if self.rule else "continue"
            self.measure(model, cycles, action)
            return action

    made = []
    engine.HeldOutStop = type("Build", (), {"build": staticmethod(lambda *a: made.append(Traced(*a)) or made[-1])})
    try:
        for name, (model, overrides) in TRACES.items():
            ctx = BenchmarkContext("benchmark_results", model, "random", RECIPES[model], forget_fraction=0.1)
            _, folder, _ = ctx.reference_model(seed, "original")
            config = UnlearnConfig(**{"method": "sfr_on_bound", "seed": seed, "output_dir": "", **overrides})
            Unlearner.from_pretrained(str(folder), config, image_processor=ctx.processor).unlearn(ctx.split(seed))
            rows = made[-1].rows
            text = f"{name}: {overrides}, {ctx.tag} seed {seed}\n\n| " + " | ".join(rows[0]) + " |\n"
            text += (
                "|---" * len(rows[0]) + "|\n" + "".join("| " + " | ".join(map(str, r.values())) + " |\n" for r in rows)
            )
            atomic_write_text(output / "traces" / f"{name}.md", text)
            print(text)
    finally:
        engine.HeldOutStop = HeldOutStop


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="all", choices=["benchmark", "heldout", "all", "validation-summary", "trace"])
    p.add_argument("--seeds", default="0,1,2,3,4", help="Benchmark seeds.")
    p.add_argument("--heldout-seeds", default="0,1,2")
    p.add_argument("--settings", default=None, help="Only these settings (tags, e.g. vit-random-f0.1).")
    p.add_argument("--models", default="benchmark_results")
    p.add_argument("--output", default="benchmark_results/default_rule")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    output = Path(args.output)
    if args.part == "validation-summary":  # the variants' runs under OUTPUT/validation (run with --seeds 100,101,102)
        text = validation_summary(output / "validation")
        atomic_write_text(output / "validation" / "summary.md", text)
        print(text, end="")
        return 0
    if args.part == "trace":
        trace(output)
        return 0
    contexts = []
    if args.part in ("benchmark", "all"):
        for model in ("resnet", "vit"):
            for scenario, fraction in (("class", 0.5), ("random", 0.5), ("random", 0.25), ("random", 0.1)):
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
