"""`python -m hf_unlearn.benchmarks.world_t2i`: three concepts erased at once from the shape world's Stable Diffusion
(`hf_unlearn.worlds`, committed weights: the same model on every machine), judged by the world's judge on what the
erased model draws, against the hand-written remap loop of `benchmarks.text_to_image` at the same budget.

Concepts and prompts: `hf_unlearn.worlds.prompts`. The forget set holds rendered scenes captioned with the forget
prompts, the remain set scenes of the anchors and uncaptioned scenes; nothing else is shown during unlearning.
Measured per concept: the share of samples the judge names with the concept on explicit (forget) prompts, held-out
paraphrases and implicit prompts (lower: erased); the benign part kept (every other attribute the prompt states
still drawn: the object of "a red circle"); neighbours and unrelated prompts drawn right (judge accuracy) and the
MMD between the judge features of their samples before and after (same noise). Rows: `original`, `resampled` (the
original with other noise: the noise floor of every distance), `hand_remap` and the library's text-to-image
methods (`uce` among them: the closed-form edit). Validation seeds choose each row's grid point, report seeds are run
once with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
from accelerate.utils import set_seed
from datasets import Dataset, Features, Image, Value
from diffusers import StableDiffusionPipeline
from PIL import Image as PILImage

from ..concept import ConceptSplit
from ..config import UnlearnConfig
from ..metrics.samples import generate_samples
from ..unlearner import Unlearner
from ..utils import atomic_write_json, atomic_write_text
from ..worlds import models, scenes
from ..worlds.prompts import all_prompts, anchors
from .text_to_image import FLOOR, ORIGINAL, RESAMPLED, RETRAIN, hand_remap, methods_for_family
from .text_to_image import library_config as shared_library_config
from .world_scoring import _mean_std, chart, collateral, judge_samples, report_markdown, score

WORLD = Path(__file__).resolve().parents[2] / "benchmark_results" / "world"
# RT: the world's UNet retrained from scratch on scenes without the three concepts
# (`python -m hf_unlearn.worlds.train --retrain_without red,striped,triangle --output benchmark_results/world_rt`).
WORLD_RT = WORLD.with_name("world_rt")
UCE = "uce"  # a library method with no steps: its grid's `cycles` are ten times its `uce_preserve_scale`
# The 2026-12-05 run's grid (all / cross-attention × 40 / 120 cycles) chose cross-attention and 120 cycles for every
# trained row; this grid keeps cross-attention, adds its key/value projections, and doubles the longest budget.
GRID = {"train_modules": ("cross_attention", "cross_attention_kv"), "cycles": (120, 240)}
# The floor is the loop as a user writes it, on the cross-attention of ESD-x; `hand_remap_kv` is the same loop on the
# key/value projections only, to show what that choice alone gives.
FLOOR_KV = "hand_remap_kv"
FLOOR_MODULES = {FLOOR: ("cross_attention",), FLOOR_KV: ("cross_attention_kv",)}
# One validation seed: the CPU time of a second went to the report seeds (see docs/world.md).
VALIDATION_SEEDS, REPORT_SEEDS = (100,), (0, 1, 2, 3, 4)
# Settings of the default method run as extra rows, to find what its mask does here: off (γ 0: every weight moves, as
# the hand loop), and the Fisher of the guided prediction (the authors' SD option; s = the sampling guidance).
VARIANTS = {
    "sfr_on_remap_nomask": ("sfr_on_remap", {"mask_threshold": 0.0}),
    "sfr_on_remap_guided_fisher": ("sfr_on_remap", {"saliency_guidance_scale": 5.0}),
}
ERASED = 0.1  # a concept counts as erased on a seed when at most this share of its explicit samples shows it


@dataclass(frozen=True)
class Settings:
    """Sizes of the benchmark: data of the split, sampling, optimiser."""

    images_per_prompt: int = 8
    samples_per_prompt: int = 6
    inference_steps: int = 10
    guidance_scale: float = 5.0
    learning_rate: float = 1e-3
    batch_size: int = 4


QUICK = Settings(images_per_prompt=2, samples_per_prompt=2, inference_steps=4)


def _scenes(captions: list[str], n: int, seed: int) -> Dataset:
    """`n` rendered scenes per caption, the attributes it does not state drawn at random (uncaptioned: any scene)."""
    rng = np.random.default_rng(seed)
    rows = []
    for caption in captions:
        for _ in range(n):
            attributes = {**scenes.sample_attributes(rng), **scenes.stated(caption)}
            rows.append((caption, PILImage.fromarray(scenes.render(attributes, rng))))
    return Dataset.from_dict(
        {"image": [im for _, im in rows], "text": [c for c, _ in rows]},
        features=Features({"image": Image(), "text": Value("string")}),
    )


def concept_split(seed: int, n: int) -> ConceptSplit:
    """Forget: scenes of every forget prompt, each remapped to its anchor; remain: scenes of the anchors and as many
    uncaptioned scenes as anchors (so guidance keeps its unconditional prediction)."""
    table = anchors()
    kept = list(dict.fromkeys(table.values()))
    return ConceptSplit(
        forget_dataset=_scenes(list(table), n, seed + 1),
        remain_dataset=_scenes([*kept, *[""] * len(kept)], n, seed + 2),
        anchor_prompts=table,
    )


def _load(folder) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Benchmark:
    """Loads the committed world, runs methods, samples and judges; one JSON file per run under `output/runs`."""

    def __init__(self, output, world=WORLD, settings: Settings = Settings(), resume: bool = True, rt_world=WORLD_RT):
        self.output, self.world, self.settings, self.resume = Path(output), Path(world), settings, resume
        self.rt_world = Path(rt_world)
        self.judge = models.Judge.load(self.world)
        self._before: dict[int, tuple] = {}

    def samples(self, pipe, seed: int, offset: int = 0) -> tuple:
        s = self.settings
        rows = generate_samples(
            pipe,
            all_prompts(),
            seed=seed + offset,
            num_images_per_prompt=s.samples_per_prompt,
            num_inference_steps=s.inference_steps,
            guidance_scale=s.guidance_scale,
        )
        return judge_samples(self.judge, rows)

    def before(self, seed: int) -> tuple:
        if seed not in self._before:
            self._before[seed] = self.samples(_load(self.world / "pipeline"), seed)
        return self._before[seed]

    def run(self, phase: str, method: str, seed: int, train_modules: str, cycles: int) -> dict:
        path = self.output / "runs" / f"{phase}-s{seed}-{method}-{train_modules}-{cycles}.json"
        if self.resume and path.exists():
            return json.loads(path.read_text())
        set_seed(seed)
        before, work, s = self.before(seed), None, self.settings
        if method == ORIGINAL:
            after = before
        elif method == RESAMPLED:
            after = self.samples(_load(self.world / "pipeline"), seed, offset=1000)
        elif method == RETRAIN:  # the original's noise, drawn by the model that never saw the concepts
            after = self.samples(_load(self.rt_world / "pipeline"), seed)
        elif method in (FLOOR, FLOOR_KV):
            pipe = _load(self.world / "pipeline")
            split = concept_split(seed, s.images_per_prompt)
            split.materialize(pipe, resolution=scenes.SIZE, cache_dir=str(self.output / "tmp"))
            work = hand_remap(pipe, split, cycles=cycles, train_modules=train_modules, settings=s, seed=seed)
            after = self.samples(pipe, seed)
        else:
            after, work = self._library(method, seed, train_modules, cycles)
        row = {"phase": phase, "method": method, "seed": seed, "train_modules": train_modules, "cycles": cycles}
        row.update(score(before, after), work=work, settings=asdict(s))
        atomic_write_json(path, row)
        return row

    def _library(self, method: str, seed: int, train_modules: str, cycles: int):
        s = self.settings
        config = library_config(method, seed, train_modules, cycles, s, self.output / "tmp" / f"run-{os.getpid()}")
        method = config.method
        unlearner = Unlearner.from_pretrained(str(self.world / "pipeline"), config)
        result = unlearner.unlearn(method_split(method, seed, s))
        work = dict(result.work)
        if unlearner.mask is not None:
            work.update(mask_fraction=result.mask_fraction, mask_by_module=mask_by_module(unlearner.mask))
        return self.samples(unlearner.family.pipeline, seed), work


def method_split(method: str, seed: int, s: Settings) -> ConceptSplit:
    """The benchmark's split as `method` takes it: selective amnesia's replay draws its own remain images."""
    split = concept_split(seed, s.images_per_prompt)
    if method == "selective_amnesia":
        kept = list(dict.fromkeys(anchors().values()))
        split = replace(split, remain_dataset=None, remain_prompts=kept, num_inference_steps=s.inference_steps)
    return split


def library_config(method: str, seed: int, train_modules: str, cycles: int, s: Settings, output_dir) -> UnlearnConfig:
    """The config of a library row (or variant) at a grid point (`text_to_image.library_config` with this
    benchmark's variants); `uce` takes no steps, its `cycles` set its preservation scale. `output_dir`: per process,
    since rows may run side by side."""
    config = shared_library_config(method, seed, train_modules, cycles, s, output_dir, variants=VARIANTS)
    if config.method == UCE:
        config = replace(config, max_steps=1, uce_preserve_scale=cycles / 10)
    return config


MODULE_GROUPS = {"cross-attention k/v": (".attn2.to_k", ".attn2.to_v"), "cross-attention q/out": (".attn2.",)}
MODULE_GROUPS.update({"self-attention": (".attn1.",), "resnets": (".resnets.",)})


def mask_by_module(mask: dict) -> dict[str, float]:
    """The share of each module group's weights that a saliency mask lets the forget step move."""
    kept: dict[str, list[float]] = {}
    for name, m in mask.items():
        group = next((g for g, keys in MODULE_GROUPS.items() if any(k in name for k in keys)), "other")
        kept.setdefault(group, [0.0, 0.0])
        kept[group][0] += float(m.float().sum())
        kept[group][1] += m.numel()
    return {g: k / max(n, 1) for g, (k, n) in kept.items()}


def choose(rows: list[dict]) -> dict:
    """The grid point whose validation runs erase every concept (explicit prompts) with the least collateral; when
    none does, the one with the lowest explicit rate (ties: least collateral)."""
    points: dict[tuple, list[dict]] = {}
    for row in rows:
        points.setdefault((row["train_modules"], row["cycles"]), []).append(row)
    erasing = [k for k, rs in points.items() if all(r["max_explicit_rate"] <= ERASED for r in rs)]
    cost = lambda k: _mean_std(points[k], collateral)[0]  # noqa: E731
    if erasing:
        best = min(erasing, key=cost)
    else:
        best = min(points, key=lambda k: (_mean_std(points[k], lambda r: r["explicit_rate"])[0], cost(k)))
    return {"train_modules": best[0], "cycles": best[1], "erases_all": bool(erasing)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_unlearn.benchmarks.world_t2i", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", default="benchmark_results/world_t2i", help="Folder for runs and the report.")
    parser.add_argument("--world", default=str(WORLD), help="The trained world (`python -m hf_unlearn.worlds.train`).")
    parser.add_argument("--rt_world", default=str(WORLD_RT), help="RT: the world retrained without the concepts.")
    parser.add_argument("--methods", default=None, help="Comma-separated rows (default: every listed one).")
    parser.add_argument("--phase", choices=("validate", "report", "all"), default="all")
    parser.add_argument("--resume", action="store_true", help="Skip runs whose result file exists.")
    parser.add_argument("--quick", action="store_true", help="Seconds-long check: tiny sizes, 1 seed, 1 grid point.")
    parser.add_argument(
        "--cycles", default=None, help="Comma-separated budgets of the grid for these rows (default: 120,240)."
    )
    parser.add_argument("--report_seeds", default=None, help="Comma-separated report seeds (default: 0,1,2,3,4).")
    args = parser.parse_args(argv)
    choices = [FLOOR, FLOOR_KV, *methods_for_family(), *VARIANTS]
    methods = args.methods.split(",") if args.methods else choices
    unknown = [m for m in methods if m not in choices]
    if unknown:
        parser.error(f"--methods: {unknown} are not rows of this benchmark; choose from {choices}")
    bench = Benchmark(args.output, args.world, QUICK if args.quick else Settings(), args.resume, args.rt_world)
    references = (
        (ORIGINAL, RESAMPLED, RETRAIN) if (Path(args.rt_world) / "pipeline").is_dir() else (ORIGINAL, RESAMPLED)
    )
    grid = {"train_modules": ("cross_attention",), "cycles": (4,)} if args.quick else dict(GRID)
    if args.cycles:
        grid["cycles"] = tuple(int(c) for c in args.cycles.split(","))
    validation, report = ((7,), (8,)) if args.quick else (VALIDATION_SEEDS, REPORT_SEEDS)
    if args.report_seeds:
        report = tuple(int(seed) for seed in args.report_seeds.split(","))
    selection_path = Path(args.output) / "selection.json"
    selection = json.loads(selection_path.read_text()) if selection_path.exists() else {}
    if args.phase in ("validate", "all"):
        for method in methods:
            modules, cycles_grid = grid.values()
            if method == UCE:  # no steps: its "cycles" are ten times the preservation scale
                modules, cycles_grid = ("cross_attention_kv",), (1, 10)
            elif method in (FLOOR, FLOOR_KV):
                modules = grid["train_modules"][:1] if args.quick else FLOOR_MODULES[method]
            rows = [
                bench.run("validate", method, seed, m, cycles)
                for m in modules
                for cycles in cycles_grid
                for seed in validation
            ]
            chosen = {**choose(rows), "grid": {"train_modules": list(modules), "cycles": list(cycles_grid)}}
            print(f"validate {method}: {chosen}", flush=True)
            # Re-read: other rows' processes write their choices into the same file.
            selection = json.loads(selection_path.read_text()) if selection_path.exists() else {}
            selection[method] = chosen
            atomic_write_json(selection_path, selection)
    if args.phase in ("report", "all"):
        rows = []
        for seed in report:
            rows += [bench.run("report", ref, seed, "all", 0) for ref in references]
            for method in [m for m in methods if m in selection]:
                chosen = selection[method]
                rows.append(bench.run("report", method, seed, chosen["train_modules"], chosen["cycles"]))
        atomic_write_json(Path(args.output) / "results.json", {"rows": rows, "selection": selection})
        atomic_write_text(Path(args.output) / "report.md", report_markdown(rows, selection))
        chart(rows, Path(args.output) / "results.png")
        print(report_markdown(rows, selection))
    shutil.rmtree(Path(args.output) / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
