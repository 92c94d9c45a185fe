"""`hf-unlearn benchmark-diffusion`: forget one digit class in a tiny class-conditional UNet2DModel (8×8) and a tiny
DiT (16×16) trained on scikit-learn's bundled digits, against retraining without the class (RT, two seeds).

Every trained model and every scored run is one file under `--output`, written atomically and skipped when present,
so an interrupted run resumes where it stopped. `--quick` is a seconds-long smoke run of the whole path.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from accelerate.utils import set_seed

from ..config import UnlearnConfig
from ..data import ForgetRemainSplit, load_digits_dataset
from ..families import get_family_class
from ..methods import get_method
from ..metrics.generation import Judge, generation_metrics, histogram_kl
from ..tiny.classifiers import RECIPES as CLASSIFIER_RECIPES
from ..tiny.classifiers import TrainingRecipe, tiny_classifier, train_classifier
from ..tiny.diffusion import RECIPES, train_diffusion
from ..unlearner import DivergenceError, Unlearner
from ..utils import atomic_directory, atomic_write_json, atomic_write_text

METHODS = ("sfr_on", "sfr_on_remap", "gradient_ascent", "random_label", "salun", "selective_amnesia", "esd")


class DiffusionBenchmark:
    """State shared by the runs of one benchmark: data, judge, cached models, and the result files."""

    def __init__(self, args):
        self.args = args
        self.output = Path(args.output)
        ds = load_digits_dataset()
        self.train, self.test = ds["train"], ds["test"]
        self.split = ForgetRemainSplit.from_dataset(
            self.train, forget_classes=[args.forget_class], test_dataset=self.test
        )
        self.num_classes = 10
        self._judge = None
        self._rt_hist: dict[str, np.ndarray] = {}

    # Cached artefacts
    def judge(self):
        from transformers import AutoModelForImageClassification  # noqa: PLC0415

        if self._judge is None:
            folder = self.output / "models" / "judge"
            if not (folder / "config.json").exists():
                recipe = CLASSIFIER_RECIPES["resnet"]
                if self.args.quick:
                    recipe = TrainingRecipe(100, recipe.learning_rate)
                trained = train_classifier(tiny_classifier("resnet", seed=0), self.train, recipe, seed=0)
                with atomic_directory(folder) as tmp:
                    trained.model.save_pretrained(tmp, safe_serialization=True)
            model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True)
            self._judge = Judge(model, image_size=16)
        return self._judge

    def reference(self, kind: str, name: str, seed: int) -> Path:
        """The folder of `original` (all rows) or `retrain` (remain rows) trained with `seed`; trained if missing."""
        folder = self.output / "models" / kind / f"{name}-s{seed}"
        if not (folder / "timing.json").exists():
            data = self.train if name == "original" else self.split.remain
            recipe = dict(RECIPES[kind])
            if self.args.train_steps:
                recipe["max_steps"] = self.args.train_steps
            trained = train_diffusion(kind, data, seed=seed, **recipe)
            with atomic_directory(folder) as tmp:
                trained.family.save_pretrained(trained.model, tmp)
                atomic_write_json(Path(tmp) / "timing.json", {"train_s": trained.result.runtime_s, **recipe})
        return folder

    def real_remain(self, family) -> torch.Tensor:
        rows = self.split.test_remain if self.args.fid_reference == "test" else self.split.remain
        images = [row["image"] for row in rows]
        return (family.pixel_values(images) + 1) / 2

    # Scoring
    def score(self, kind: str, folder: Path, sample_seed: int, grid: Optional[str] = None) -> dict:
        family = get_family_class("class_conditional_diffusion").from_pretrained(str(folder), UnlearnConfig())
        family.model.eval()
        pipe = family.pipeline()
        from diffusers import DDIMScheduler  # noqa: PLC0415

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        a = self.args
        return generation_metrics(
            pipe,
            self.judge(),
            [a.forget_class],
            self.real_remain(family),
            num_classes=self.num_classes,
            samples_per_class=a.samples_per_class,
            guidance_scale=a.guidance_scale,
            num_inference_steps=a.inference_steps,
            seed=sample_seed,
            grid_path=grid,
            reference_histogram=self._rt_hist.get(kind),
        )

    def result(self, kind: str, key: str, compute) -> dict:
        """The stored result `key` of `kind`, or `compute()` written atomically (resume: finished runs are skipped)."""
        file = self.output / "results" / kind / f"{key}.json"
        if file.exists():
            return json.loads(file.read_text())
        value = compute()
        atomic_write_json(file, value)
        return value

    def references(self, kind: str) -> None:
        a = self.args
        original = self.reference(kind, "original", 0)
        for i in range(a.fid_seeds):
            self.result(
                kind,
                f"original-e{i}",
                lambda i=i: {
                    "name": "original",
                    "sample_seed": 1000 + i,
                    **self.score(
                        kind,
                        original,
                        1000 + i,
                        str(self.output / "grids" / kind / "original.png") if i == 0 else None,
                    ),
                },
            )
        rts = []
        for seed in a.seeds:
            folder = self.reference(kind, "retrain", seed)
            rts.append(
                self.result(
                    kind,
                    f"retrain-s{seed}",
                    lambda s=seed, f=folder: {
                        "name": "retrain",
                        "seed": s,
                        "train_s": json.loads((f / "timing.json").read_text())["train_s"],
                        **self.score(kind, f, s, str(self.output / "grids" / kind / f"retrain-s{s}.png")),
                    },
                )
            )
        self._rt_hist[kind] = np.sum([r["forget_histogram"] for r in rts], axis=0)

    def unlearn(self, kind: str, method: str, seed: int, budget: int) -> dict:
        original = self.reference(kind, "original", 0)

        def compute():
            set_seed(seed)
            folder = self.output / "tmp" / f"{kind}-{method}-s{seed}-b{budget}"
            config = UnlearnConfig(
                method=method,
                seed=seed,
                max_steps=budget,
                output_dir=str(folder / "run"),
                per_device_train_batch_size=self.args.batch_size,
            )
            unlearner = Unlearner.from_pretrained(str(original), config)
            try:
                result = unlearner.unlearn(self.split)
            except DivergenceError as err:
                return {"name": method, "seed": seed, "budget": budget, "diverged": str(err)}
            unlearner.family.save_pretrained(unlearner.model, folder / "model")
            grid = (
                str(self.output / "grids" / kind / f"{method}-b{budget}.png") if seed == self.args.seeds[0] else None
            )
            metrics = self.score(kind, folder / "model", seed, grid)
            return {
                "name": method,
                "seed": seed,
                "budget": budget,
                "runtime_s": result.runtime_s,
                "saliency_s": result.saliency_runtime_s,
                "mask_fraction": result.mask_fraction,
                **metrics,
            }

        return self.result(kind, f"{method}-s{seed}-b{budget}", compute)


def _mean_std(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _row(label: str, runs: list[dict], steps: str, time_key: str, fid0: float) -> str:
    ok = [r for r in runs if "diverged" not in r]
    if not runs:
        return f"| {label} | not run | | | | | | {steps} | |"
    if not ok:
        return f"| {label} | diverged ({len(runs)} runs) | | | | | | {steps} | |"
    cells = [
        _mean_std([r["FA"] for r in ok], 1, 100),
        _mean_std([r.get("hist_kl") for r in ok], 2),
        _mean_std([r["remain_acc"] for r in ok], 1, 100),
        _mean_std([r["FID"] for r in ok], 2),
        f"{(np.mean([r['FID'] for r in ok]) / fid0 - 1) * 100:+.0f}%",
    ]
    return (
        f"| {label} | " + " | ".join(cells) + f" | {len(ok)}/{len(runs)} | {steps} | "
        f"{_mean_std([r.get(time_key) for r in ok], 1)} |"
    )


def _noise_floor(retrains: list[dict]) -> list[str]:
    """RT's seed-to-seed spread (std over its seeds): how far two retrainings differ, the floor of every column."""
    ok = [r for r in retrains if "diverged" not in r]
    if len(ok) < 2:
        return []
    std = lambda key, scale=1.0: float(np.std([r[key] * scale for r in ok], ddof=1))  # noqa: E731
    fids = [r["FID"] for r in ok]
    return [
        "",
        f"Noise floor, RT's seed-to-seed spread over {len(ok)} seeds (std): FA {std('FA', 100):.1f} points, "
        f"remaining acc {std('remain_acc', 100):.1f} points, FID {std('FID'):.2f} "
        f"({std('FID') / np.mean(fids) * 100:.0f}% of RT's mean); hist KL between RT seeds "
        f"{np.mean([r['hist_kl'] for r in ok]):.2f}.",
    ]


