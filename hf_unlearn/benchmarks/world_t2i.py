"""`python -m hf_unlearn.benchmarks.world_t2i`: three concepts erased at once from the shape world's Stable Diffusion
(`hf_unlearn.worlds`, committed weights: the same model on every machine), judged by the world's judge on what the
erased model draws, against the hand-written remap loop of `benchmarks.text_to_image` at the same budget.

Concepts and prompts: `hf_unlearn.worlds.prompts`. The forget set holds rendered scenes captioned with the forget
prompts, the remain set scenes of the anchors and uncaptioned scenes; nothing else is shown during unlearning.
Measured per concept: the share of samples the judge names with the concept on explicit (forget) prompts, held-out
paraphrases and implicit prompts (lower: erased); the benign part kept (every other attribute the prompt states
still drawn: the object of "a red circle"); neighbours and unrelated prompts drawn right (judge accuracy) and the
MMD between the judge features of their samples before and after (same noise). Rows: `original`, `resampled` (the
original with other noise: the noise floor of every distance), `hand_remap`, `uce` (closed-form edit) and the
library's text-to-image methods. Validation seeds choose each row's grid point, report seeds are run once with it.
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
import torch
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
from ..worlds.prompts import CONCEPTS, GROUPS, UNRELATED, all_prompts, anchors, prompts_of
from .text_to_image import FLOOR, ORIGINAL, RESAMPLED, hand_remap, methods_for_family
from .world_uce import uce_edit

WORLD = Path(__file__).resolve().parents[2] / "benchmark_results" / "world"
UCE = "uce"
GRID = {"train_modules": ("all", "cross_attention"), "cycles": (40, 120)}
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


def _mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Squared MMD with an RBF kernel at the median pairwise distance of the pooled samples (biased estimate)."""
    z = np.concatenate([x, y])
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    k = np.exp(-d / max(np.median(d[d > 0]), 1e-12))
    n = len(x)
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())


def judge_samples(judge, rows: list[list]) -> tuple[list[list[dict]], np.ndarray]:
    """The judge's names and features of every sample: `(names per prompt, features (prompts, samples, 128))`."""
    flat = [im for row in rows for im in row]
    with torch.no_grad():
        features = judge.features(models.to_pixels(flat)).numpy()
    names = judge.name(flat)
    k = len(rows[0])
    return [names[i * k : (i + 1) * k] for i in range(len(rows))], features.reshape(len(rows), k, -1)


def score(before: tuple, after: tuple) -> dict:
    """Per concept and overall, from the judge's names and features of every prompt of [`all_prompts`].

    `*_right`: the judge names every attribute the prompt states. `*_kept`: the judge names each stated attribute
    as it named it in the original's sample of the same noise (collateral is a change, and the original draws some
    prompts wrong: a model that "fixes" them is not kept).
    """
    prompts = all_prompts()
    index = {p: i for i, p in enumerate(prompts)}
    names, features = after
    names0, features0 = before

    def right(prompt, skip=None):
        want = {k: v for k, v in scenes.stated(prompt).items() if k != skip}
        return float(np.mean([all(n[k] == v for k, v in want.items()) for n in names[index[prompt]]]))

    def kept(prompt):
        keys = scenes.stated(prompt)
        pairs = zip(names[index[prompt]], names0[index[prompt]])
        return float(np.mean([all(n[k] == n0[k] for k in keys) for n, n0 in pairs]))

    concepts = {}
    for concept, spec in CONCEPTS.items():
        key, value = spec["attribute"]
        rate = {
            g: float(np.mean([n[key] == value for p in prompts_of(spec, g) for n in names[index[p]]]))
            for g in ("explicit", "paraphrase", "implicit")
        }
        concepts[concept] = {
            **{f"{g}_rate": r for g, r in rate.items()},
            "benign_kept": float(np.mean([right(p, skip=key) for g in GROUPS[:3] for p in prompts_of(spec, g)])),
            "neighbours_right": float(np.mean([right(p) for p in spec["neighbours"]])),
            "neighbours_kept": float(np.mean([kept(p) for p in spec["neighbours"]])),
        }
    unrelated = [index[p] for p in UNRELATED]
    flat = lambda f: f[unrelated].reshape(-1, f.shape[-1])  # noqa: E731
    mean = lambda key: float(np.mean([c[key] for c in concepts.values()]))  # noqa: E731
    return {
        "concepts": concepts,
        "explicit_rate": mean("explicit_rate"),
        "implicit_rate": float(np.mean([(c["paraphrase_rate"] + c["implicit_rate"]) / 2 for c in concepts.values()])),
        "max_explicit_rate": max(c["explicit_rate"] for c in concepts.values()),
        "benign_kept": mean("benign_kept"),
        "neighbours_right": mean("neighbours_right"),
        "neighbours_kept": mean("neighbours_kept"),
        "unrelated_right": float(np.mean([right(p) for p in UNRELATED])),
        "unrelated_kept": float(np.mean([kept(p) for p in UNRELATED])),
        "unrelated_mmd": _mmd(flat(features0), flat(features)),
        "unrelated_feature_shift": float(np.linalg.norm(features[unrelated] - features0[unrelated], axis=-1).mean()),
    }


