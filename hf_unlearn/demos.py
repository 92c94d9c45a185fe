"""`hf-unlearn demo --family ...`: one offline demo per model family, each trained here from code in the package.

- `class_conditional_diffusion`: the diffusion benchmark's tiny 8×8 class-conditional `UNet2DModel`, trained briefly on
  scikit-learn's bundled digits, forgets one digit; a judge classifier (the benchmark's tiny ResNet) names the samples.
- `text_to_image`: the tiny Stable Diffusion pipeline of `hf_unlearn.tiny.colour` (one colour per prompt) forgets a
  concept prompt, remapped to an anchor prompt; colours show what each prompt draws.

Both erase through the public [`Unlearner`] with the family's default method, sample the same prompts or classes
with the same noise before and after, print what changed and save a labelled before/after grid. (The image classifier
demo, the default, lives in `hf_unlearn.cli.demo_main`.)
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from accelerate.utils import set_seed
from diffusers import DDIMScheduler
from PIL import Image, ImageDraw

from .concept import ConceptSplit
from .config import UnlearnConfig
from .data import ForgetRemainSplit, load_digits_dataset
from .families import get_family_class
from .methods import get_method
from .metrics.generation import Judge, generate, per_class_accuracy, predictions
from .metrics.samples import comparison_grid, generate_samples, mean_colours, pixel_arrays
from .tiny.classifiers import RECIPES as CLASSIFIER_RECIPES
from .tiny.classifiers import TrainingRecipe, tiny_classifier, train_classifier
from .tiny.colour import ANCHOR, CAPTIONS, CONCEPT, PALETTE, ColourJudge, colour_dataset, train_tiny_text_to_image
from .tiny.diffusion import RECIPES as DIFFUSION_RECIPES
from .tiny.diffusion import train_diffusion
from .unlearner import Unlearner
from .utils import apply_umask, atomic_save_image

FAMILIES = ("image_classifier", "class_conditional_diffusion", "text_to_image")
GRID_NAME = "samples_before_after.png"
_LABEL_CHAR_WIDTH = 6  # PIL's default bitmap font: about 6 px per character
_SHOWN = 4  # samples per row of the grid


class DemoArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line, `error: ...`, as every other command's (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class DiffusionDemoSettings:
    """Sizes of the class-conditional diffusion demo: the original UNet, its judge, the erasure and the sampling."""

    # The benchmark trains 400 steps at batch 128 and its judge 300 steps; these draw and judge digits in a fraction
    # of the time, which is what the demo can afford on a CPU.
    train_steps: int = 200
    train_batch: int = 64
    judge_steps: int = 150
    unlearn_steps: int = 30  # cycles (the benchmark's budgets: 25, 50, 150)
    unlearn_batch: int = 64
    samples_per_class: int = 20
    inference_steps: int = 10
    guidance_scale: float = 2.0
    train_rows: Optional[int] = None  # all of the digits training split


@dataclass(frozen=True)
class TextToImageDemoSettings:
    """Sizes of the text-to-image demo: the tiny model's training as `benchmarks/robustness.py` trains it, and a
    shorter erasure than that script's (60 cycles of 1 forget + 4 remain steps), with the family's 1 remain step per
    cycle."""

    vae_steps: int = 100
    unet_steps: int = 120
    unlearn_steps: int = 40
    learning_rate: float = 3e-3
    images_per_caption: int = 8
    samples_per_prompt: int = 4
    inference_steps: int = 10
    guidance_scale: float = 7.5


# `--quick` (hidden): a seconds-long run of the whole path, for the tests; its numbers are not results.
QUICK = {
    "class_conditional_diffusion": DiffusionDemoSettings(
        train_steps=60, train_batch=32, judge_steps=30, unlearn_steps=10, unlearn_batch=32, samples_per_class=4,
        inference_steps=5, train_rows=400,
    ),
    # The tiny text-to-image model trains as in the demo: with less training its prompts still share one colour.
    "text_to_image": TextToImageDemoSettings(
        unlearn_steps=30, images_per_caption=4, samples_per_prompt=2, inference_steps=4
    ),
}  # fmt: skip


def add_family_arguments(parser: argparse.ArgumentParser) -> None:
    """`--family`, and the hidden `--quick` of the tests."""
    parser.add_argument(
        "--family",
        default="image_classifier",
        choices=FAMILIES,
        help="Which model family to demo: a tiny digits classifier (default), a tiny class-conditional digits UNet "
        "forgetting `--forget-class`, or a tiny Stable Diffusion forgetting a prompt.",
    )
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)


def run_family_demo(args: argparse.Namespace) -> int:
    """Runs the demo of `args.family` (not the classifier) into `<args.output>/<family>`; prints what changed."""
    settings = QUICK[args.family] if args.quick else None
    output = os.path.join(args.output, args.family)
    threads = torch.get_num_threads()
    # These models are tiny: one thread runs them as fast as two, and many times faster when other jobs share the
    # cores (two threads then spin waiting for each other); the demos' numbers are measured on one thread.
    torch.set_num_threads(1)
    try:
        if args.family == "class_conditional_diffusion":
            diffusion_demo(
                output, forget_class=args.forget_class, seed=args.seed, method=args.method, settings=settings
            )
        else:
            text_to_image_demo(output, seed=args.seed, method=args.method, settings=settings)
    finally:
        torch.set_num_threads(threads)
    return 0


def _check_method(method: Optional[str], family: str) -> str:
    """The method's name (the family's default when unset); an unknown one fails here, before any training."""
    name = method or get_family_class(family).default_method
    get_method(name, family)
    return name


def _say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


# Grids
def labelled_grid(samples: dict, labels: list[str], path: str) -> Image.Image:
    """[`comparison_grid`] (one block of columns per model, named on top) with each row's label on its left."""
    grid = comparison_grid(samples, labels)
    tile_h = (grid.height - 14) // len(labels)  # comparison_grid's label band is 14 px
    margin = _LABEL_CHAR_WIDTH * max(len(label) for label in labels) + 8
    out = Image.new("RGB", (margin + grid.width, grid.height), "white")
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    for r, label in enumerate(labels):
        draw.text((4, 14 + r * tile_h + tile_h // 2 - 5), label, fill="black")
    atomic_save_image(out, path)
    return out


def _pil(images: torch.Tensor) -> list[Image.Image]:
    """Images in [0, 1], `(n, 1, h, w)`, as grayscale PIL images."""
    return [Image.fromarray((image[0].clamp(0, 1) * 255).round().byte().numpy()) for image in images]


# Class-conditional diffusion
def class_samples(unlearner: Unlearner, settings: DiffusionDemoSettings, seed: int) -> torch.Tensor:
    """`samples_per_class` samples of every class in [0, 1]; the same seed gives the same noise before and after."""
    pipe = unlearner.family.pipeline()
    # DDIM samples in a few steps what the DDPM sampler needs hundreds for (as the benchmark scores).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    labels = torch.arange(10).repeat_interleave(settings.samples_per_class).tolist()
    return generate(
        pipe,
        labels,
        guidance_scale=settings.guidance_scale,
        num_inference_steps=settings.inference_steps,
        seed=seed,
    )


def judged(judge: Judge, images: torch.Tensor, forget_class: int, per_class: int) -> dict:
    """The judge's accuracy on the forget class's samples and its mean accuracy on the other classes' samples."""
    labels = torch.arange(10).repeat_interleave(per_class)
    accuracy = per_class_accuracy(predictions(judge, images), labels)
    others = [accuracy[c] for c in range(10) if c != forget_class]
    return {"forget_acc": accuracy[forget_class], "remain_acc": float(np.mean(others))}


def _moved(before: torch.Tensor, after: torch.Tensor, rows: torch.Tensor) -> float:
    """RMS change (pixels in [0, 1]) of the samples in `rows` between two runs with the same noise."""
    return float((after[rows] - before[rows]).pow(2).mean().sqrt())


def digits_judge(train, steps: int, seed: int) -> Judge:
    """A tiny ResNet trained `steps` steps on the digits `train` rows, as a judge of 16-pixel samples."""
    recipe = TrainingRecipe(steps, CLASSIFIER_RECIPES["resnet"].learning_rate)
    return Judge(train_classifier(tiny_classifier("resnet", seed=seed), train, recipe, seed=seed).model, 16)


def train_digits_models(train, settings: DiffusionDemoSettings, seed: int, folder: str) -> Judge:
    """Trains the judge and the original UNet (saved to `folder` as a diffusers pipeline); returns the judge."""
    _say(f"Training a judge classifier (tiny ResNet, {settings.judge_steps} steps) on {len(train)} real digits...")
    judge = digits_judge(train, settings.judge_steps, seed)
    _say(f"Training a tiny class-conditional UNet2DModel ({settings.train_steps} steps) on the same digits...")
    lr = DIFFUSION_RECIPES["unet"]["learning_rate"]
    original = train_diffusion(
        "unet", train, seed=seed, max_steps=settings.train_steps, learning_rate=lr, batch=settings.train_batch
    )
    # Saved as a plain diffusers pipeline, as a user's own checkpoint would be, and loaded from there.
    original.family.save_pretrained(original.model, folder)
    apply_umask(folder, recursive=True)  # the libraries write weights 0600 (temporary files); a plain save is 0644
    return judge


def diffusion_demo(
    output: str,
    *,
    forget_class: int = 3,
    seed: int = 0,
    method: Optional[str] = None,
    settings: Optional[DiffusionDemoSettings] = None,
) -> dict:
    """Trains the tiny digits UNet and its judge, erases `forget_class`, prints and returns the judge's accuracies
    before and after and how far each class's samples moved; saves the grid and the unlearned pipeline in `output`."""
    settings = settings or DiffusionDemoSettings()
    if forget_class not in range(10):
        raise ValueError(f"`--forget-class` must be a digit 0-9, got {forget_class}.")
    method = _check_method(method, "class_conditional_diffusion")
    set_seed(seed)
    train = load_digits_dataset()["train"]
    if settings.train_rows:  # a stratified subset: every class keeps its share
        train = train.train_test_split(train_size=settings.train_rows, seed=seed, stratify_by_column="label")["train"]
    split = ForgetRemainSplit.from_dataset(train, forget_classes=[forget_class])
    judge = train_digits_models(train, settings, seed, os.path.join(output, "original"))
    config = UnlearnConfig(
        method=method,
        seed=seed,
        max_steps=settings.unlearn_steps,
        per_device_train_batch_size=settings.unlearn_batch,
        output_dir=os.path.join(output, "run"),
    )
    unlearner = Unlearner.from_pretrained(os.path.join(output, "original"), config)
    before = class_samples(unlearner, settings, seed)
    _say(f"Unlearning class {forget_class} with {method} ({settings.unlearn_steps} cycles)...")
    result = unlearner.unlearn(split)
    after = class_samples(unlearner, settings, seed)
    n = settings.samples_per_class
    scores = {"before": judged(judge, before, forget_class, n), "after": judged(judge, after, forget_class, n)}
    forget = torch.arange(10).repeat_interleave(n) == forget_class
    moved = {"forget": _moved(before, after, forget), "remain": _moved(before, after, ~forget)}
    grid = os.path.join(output, GRID_NAME)
    # The first few samples of every class, one row per class: before on the left, after on the right.
    rows = {
        k: [_pil(x[c * n : c * n + min(n, _SHOWN)]) for c in range(10)]
        for k, x in (("before", before), ("after", after))
    }
    labelled_grid(rows, [f"class {c}" for c in range(10)], grid)
    # The judge's scores of the samples before and after, for the card's before/after table (the family's FA and
    # remain_acc: one forgotten class, so its own accuracy is the share assigned to a forgotten class).
    card = {k: {"FA": s["forget_acc"], "remain_acc": s["remain_acc"]} for k, s in scores.items()}
    unlearner.metrics_before = card["before"]
    unlearner.record_metrics(card["after"])
    unlearner.save_pretrained(os.path.join(output, "unlearned"), overwrite=True)
    report = {"method": method, "runtime_s": result.runtime_s, **scores, "moved": moved, "grid": grid}
    _print_diffusion(report, forget_class, output)
    return report


def _print_diffusion(report: dict, forget_class: int, output: str) -> None:
    b, a, moved = report["before"], report["after"], report["moved"]
    _say(
        "| samples judged as their class | before | after |",
        "|---|---|---|",
        f"| class {forget_class} (forgotten) | {b['forget_acc']:.0%} | {a['forget_acc']:.0%} |",
        f"| other classes (mean) | {b['remain_acc']:.0%} | {a['remain_acc']:.0%} |",
        f"{report['method']} took {report['runtime_s']:.1f}s. Same noise before and after: class {forget_class}'s "
        f"samples moved {moved['forget']:.3f} (RMS, pixels in [0, 1]), the other classes' {moved['remain']:.3f} "
        f"(ratio {moved['remain'] / max(moved['forget'], 1e-12):.2f}).",
        f"Before/after grid: {report['grid']}; unlearned pipeline: {os.path.join(output, 'unlearned')}.",
    )


# Text-to-image


def _concept_split(settings: TextToImageDemoSettings, seed: int) -> ConceptSplit:
    """Forget: images captioned with the concept; remain: the other captions and uncaptioned images (classifier-free
    guidance pushes away from the uncaptioned prediction, so it must stay); the concept is remapped to the anchor."""
    n = settings.images_per_caption
    return ConceptSplit(
        forget_dataset=colour_dataset(n, seed=seed + 1, captions=[CONCEPT], unconditional=False),
        remain_dataset=colour_dataset(n, seed=seed + 1, captions=[c for c in CAPTIONS if c != CONCEPT]),
        anchor_prompts=[ANCHOR],
    )


def _t2i_scores(before: list, after: list) -> dict:
    """How far the concept's samples moved toward the anchor's original samples (the benchmark's `gap_closed`: the
    anchor's own samples may drift too, and the target is what the anchor drew), how far each prompt's samples moved
    at all, and what the colour judge names them."""
    colours = {"before": mean_colours(before), "after": mean_colours(after)}
    forget, anchor = CAPTIONS.index(CONCEPT), CAPTIONS.index(ANCHOR)
    target = colours["before"][anchor]
    gap = {k: float(np.linalg.norm(c[forget] - target, axis=-1).mean()) for k, c in colours.items()}
    # RMS per prompt, pixels in [0, 1]
    change = np.sqrt(((pixel_arrays(after) - pixel_arrays(before)) ** 2).mean(axis=(1, 2, 3, 4)))
    unrelated = [i for i in range(len(CAPTIONS)) if i not in (forget, anchor)]
    judge, anchor_judge = ColourJudge(PALETTE[forget]), ColourJudge(PALETTE[anchor])
    own = {i: ColourJudge(PALETTE[i]) for i in unrelated}
    return {
        "gap_to_anchor": gap,
        "gap_closed": 1 - gap["after"] / gap["before"],
        "moved": {CAPTIONS[i]: float(change[i]) for i in range(len(CAPTIONS))},
        "ratio": float(np.mean(change[unrelated]) / max(change[forget], 1e-12)),
        "concept_colour": {
            k: float(np.mean(judge(rows[forget]))) for k, rows in (("before", before), ("after", after))
        },
        "anchor_colour": {
            k: float(np.mean(anchor_judge(rows[forget]))) for k, rows in (("before", before), ("after", after))
        },
        "unrelated_own_colour": {
            k: float(np.mean([own[i](rows[i]) for i in unrelated]))
            for k, rows in (("before", before), ("after", after))
        },
    }


def text_to_image_demo(
    output: str, *, seed: int = 0, method: Optional[str] = None, settings: Optional[TextToImageDemoSettings] = None
) -> dict:
    """Trains the tiny colour Stable Diffusion, erases [`CONCEPT`] (remapped to [`ANCHOR`]), prints and returns how
    far its samples moved toward the anchor's against how far unrelated prompts' moved; saves the grid in `output`."""
    settings = settings or TextToImageDemoSettings()
    method = _check_method(method, "text_to_image")
    set_seed(seed)
    _say(f"Training a tiny Stable Diffusion pipeline (8×8, one colour per prompt) on the prompts {list(CAPTIONS)}...")
    folder = train_tiny_text_to_image(
        os.path.join(output, "original"), seed=seed, vae_steps=settings.vae_steps, unet_steps=settings.unet_steps
    )
    apply_umask(folder, recursive=True)  # the libraries write weights 0600 (temporary files)
    config = UnlearnConfig(
        method=method,
        seed=seed,
        max_steps=settings.unlearn_steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=4,
        lr_scheduler_type="constant",
        output_dir=os.path.join(output, "run"),
    )
    unlearner = Unlearner.from_pretrained(folder, config)
    call = {
        "seed": seed,
        "num_images_per_prompt": settings.samples_per_prompt,
        "num_inference_steps": settings.inference_steps,
        "guidance_scale": settings.guidance_scale,
    }
    before = generate_samples(unlearner.family.pipeline, list(CAPTIONS), **call)
    _say(f"Unlearning {CONCEPT!r} (remapped to {ANCHOR!r}) with {method} ({settings.unlearn_steps} cycles)...")
    result = unlearner.unlearn(_concept_split(settings, seed))
    after = generate_samples(unlearner.family.pipeline, list(CAPTIONS), **call)
    grid = os.path.join(output, GRID_NAME)
    labelled_grid({"before": before, "after": after}, list(CAPTIONS), grid)
    unlearner.save_pretrained(os.path.join(output, "unlearned"), overwrite=True)
    report = {"method": method, "runtime_s": result.runtime_s, **_t2i_scores(before, after), "grid": grid}
    _print_text_to_image(report, output)
    return report


def _print_text_to_image(report: dict, output: str) -> None:
    gap, moved = report["gap_to_anchor"], report["moved"]
    concept, anchor, own = report["concept_colour"], report["anchor_colour"], report["unrelated_own_colour"]
    unrelated = ", ".join(f"{p!r} {m:.3f}" for p, m in moved.items() if p not in (CONCEPT, ANCHOR))
    _say(
        f"| {CONCEPT!r} samples | before | after |",
        "|---|---|---|",
        f"| colour distance to the original {ANCHOR!r} samples (RGB 0-255) | {gap['before']:.1f} | "
        f"{gap['after']:.1f} |",
        f"| drawn in the concept's colour | {concept['before']:.0%} | {concept['after']:.0%} |",
        f"| drawn in the anchor's colour | {anchor['before']:.0%} | {anchor['after']:.0%} |",
        f"| unrelated prompts drawn in their own colour | {own['before']:.0%} | {own['after']:.0%} |",
        f"{report['method']} took {report['runtime_s']:.1f}s; the concept's samples moved "
        f"{report['gap_closed']:.0%} of the way to the anchor's.",
        f"Same noise before and after, RMS change (pixels in [0, 1]): {CONCEPT!r} {moved[CONCEPT]:.3f}; unrelated "
        f"prompts {unrelated} (ratio unrelated/forget {report['ratio']:.2f}).",
        f"Before/after grid: {report['grid']}; unlearned pipeline: {os.path.join(output, 'unlearned')}.",
    )