def report(bench: DiffusionBenchmark, results: dict[str, dict], command: str) -> str:
    """The markdown tables of the benchmark, from the stored results."""
    a = bench.args
    lines = [
        f"Command: `{command}`",
        "",
        f"Forget class {a.forget_class}; {a.samples_per_class} samples per class, DDIM {a.inference_steps} steps, "
        f"guidance {a.guidance_scale}; FID over kept classes against the real {a.fid_reference} images of those "
        "classes, features: the judge's penultimate layer (Inception weights cannot download here). "
        "FA and remaining-class accuracy in %, mean ± std over seeds; hist KL = KL(RT ‖ method) between the "
        "judge's class histograms of forget-class samples (RT pooled over its seeds; for RT rows, each seed "
        "against the other seeds: RT's own noise floor).",
        "",
    ]
    for kind, res in results.items():
        orig = res["original"]
        if not orig:
            continue
        fids = [r["FID"] for r in orig]
        noise = np.std(fids, ddof=1) / np.mean(fids) * 100 if len(fids) > 1 else float("nan")
        lines += [
            f"## {kind}",
            "",
            f"Original model FID over {len(fids)} sampling seeds: {_mean_std(fids, 2)} "
            f"(noise {noise:.1f}% of the mean).",
            *_noise_floor(res["retrain"]),
            "",
            "| model | FA % | hist KL to RT | remaining acc % | FID | FID vs original | runs ok | steps | time (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        fid0 = float(np.mean(fids))
        lines.append(_row("original", orig, "–", "none", fid0))
        rt_steps = str(a.train_steps or RECIPES[kind]["max_steps"])
        lines.append(_row("RT (retrain)", res["retrain"], rt_steps, "train_s", fid0))
        for budget in a.budgets:
            for method in a.methods:
                runs = res["methods"].get((method, budget), [])
                if runs:
                    lines.append(_row(method, runs, str(budget), "runtime_s", fid0))
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="hf-unlearn benchmark-diffusion", description=__doc__.splitlines()[0])
    p.add_argument("--output", default="benchmark_diffusion_output", help="Folder of models and results (resumable).")
    p.add_argument("--models", default="unet,dit", help="Comma-separated: unet, dit.")
    p.add_argument("--methods", default=",".join(METHODS), help="Comma-separated registered method names.")
    p.add_argument("--budgets", default="25,50,150", help="Comma-separated step budgets.")
    p.add_argument("--seeds", default="0,1", help="Comma-separated seeds (RT and methods).")
    p.add_argument("--forget-class", type=int, default=3)
    p.add_argument("--samples-per-class", type=int, default=100)
    p.add_argument("--inference-steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--fid-seeds", type=int, default=3, help="Sampling seeds of the original model (FID noise).")
    p.add_argument("--fid-reference", default="train", choices=["train", "test"], help="Real images FID compares to.")
    p.add_argument("--batch-size", type=int, default=64, help="Unlearning batch size.")
    p.add_argument("--train-steps", type=int, default=None, help="Override the training steps of original and RT.")
    p.add_argument("--threads", type=int, default=None, help="torch threads.")
    p.add_argument(
        "--report", default=None, help="Write the markdown report here (e.g. docs/benchmarks_diffusion.md)."
    )
    p.add_argument("--report-only", action="store_true", help="Only tabulate the results already stored.")
    p.add_argument("--quick", action="store_true", help="Smoke run: UNet, 2 methods, budget 3, tiny training.")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.methods, args.budgets, args.seeds = "unet", "sfr_on_remap,gradient_ascent", "3", "0"
        args.samples_per_class, args.inference_steps, args.fid_seeds = 6, 5, 2
        args.train_steps, args.batch_size = args.train_steps or 30, 32
    args.models = [m for m in args.models.split(",") if m]
    bad = [m for m in args.models if m not in RECIPES]
    if bad:
        p.error(f"--models has {bad}; choose from {list(RECIPES)}.")
    args.methods = [m for m in args.methods.split(",") if m]
    args.budgets = [int(b) for b in args.budgets.split(",") if b]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def run(args) -> dict[str, Any]:
    """Computes every missing result (seed-major, so an interrupted run has whole seeds), then collects them all."""
    for method in args.methods:
        get_method(method, "class_conditional_diffusion")  # fails before any training
    bench = DiffusionBenchmark(args)
    if not args.report_only:
        for kind in args.models:
            bench.references(kind)
            for seed in args.seeds:
                for budget in args.budgets:
                    for method in args.methods:
                        bench.unlearn(kind, method, seed, budget)
    return {"bench": bench, "results": {kind: collect(bench, kind) for kind in args.models}}


