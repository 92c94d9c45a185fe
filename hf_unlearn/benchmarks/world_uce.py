"""UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024): a closed-form edit of the
cross-attention key and value projections, no training. A benchmark row of the shape world; not (yet) a method of
the library's registry, whose methods are trained step by step by the engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


@torch.no_grad()
def _states(pipe, prompts: Sequence[str]) -> torch.Tensor:
    ids = pipe.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids).last_hidden_state


@torch.no_grad()
def uce_edit(pipe, erase: Mapping[str, str], preserve: Sequence[str], *, preserve_scale: float = 1.0, lamb=0.1):
    r"""Edits every `attn2.to_k` / `attn2.to_v` of `pipe.unet` in place so that each forget prompt's token states map
    to what its anchor's map to, while the `preserve` prompts' map as before:

    $$W' = \Big(\lambda W + \sum_i W c^*_i c_i^\top + s \sum_j W c_j c_j^\top\Big)
           \Big(\lambda I + \sum_i c_i c_i^\top + s \sum_j c_j c_j^\top\Big)^{-1}$$

    with $c_i$ the token states of a forget prompt and $c^*_i$ those of its anchor at the same position (the
    benchmark's anchors have as many words as their forget prompts), $c_j$ the preserved prompts' token states,
    $s$ `preserve_scale` and $\lambda$ `lamb` (the authors' 0.1). Returns the work done (no optimiser steps).
    """
    forget, target = list(erase), [erase[p] for p in erase]
    c = _states(pipe, forget).reshape(-1, pipe.text_encoder.config.hidden_size)
    c_star = _states(pipe, target).reshape(-1, pipe.text_encoder.config.hidden_size)
    kept = list(dict.fromkeys(preserve))
    p = _states(pipe, kept).reshape(-1, pipe.text_encoder.config.hidden_size)
    eye = torch.eye(c.shape[1])
    right = lamb * eye + c.T @ c + preserve_scale * p.T @ p
    inverse = torch.linalg.inv(right)
    edited = 0
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2.to_k") or name.endswith("attn2.to_v"):
            w = module.weight
            left = lamb * w + (w @ c_star.T) @ c + preserve_scale * (w @ p.T) @ p
            module.weight.copy_(left @ inverse)
            edited += 1
    return {"optimizer_steps": 0, "edited_projections": edited, "preserved_prompts": len(kept)}
