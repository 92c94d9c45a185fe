"""Relearning attack: fine-tune an unlearned model on a handful of forgotten rows and watch the forgotten behaviour
come back, step by step. Run on the retrained model (RT), which never saw those rows, the same attack gives the
reference: an erasure is as good as RT's curve, and worse where it recovers faster.

The fine-tuning is a short plain loop over the family's own per-sample loss (cross-entropy for classifiers, the noise
loss for diffusion models), so it works for every family and is the same loss the model was trained with.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from diffusers import DDIMScheduler

from ..families.base import ModelFamily
from ..finetune import finetune_steps
from ..metrics.generation import forget_accuracy, generate, predictions
from .judges import judge_scores

Measure = Callable[[torch.nn.Module], float]


@dataclass
class RelearnConfig:
    r"""Settings of [`relearn_attack`]."""

    num_rows: int = field(default=5, metadata={"help": "k: forget rows the attacker fine-tunes on."})
    steps: int = field(default=20, metadata={"help": "N: fine-tuning steps; the measure is taken after each."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the fine-tuning."})
    optim: str = field(default="adam", metadata={"help": "Optimizer: 'adam' or 'sgd' (no momentum)."})
    batch_size: Optional[int] = field(default=None, metadata={"help": "Rows per step; defaults to all k rows."})
    recover_threshold: float = field(
        default=0.5, metadata={"help": "Forget accuracy at which the behaviour counts as recovered."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the row draw, data order and diffusion noise."})
    inplace: bool = field(
        default=False, metadata={"help": "Fine-tune the family's model itself instead of a copy (saves memory)."}
    )

    def __post_init__(self):
        for name in ("num_rows", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; give a positive integer.")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"`batch_size` is {self.batch_size!r}; give a positive integer or leave it unset.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` is {self.learning_rate}; give a positive number.")
        if self.optim not in ("adam", "sgd"):
            raise ValueError(f"`optim` is '{self.optim}'; choose 'adam' or 'sgd'.")


@dataclass
class RelearnResult:
    r"""The relearning curve: `curve[0]` is the measure before fine-tuning, `curve[s]` after step `s`.

    `steps_to_recover` is the first `s` with `curve[s] >= recover_threshold` (0 when the model starts there, `None`
    when it never gets there within the steps); `rows` are the indices of the forget rows used for fine-tuning.
    """

    curve: list[float]
    losses: list[float]
    steps_to_recover: Optional[int]
    rows: list[int]
    measured_on: str
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relearn_attack(
    unlearned,
    forget,
    *,
    measure: Optional[Measure] = None,
    eval_dataset=None,
    config: Optional[RelearnConfig] = None,
) -> RelearnResult:
    r"""Fine-tunes an unlearned model on `k` forget rows for `N` steps and measures forget accuracy after each step.

    Args:
        unlearned ([`Unlearner`] or [`ModelFamily`]): the model to attack, with its family (what
            `Unlearner.from_pretrained(...)` gives; `.family` is used).
        forget (`datasets.Dataset`): the forget set, in the family's columns; `k` rows are drawn from it with
            `config.seed`.
        measure (`Callable[[nn.Module], float]`, *optional*): forget accuracy of a module, e.g. a judge's verdict on
            samples of the forgotten class ([`generated_forget_accuracy`]). Classifiers default to the accuracy on the
            forget rows not used for fine-tuning (or on `eval_dataset`).
        eval_dataset (`datasets.Dataset`, *optional*): the rows the default classifier measure scores.
        config ([`RelearnConfig`], *optional*): `num_rows` (k), `steps` (N), learning rate, optimizer, seed.

    Returns:
        [`RelearnResult`]: the curve, the losses, `steps_to_recover` and the rows used.
    """
    config = config or RelearnConfig()
    family = getattr(unlearned, "family", unlearned)
    if config.num_rows > len(forget):
        raise ValueError(
            f"`num_rows` (k) is {config.num_rows}, but the forget set has {len(forget)} rows; give at most "
            f"{len(forget)}."
        )
    if measure is not None and not callable(measure):
        raise ValueError("`measure` must be a callable from a model to its forget accuracy (a number).")
    order = np.random.default_rng(config.seed).permutation(len(forget))
    chosen, rest = sorted(order[: config.num_rows].tolist()), sorted(order[config.num_rows :].tolist())
    rows = forget.select(chosen)
    measured_on = "measure"
    if measure is None:
        if type(family).logits is ModelFamily.logits:  # no class predictions to score
            raise ValueError(
                f"`measure` is required for the {family.name} family: pass a callable from the model to its forget "
                "accuracy, e.g. `generated_forget_accuracy(family, judge, forget_classes=[3])`."
            )
        held = eval_dataset if eval_dataset is not None else forget.select(rest) if rest else rows
        measured_on = "eval_dataset" if eval_dataset is not None else "held-out forget rows" if rest else "k rows"
        measure = classifier_accuracy(family, held)
    module = family.model if config.inplace else copy.deepcopy(family.model)
    module.eval()
    curve = [_measured(measure, module)]  # also checks the measure before any weight changes
    losses = []
    run = finetune_steps(
        family,
        module,
        rows,
        steps=config.steps,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size or config.num_rows,
        seed=config.seed,
        optim=config.optim,
    )
    for loss in run:
        losses.append(loss)
        curve.append(_measured(measure, module))
    recovered = [s for s, value in enumerate(curve) if value >= config.recover_threshold]
    return RelearnResult(
        curve=curve,
        losses=losses,
        steps_to_recover=recovered[0] if recovered else None,
        rows=chosen,
        measured_on=measured_on,
        config=asdict(config),
    )


def _measured(measure: Measure, module) -> float:
    value = measure(module)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f"`measure` returned {value!r}; it must return the forget accuracy of the model as a finite number."
        )
    return value


def classifier_accuracy(family, dataset, batch_size: int = 512) -> Measure:
    """A measure: the share of `dataset`'s rows a classifier module predicts as their label (forget accuracy)."""
    loader = family.make_dataloader(dataset, batch_size=batch_size, shuffle=False, seed=0)

    @torch.no_grad()
    def measure(module) -> float:
        device = next(module.parameters()).device
        right = total = 0
        for batch in loader:
            logits = family.logits(module, {k: v.to(device) for k, v in batch.items()})
            right += int((logits.argmax(-1).cpu() == batch["labels"]).sum())
            total += len(batch["labels"])
        return right / total

    return measure


