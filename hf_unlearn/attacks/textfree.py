"""Text-free inversion (after TINA, 2026): DDIM-invert an image of the concept on the erased model and resample.

No prompt names the concept: each target image (drawn by the original model) is run backwards through the *erased*
model's deterministic DDIM sampler under the null prompt to its starting noise x_T, and the erased model then samples
forwards from that noise. An eraser that cut the concept from the text path but left the model able to draw it
reproduces the image; TINA reports 71–93% against AdvUnlearn, SalUn, STEREO and MACE. `prompt="concept"` does the
same with the concept's own prompt on both passes (the text path is back in play).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .evalcard import AttackResult
from .inversion import GenerationConfig, check_prompts, concept_targets, draw, judged_result
from .judges import Judge, check_judge
from .latent_ops import DDIM, decode, image_latents, image_size, prompt_states


@dataclass
class TextFreeConfig(GenerationConfig):
    r"""Settings of [`textfree_attack`]."""

    prompt: str = field(
        default="null", metadata={"help": "Condition of the inversion and the resample: 'null' (\"\") or 'concept'."}
    )
    num_targets: int = field(
        default=6, metadata={"help": "Concept images the original draws, each inverted and resampled (a judged unit)."}
    )
    inversion_steps: int = field(default=30, metadata={"help": "DDIM steps of the inversion and of the resample."})
    refine_steps: int = field(
        default=2, metadata={"help": "Fixed-point iterations per inversion step (0: plain DDIM inversion)."}
    )
    inversion_guidance: float = field(
        default=1.0, metadata={"help": "Guidance of the inversion and resample (1: none, the exact DDIM round trip)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.prompt not in ("null", "concept"):
            raise ValueError(f"`prompt` is {self.prompt!r}; choose 'null' or 'concept'.")
        if (
            isinstance(self.inversion_steps, bool)
            or not isinstance(self.inversion_steps, int)
            or self.inversion_steps < 1
        ):
            raise ValueError(f"`inversion_steps` is {self.inversion_steps!r}; give a positive integer.")
        if self.inversion_guidance < 1:
            raise ValueError(f"`inversion_guidance` is {self.inversion_guidance}; give a number >= 1.")


@torch.no_grad()
def invert_and_resample(pipeline, images: list, conds: list, config: TextFreeConfig) -> list:
    """Each image DDIM-inverted under its condition on `pipeline`, then sampled again from the noise it reached."""
    sampler = DDIM(pipeline, config.inversion_steps)
    uncond = prompt_states(pipeline, "")
    cond = torch.cat(conds)
    noise = sampler.invert(
        image_latents(pipeline, images), cond, uncond, config.inversion_guidance, config.refine_steps
    )
    return decode(pipeline, sampler.sample(noise, cond, uncond, config.inversion_guidance))


def textfree_attack(
    pipeline,
    prompts: list[str],
    judge: Judge,
    *,
    original=None,
    target_images: Optional[list] = None,
    config: Optional[TextFreeConfig] = None,
    concept: str = "concept",
    judge_name: str = "judge",
    judge_version: str = "unversioned",
) -> AttackResult:
    r"""Inverts each concept image on `pipeline` (the erased model), resamples it, and judges the result.

    Args:
        pipeline (`StableDiffusionPipeline`): the attacked model (nothing in it changes).
        prompts (`list[str]`): the concept's prompts: the original draws the target of seed `s` from prompt
            `s % len(prompts)`, the attacked model draws the same prompt and seed plainly (the pre-attack rate);
            `prompt="concept"` also conditions the inversion on it.
        judge (`Callable`): one score per PIL image; the concept is shown at or above `config.threshold`.
        original (`StableDiffusionPipeline`, *optional*): the model before erasure (draws the targets).
        target_images (`list[PIL.Image.Image]`, *optional*): the concept's images, instead of `original`.
        config ([`TextFreeConfig`], *optional*): null or concept prompt, inversion steps, generation, seed.

    Returns:
        [`AttackResult`]: one row per target image and the eval card.
    """
    config = config or TextFreeConfig()
    prompts = check_prompts(prompts)
    check_judge(judge, image_size(pipeline))
    targets, seeds = concept_targets(original, prompts, config, target_images, judge)
    with torch.no_grad():
        empty = prompt_states(pipeline, "")
        conds = [
            empty if config.prompt == "null" else prompt_states(pipeline, prompts[s % len(prompts)]) for s in seeds
        ]
    attacked = invert_and_resample(pipeline, targets, conds, config)
    plain = draw(pipeline, prompts, seeds, config)  # each target's prompt and seed, drawn by the erased model
    name = "textfree_null" if config.prompt == "null" else "textfree_concept"
    return judged_result(
        name,
        concept,
        prompts,
        judge,
        plain,
        attacked,
        config,
        seeds,
        config.inversion_steps,
        judge_name,
        judge_version,
    )


__all__ = ["TextFreeConfig", "invert_and_resample", "textfree_attack"]
