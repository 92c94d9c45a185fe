"""Resurgence: fine-tune an erased model on unrelated data (the remain data, with the family's own loss) and measure
the forgotten concept again. Nothing of the concept is shown; a concept that comes back was hidden, not removed.

Works for every family: the fine-tuning is [`finetune_steps`] (the relearning attack's loop) on remain rows, and the
measure is a callable from the fine-tuned module to one success per unit: [`concept_units`] for text-to-image models
(the concept's prompts judged), [`class_units`] for class-conditional diffusion (samples of the forgotten classes
named by a classifier), [`forget_row_units`] for classifiers (forget rows predicted as their label).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from diffusers import DDIMScheduler

from ..metrics.generation import Judge as ClassJudge
from ..metrics.generation import generate, predictions
from .evalcard import AttackResult, EvalCard, prompt_digest, rates
from .inversion import GenerationConfig, draw
from .judges import Judge, judge_scores
from .relearn import finetune_steps

Units = Callable[[torch.nn.Module], list]


@dataclass
class ResurgenceConfig:
    r"""Settings of [`resurgence_attack`]."""

    steps: int = field(default=200, metadata={"help": "Fine-tuning steps on the remain data."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Adam learning rate of the fine-tuning."})
    batch_size: int = field(default=2, metadata={"help": "Remain rows per step."})
    eval_every: Optional[int] = field(
        default=None, metadata={"help": "Also measure every N steps (the curve); unset: before and after only."}
    )
    seed: int = field(default=0, metadata={"help": "Attack seed: the data order and the noise of the fine-tuning."})

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; give a positive integer.")
        if self.eval_every is not None and (not isinstance(self.eval_every, int) or self.eval_every < 1):
            raise ValueError(f"`eval_every` is {self.eval_every!r}; give a positive integer or leave it unset.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` is {self.learning_rate}; give a positive number.")


def resurgence_attack(
    unlearned,
    remain,
    units: Units,
    *,
    config: Optional[ResurgenceConfig] = None,
    card: Optional[dict] = None,
) -> AttackResult:
    r"""Fine-tunes a copy of the unlearned model on `remain` and measures `units` before and after.

    Args:
        unlearned ([`Unlearner`] or [`ModelFamily`]): the model to attack (a copy is fine-tuned).
        remain (`datasets.Dataset`): unrelated rows in the family's columns (the remain set).
        units (`Callable[[nn.Module], list[bool]]`): one success per unit (the concept shown) for a module.
        config ([`ResurgenceConfig`], *optional*): steps, learning rate, batch size, seed.
        card (`dict`, *optional*): the eval card's fields the measure knows (concept, prompts' digest, judge, ...).

    Returns:
        [`AttackResult`]: per-unit rows (before / after), the eval card (ASR: post), `extra["curve"]` the rate at
        each measured step.
    """
    config = config or ResurgenceConfig()
    family = getattr(unlearned, "family", unlearned)
    if remain is None or len(remain) == 0:
        raise ValueError("`remain` is empty; give the remain rows (unrelated data) to fine-tune on.")
    module = copy.deepcopy(family.model).eval()
    module.requires_grad_(True)  # the attacker fine-tunes every weight, whatever the erasure trained
    pre = [bool(u) for u in units(module)]
    curve, every = [(0, sum(pre) / len(pre))], config.eval_every or config.steps
    run = finetune_steps(
        family,
        module,
        remain,
        steps=config.steps,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    post, losses = pre, []
    for step, loss in enumerate(run, 1):
        losses.append(loss)
        if step % every == 0 or step == config.steps:
            post = [bool(u) for u in units(module)]
            curve.append((step, sum(post) / len(post)))
    fields = {"concept": "concept", "prompt_set_digest": "", "num_prompts": 0, "judge": "measure"}
    fields |= {"judge_version": "unversioned", "threshold": 0.5, "inference_steps": 0, "guidance_scale": 0.0}
    fields |= {"images_per_prompt": 1, **(card or {})}
    eval_card = EvalCard(
        attack="resurgence",
        asr_definition="post",
        seeds=[config.seed],
        steps=config.steps,
        num_units=len(post),
        settings=asdict(config),
        **fields,
        **rates(pre, post),
    )
    rows = [{"unit": i, "before": a, "after": b} for i, (a, b) in enumerate(zip(pre, post))]
    return AttackResult(card=eval_card, rows=rows, extra={"curve": curve, "losses": losses})


def concept_units(
    pipeline,
    prompts: list[str],
    judge: Judge,
    *,
    threshold: float = 0.5,
    seeds=(0,),
    inference_steps: int = 50,
    guidance_scale: float = 7.5,
) -> Units:
    """Text-to-image: one unit per (prompt, seed), the concept judged on what the measured UNet draws (prompt `i`
    from each seed `s`, DDIM, the same noise before and after)."""
    config = GenerationConfig(inference_steps=inference_steps, guidance_scale=guidance_scale, threshold=threshold)
    # seed s * len(prompts) + i draws prompt i (draw takes prompt `seed % len(prompts)`)
    all_seeds = [s * len(prompts) + i for s in seeds for i in range(len(prompts))]

    def units(module) -> list[bool]:
        unet, pipeline.unet = pipeline.unet, module
        try:
            with torch.no_grad():
                images = draw(pipeline, prompts, all_seeds, config)
        finally:
            pipeline.unet = unet
        return [s >= threshold for s in judge_scores(judge, images)]

    units.card = {
        "prompt_set_digest": prompt_digest(prompts),
        "num_prompts": len(prompts),
        "threshold": threshold,
        "inference_steps": inference_steps,
        "guidance_scale": guidance_scale,
        "images_per_prompt": len(seeds),
    }
    return units


def forget_row_units(family, forget, batch_size: int = 512) -> Units:
    """Classifiers: one unit per forget row, a success when the module predicts its label."""
    loader = family.make_dataloader(forget, batch_size=batch_size, shuffle=False, seed=0)

    @torch.no_grad()
    def units(module) -> list[bool]:
        device, out = next(module.parameters()).device, []
        for batch in loader:
            logits = family.logits(module, {k: v.to(device) for k, v in batch.items()})
            out += (logits.argmax(-1).cpu() == batch["labels"]).tolist()
        return out

    units.card = {"num_prompts": len(forget), "judge": "labels", "prompt_set_digest": forget._fingerprint[:16]}
    return units


def class_units(
    family,
    judge: ClassJudge | Callable,
    forget_classes: list[int],
    *,
    samples: int = 16,
    inference_steps: int = 25,
    guidance_scale: float = 2.0,
    seed: int = 0,
) -> Units:
    """Class-conditional diffusion: one unit per sample drawn for a forgotten class (`samples` each, DDIM, the same
    noise before and after), a success when `judge` (a classifier of images in [0, 1], or a callable from such images
    to labels) names a forgotten class."""
    labels = [c for c in forget_classes for _ in range(samples)]
    named = (lambda x: predictions(judge, x)) if isinstance(judge, ClassJudge) else judge

    @torch.no_grad()
    def units(module) -> list[bool]:
        pipe = family.pipeline(module)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        images = generate(pipe, labels, guidance_scale=guidance_scale, num_inference_steps=inference_steps, seed=seed)
        return [int(p) in forget_classes for p in named(images)]

    units.card = {
        "concept": f"class {','.join(map(str, forget_classes))}",
        "prompt_set_digest": f"class-{','.join(map(str, forget_classes))}",
        "num_prompts": len(forget_classes),
        "inference_steps": inference_steps,
        "guidance_scale": guidance_scale,
        "images_per_prompt": samples,
    }
    return units


__all__ = ["ResurgenceConfig", "class_units", "concept_units", "forget_row_units", "resurgence_attack"]