def _load(folder) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Benchmark:
    """Loads the committed world, runs methods, samples and judges; one JSON file per run under `output/runs`."""

    def __init__(self, output, world=WORLD, settings: Settings = Settings(), resume: bool = True):
        self.output, self.world, self.settings, self.resume = Path(output), Path(world), settings, resume
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
        elif method in (FLOOR, UCE):
            pipe = _load(self.world / "pipeline")
            split = concept_split(seed, s.images_per_prompt)
            if method == FLOOR:
                split.materialize(pipe, resolution=scenes.SIZE, cache_dir=str(self.output / "tmp"))
                work = hand_remap(pipe, split, cycles=cycles, train_modules=train_modules, settings=s, seed=seed)
            else:
                # UCE has no steps: its grid's `cycles` is ten times the preservation scale.
                work = uce_edit(pipe, anchors(), split.remain_dataset["text"], preserve_scale=cycles / 10)
            after = self.samples(pipe, seed)
        else:
            after, work = self._library(method, seed, train_modules, cycles)
        row = {"phase": phase, "method": method, "seed": seed, "train_modules": train_modules, "cycles": cycles}
        row.update(score(before, after), work=work, settings=asdict(s))
        atomic_write_json(path, row)
        return row

    def _library(self, method: str, seed: int, train_modules: str, cycles: int):
        s = self.settings
        method, overrides = VARIANTS.get(method, (method, {}))
        config = UnlearnConfig(
            **overrides,
            method=method,
            seed=seed,
            max_steps=cycles,
            learning_rate=s.learning_rate,
            per_device_train_batch_size=s.batch_size,
            lr_scheduler_type="constant",
            train_modules=train_modules,
            output_dir=str(self.output / "tmp" / "run"),
        )
        unlearner = Unlearner.from_pretrained(str(self.world / "pipeline"), config)
        split = concept_split(seed, s.images_per_prompt)
        if method == "selective_amnesia":  # replay: the model draws its own remain images
            kept = list(dict.fromkeys(anchors().values()))
            split = replace(split, remain_dataset=None, remain_prompts=kept, num_inference_steps=s.inference_steps)
        result = unlearner.unlearn(split)
        work = dict(result.work)
        if unlearner.mask is not None:
            work.update(mask_fraction=result.mask_fraction, mask_by_module=mask_by_module(unlearner.mask))
        return self.samples(unlearner.family.pipeline, seed), work


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


