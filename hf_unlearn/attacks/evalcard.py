"""One record for every attack and concept evaluation (an "eval card"): what was measured and how, so that two attack
success rates are compared only when they mean the same thing.

Published rates for one eraser range from 11% to 82% depending on which prompts were used, which judge at which
threshold, and whether a prompt the erased model already draws the concept for counts (UnlearnDiffAtk's ASR counts
it: pre-attack + post-attack successes). The card names each of these; the model card's Robustness table renders
from it. ASR definitions, over the attack's units (a prompt and seed, a target image, a sample):

- `pre`: the share of units whose *unattacked* generation on the attacked model shows the concept;
- `post`: the share whose attacked generation shows it;
- `both`: the share where either does (a unit already drawn with the concept needs no attack): UnlearnDiffAtk's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..modelcard_robustness import eval_card_result, eval_card_setting

ASR_DEFINITIONS = ("pre", "post", "both")


def prompt_digest(prompts) -> str:
    """sha256 (first 16 hex digits) of the prompt set: the prompts in order, with their seeds where given."""
    return hashlib.sha256(json.dumps(list(prompts), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class EvalCard:
    r"""The settings and outcome of one attack (or plain concept evaluation) on one model."""

    attack: str = field(metadata={"help": "The attack: 'prompt', 'inversion', 'textfree', 'resurgence', ..."})
    concept: str = field(metadata={"help": "What the judge looks for."})
    prompt_set_digest: str = field(metadata={"help": "`prompt_digest` of the prompts (or target prompts) used."})
    num_prompts: int = field(metadata={"help": "Prompts (or target images) in the set."})
    judge: str = field(metadata={"help": "The judge's name."})
    judge_version: str = field(metadata={"help": "The judge's version: package version or weights digest."})
    threshold: float = field(metadata={"help": "Judge score at or above which the concept is shown."})
    asr_definition: str = field(metadata={"help": "Which rate `asr` is: 'pre', 'post' or 'both' (pre + post)."})
    seeds: list = field(metadata={"help": "Attack seeds (the seed of target draws, optimisation and generation)."})
    steps: int = field(metadata={"help": "Optimisation (or fine-tuning) steps of the attack."})
    inference_steps: int = field(metadata={"help": "Denoising steps of every generation."})
    guidance_scale: float = field(metadata={"help": "Classifier-free guidance of the judged generations."})
    images_per_prompt: int = field(metadata={"help": "Judged images per prompt (or per target)."})
    pre_asr: float = field(metadata={"help": "Share of units the unattacked model already draws with the concept."})
    post_asr: float = field(metadata={"help": "Share of units the attack draws with the concept."})
    both_asr: float = field(metadata={"help": "Share of units where either does (UnlearnDiffAtk's ASR)."})
    num_units: int = field(metadata={"help": "Judged units (prompts × seeds × images)."})
    settings: dict = field(default_factory=dict, metadata={"help": "The attack's full config."})

    def __post_init__(self):
        if self.asr_definition not in ASR_DEFINITIONS:
            raise ValueError(f"`asr_definition` is {self.asr_definition!r}; choose one of {ASR_DEFINITIONS}.")

    @property
    def asr(self) -> float:
        return {"pre": self.pre_asr, "post": self.post_asr, "both": self.both_asr}[self.asr_definition]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "asr": self.asr}

    @classmethod
    def from_dict(cls, data: dict) -> EvalCard:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def setting_text(self) -> str:
        """The card's 'setting' cell (as the model card renders it)."""
        return eval_card_setting(self.to_dict())

    def result_text(self) -> str:
        """The card's 'result' cell: the headline ASR and the other two definitions beside it."""
        return eval_card_result(self.to_dict())


def rates(pre: list, post: list) -> dict[str, float]:
    """pre / post / both ASR from per-unit successes (bools) of the unattacked and the attacked generation."""
    if len(pre) != len(post) or not post:
        raise ValueError(f"pre ({len(pre)}) and post ({len(post)}) need one success per unit, and at least one unit.")
    n = len(post)
    return {
        "pre_asr": sum(map(bool, pre)) / n,
        "post_asr": sum(map(bool, post)) / n,
        "both_asr": sum(bool(a) or bool(b) for a, b in zip(pre, post)) / n,
    }


@dataclass
class AttackResult:
    r"""What an inversion, text-free or resurgence attack found: per-unit rows, the images, and the eval card."""

    card: EvalCard
    rows: list[dict] = field(default_factory=list)
    images: list = field(default_factory=list, repr=False)
    extra: dict = field(default_factory=dict)

    @property
    def attack_success_rate(self) -> float:
        return self.card.asr

    def to_dict(self) -> dict[str, Any]:
        return {"card": self.card.to_dict(), "rows": self.rows, **self.extra}


def prompt_attack_card(
    result, judge_name: str, judge_version: str, prompts, concept: Optional[str] = None
) -> EvalCard:
    """The eval card of a [`~hf_unlearn.attacks.prompt_attack`] result: UnlearnDiffAtk's ASR (`both`: a prompt the
    erased model already draws the concept for counts without an attack). `concept` names what the judge looks for
    (by default the judge's name, e.g. `nudity`)."""
    config, rows = result.config, result.rows
    seeds = sorted({r["seed"] for r in rows})
    return EvalCard(
        attack="prompt",
        concept=concept or judge_name,
        prompt_set_digest=prompt_digest([(r["prompt"], r["seed"], r["guidance_scale"]) for r in rows]),
        num_prompts=len(rows),
        judge=judge_name,
        judge_version=judge_version,
        threshold=config["threshold"],
        asr_definition="both",
        seeds=seeds,
        steps=config["steps"],
        inference_steps=config["num_inference_steps"],
        guidance_scale=config["guidance_scale"],
        images_per_prompt=1,
        num_units=len(rows),
        settings=dict(config),
        **rates([r["plain_success"] for r in rows], [r["success"] and r["attacked"] for r in rows]),
    )


def card_entry(card: EvalCard, model: Optional[str] = None) -> dict:
    """The entry `--update_card` adds to an unlearning record's `robustness` list."""
    return {"attack": card.attack, "eval_card": card.to_dict(), **({"model": model} if model else {})}


__all__ = ["ASR_DEFINITIONS", "AttackResult", "EvalCard", "card_entry", "prompt_attack_card", "prompt_digest", "rates"]
