"""Adversarial erasure against concept inversion (AdvUnlearn's loop with the inversion attack in place of prompts).

Erasure rounds alternate with [`learn_embeddings`]: after each round but the last, a word is learned for each concept
on the current model (textual inversion on the concept's forget images), added to the tokenizer and the text encoder
as a new token, and the next round erases it too (the concept's forget images, captioned "a <word>", remapped to the
concept's first anchor). What AdvUnlearn does with adversarial text embeddings; here the learned word is the
adversary, the same kind of word the inversion attack later learns.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from datasets import concatenate_datasets

from ..concept import ConceptSplit
from .inversion import PLACEHOLDER, ConceptInversionConfig, learn_embeddings


def add_word(pipeline, word: str, vectors: torch.Tensor) -> None:
    """Adds `word` to the pipeline's tokenizer with the embedding `vectors[0]` (one vector per word)."""
    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder
    tokenizer.add_tokens([word])
    index = tokenizer.convert_tokens_to_ids(word)
    if index >= encoder.get_input_embeddings().num_embeddings:
        encoder.resize_token_embeddings(index + 1)
    with torch.no_grad():
        encoder.get_input_embeddings().weight[index] = vectors[0].to(encoder.dtype)


def inversion_adversarial_unlearn(
    unlearner,
    split: ConceptSplit,
    concepts: dict[str, list[str]],
    *,
    rounds: int = 3,
    attack: Optional[ConceptInversionConfig] = None,
) -> list[str]:
    r"""Runs `unlearner`'s method in `rounds` rounds (`max_steps` split between them), learning a word per concept
    after each round but the last and erasing it in the rounds after.

    Args:
        unlearner ([`Unlearner`]): a text-to-image unlearner configured as for a plain run.
        split ([`ConceptSplit`]): forget rows with captions and a dict of anchors (materialised).
        concepts (`dict[str, list[str]]`): each concept's forget prompts (its images are the inversion's targets).
        rounds (`int`, *optional*, defaults to 3): erasure rounds.
        attack ([`ConceptInversionConfig`], *optional*): the inversion of each round (one vector; seed shifted by
            the round).

    Returns:
        `list[str]`: the learned words that were erased.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"`rounds` is {rounds!r}; give a positive integer.")
    if unlearner.family.name != "text_to_image":
        raise ValueError(
            f"Inversion erasure learns words; it needs a text-to-image model, got {unlearner.family.name}."
        )
    if not isinstance(split.anchor_prompts, dict):
        raise ValueError(
            "`split.anchor_prompts` must be a dict {forget prompt: anchor} (one anchor per concept word)."
        )
    attack = dataclasses.replace(attack or ConceptInversionConfig(), num_vectors=1)
    base, total, words = unlearner.config, unlearner.config.max_steps, []
    if total < rounds:
        raise ValueError(f"`max_steps` is {total}, fewer than `rounds` ({rounds}); give at least one cycle per round.")
    family, current, erased = unlearner.family, split, []
    for r in range(rounds):
        steps = total // rounds + (1 if r < total % rounds else 0)
        unlearner.config = dataclasses.replace(base, max_steps=steps, num_forget_epochs=None, seed=base.seed + r)
        unlearner.unlearn(current)
        if r == 0:
            forget = current.forget  # the concept's images, materialised by the first round
        if r == rounds - 1:
            break
        copies, anchors = [], dict(split.anchor_prompts)
        for name, prompts in concepts.items():
            rows = forget.filter(lambda row, p=set(prompts): row[family.caption_column] in p)
            config = dataclasses.replace(attack, seed=attack.seed + 1000 * (r + 1))
            vectors = learn_embeddings(family.pipeline, list(rows[family.image_column]), config)
            word = f"<adv-{name}-{r}>"
            add_word(family.pipeline, word, vectors)
            words.append(word)
            caption = config.template.replace(PLACEHOLDER, word)
            anchor = split.anchor_prompts[prompts[0]]
            copies.append(rows.map(lambda _row, c=caption, a=anchor: {family.caption_column: c, "anchor": a}))
        erased = [concatenate_datasets([*erased, *copies])]  # every word found so far
        for caption, anchor in zip(erased[0][family.caption_column], erased[0]["anchor"]):
            anchors[caption] = anchor
        current = ConceptSplit(
            forget_dataset=concatenate_datasets([forget, *erased]),
            remain_dataset=split.remain if len(split.remain) else None,
            anchor_prompts=anchors,
            cache_dir=split.cache_dir,
            resolution=split.resolution,
        )
    unlearner.config = base
    return words


__all__ = ["add_word", "inversion_adversarial_unlearn"]