def _mean_std(rows: list[dict], key) -> tuple[float, float]:
    values = np.array([key(r) for r in rows], dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def collateral(row: dict) -> float:
    """One number for choosing: the share of guarded samples changed (benign part lost, neighbours and unrelated
    prompts judged otherwise than the original's), summed over the three."""
    return 3 - row["benign_kept"] - row["neighbours_kept"] - row["unrelated_kept"]


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


COLUMNS = {
    "explicit": lambda r: r["explicit_rate"],
    "paraphrase + implicit": lambda r: r["implicit_rate"],
    **{f"{c}: implicit": (lambda r, c=c: r["concepts"][c]["implicit_rate"]) for c in CONCEPTS},
    "benign kept": lambda r: r["benign_kept"],
    "neighbours kept": lambda r: r["neighbours_kept"],
    "unrelated kept": lambda r: r["unrelated_kept"],
    "neighbours right": lambda r: r["neighbours_right"],
    "unrelated right": lambda r: r["unrelated_right"],
}


def report_markdown(rows: list[dict], selection: dict[str, dict]) -> str:
    """One row per method at its chosen grid point (mean ± std over report seeds), the references first."""
    header = ["row", "chosen", "n", *COLUMNS, "unrelated MMD", "steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    references = (ORIGINAL, RESAMPLED, FLOOR)
    for method in [*references, *sorted(m for m in selection if m not in references)]:
        runs = [r for r in rows if r["method"] == method]
        if not runs:
            continue
        chosen = selection.get(method)
        cells = [method, "–" if chosen is None else f"{chosen['train_modules']}, {chosen['cycles']}", str(len(runs))]
        cells += ["{:.2f} ± {:.2f}".format(*_mean_std(runs, key)) for key in COLUMNS.values()]
        cells.append("{:.3f} ± {:.3f}".format(*_mean_std(runs, lambda r: r["unrelated_mmd"])))
        cells.append("–" if not runs[0]["work"] else str(runs[0]["work"].get("optimizer_steps", "–")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    """Erasure (concept rate, explicit and paraphrase + implicit) against collateral per row, mean of report seeds."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method]
        x = _mean_std(runs, collateral)[0] / 3
        for ax, key in zip(axes, ("explicit_rate", "implicit_rate")):
            ax.scatter(x, _mean_std(runs, lambda r, k=key: r[k])[0], s=18)
            ax.annotate(method, (x, _mean_std(runs, lambda r, k=key: r[k])[0]), fontsize=7)
    for ax, title in zip(axes, ("explicit prompts", "paraphrases + implicit prompts")):
        ax.set(xlabel="collateral: guarded samples changed", ylabel="concept rate (lower: erased)", title=title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_unlearn.benchmarks.world_t2i", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", default="benchmark_results/world_t2i", help="Folder for runs and the report.")
    parser.add_argument("--world", default=str(WORLD), help="The trained world (`python -m hf_unlearn.worlds.train`).")
    parser.add_argument("--methods", default=None, help="Comma-separated rows (default: every listed one).")
    parser.add_argument("--phase", choices=("validate", "report", "all"), default="all")
    parser.add_argument("--resume", action="store_true", help="Skip runs whose result file exists.")
    parser.add_argument("--quick", action="store_true", help="Seconds-long check: tiny sizes, 1 seed, 1 grid point.")
    args = parser.parse_args(argv)
    choices = [FLOOR, UCE, *methods_for_family(), *VARIANTS]
    methods = args.methods.split(",") if args.methods else choices
    unknown = [m for m in methods if m not in choices]
    if unknown:
        parser.error(f"--methods: {unknown} are not rows of this benchmark; choose from {choices}")
    bench = Benchmark(args.output, args.world, QUICK if args.quick else Settings(), resume=args.resume)
    grid = {"train_modules": ("cross_attention",), "cycles": (4,)} if args.quick else GRID
    validation, report = ((7,), (8,)) if args.quick else (VALIDATION_SEEDS, REPORT_SEEDS)
    selection_path = Path(args.output) / "selection.json"
    selection = json.loads(selection_path.read_text()) if selection_path.exists() else {}
    if args.phase in ("validate", "all"):
        for method in methods:
            modules, cycles_grid = (("cross_attention",), (1, 10)) if method == UCE else grid.values()
            rows = [
                bench.run("validate", method, seed, m, cycles)
                for m in modules
                for cycles in cycles_grid
                for seed in validation
            ]
            selection[method] = choose(rows)
            print(f"validate {method}: {selection[method]}", flush=True)
            atomic_write_json(selection_path, selection)
    if args.phase in ("report", "all"):
        rows = []
        for seed in report:
            rows += [bench.run("report", ref, seed, "all", 0) for ref in (ORIGINAL, RESAMPLED)]
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