def generated_forget_accuracy(
    family,
    judge,
    forget_classes: list[int],
    *,
    samples: int = 50,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 25,
    seed: int = 0,
) -> Measure:
    """A measure for class-conditional diffusion: the share of samples generated for the forgotten classes that
    `judge` (a [`~hf_unlearn.metrics.generation.Judge`]) assigns to a forgotten class, same noise at every step.
    Samples are drawn with DDIM on the model's noise schedule, as the diffusion benchmark and generative replay draw
    them (a DDPM sampler strided to a few steps gives noise the judge cannot name)."""
    labels = [c for c in forget_classes for _ in range(samples)]

    def measure(module) -> float:
        pipe = family.pipeline(module)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        images = generate(
            pipe,
            labels,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            seed=seed,
        )
        return forget_accuracy(predictions(judge, images), forget_classes)

    return measure


def prompt_concept_rate(
    pipeline,
    prompts: list[str],
    judge,
    *,
    threshold: float = 0.5,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
) -> Measure:
    """A measure for text-to-image models: the share of images drawn from `prompts` (prompt `i` from seed `seed + i`,
    the same noise at every step) whose `judge` score reaches `threshold`, with the measured module as the UNet."""

    @torch.no_grad()
    def measure(module) -> float:
        unet, pipeline.unet = pipeline.unet, module
        try:
            images = [
                pipeline(
                    prompt,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    generator=torch.Generator().manual_seed(seed + i),
                ).images[0]
                for i, prompt in enumerate(prompts)
            ]
        finally:
            pipeline.unet = unet
        return float(np.mean([score >= threshold for score in judge_scores(judge, images)]))

    return measure


__all__ = [
    "RelearnConfig",
    "RelearnResult",
    "classifier_accuracy",
    "finetune_steps",
    "generated_forget_accuracy",
    "prompt_concept_rate",
    "relearn_attack",
]