def collect(bench: DiffusionBenchmark, kind: str) -> dict:
    """The stored results of `kind` (missing runs are left out), with RT's own histogram KL as its noise floor."""
    a = bench.args

    def stored(key):
        file = bench.output / "results" / kind / f"{key}.json"
        return json.loads(file.read_text()) if file.exists() else None

    res = {
        "original": [r for i in range(a.fid_seeds) if (r := stored(f"original-e{i}"))],
        "retrain": [r for s in a.seeds if (r := stored(f"retrain-s{s}"))],
        "methods": {},
    }
    for budget in a.budgets:
        for method in a.methods:
            res["methods"][(method, budget)] = [r for s in a.seeds if (r := stored(f"{method}-s{s}-b{budget}"))]
    if res["retrain"]:  # computed here, not when scored, so every row compares with the same pooled RT
        pooled = np.sum([r["forget_histogram"] for r in res["retrain"]], axis=0)
        for runs in res["methods"].values():
            for r in runs:
                if "forget_histogram" in r:
                    r["hist_kl"] = histogram_kl(pooled, r["forget_histogram"])
    if len(res["retrain"]) > 1:  # leave-one-out: each RT seed against the others, RT's own noise floor
        for i, r in enumerate(res["retrain"]):
            others = np.sum([o["forget_histogram"] for j, o in enumerate(res["retrain"]) if j != i], axis=0)
            r["hist_kl"] = histogram_kl(others, r["forget_histogram"])
    return res


def main(argv=None) -> int:
    start = time.perf_counter()
    argv = list(argv or [])
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run(args)
    shown = [a for a in argv if a != "--report-only"]
    if "--report" in shown:  # where the report goes is not part of the run
        i = shown.index("--report")
        shown = shown[:i] + shown[i + 2 :]
    command = "hf-unlearn benchmark-diffusion " + " ".join(shown)
    text = report(out["bench"], out["results"], command)
    print(text)
    if args.report:
        atomic_write_text(args.report, "# Diffusion benchmark (digits)\n\n" + text + "\n")
    print(f"done in {time.perf_counter() - start:.0f}s; results in {os.path.join(args.output, 'results')}")
    return 0
