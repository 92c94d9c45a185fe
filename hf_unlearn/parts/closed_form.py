"""UCE's closed-form edit as a geometry (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024).

The forgetting objective (each forget prompt's cross-attention keys and values moved to what its anchor's are) and the
remaining objective (the remain prompts' keys and values kept) are both least-squares in the key/value weights, so
this geometry solves them exactly, once per projection, at θ0, instead of taking gradient steps: its cycles plan no
step. For projection W (out × in), with c_i the token states of forget prompt i, c*_i those of its anchor, c_j those
of remain prompt j:

    W' = (λ W + Σ_i W c*_i c_iᵀ + s Σ_j W c_j c_jᵀ) (λ I + Σ_i c_i c_iᵀ + s Σ_j c_j c_jᵀ)⁻¹

λ `uce_lambda` (the authors' 0.1), s `uce_preserve_scale` (the authors' max(0.1, 1 / #remain prompts) when unset).
Token states are aligned as in the authors' code: from each prompt's last word token to the end of the sequence,
cut to the shorter of the pair (a causal text encoder puts the whole prompt into the states after its last word).
"""

from __future__ import annotations

import torch

from .geometry import Geometry, register_geometry
from .saliency import SaliencyInputs


def uce_solve(weight, forget, anchor, preserve, *, lamb: float, preserve_scale: float) -> torch.Tensor:
    """The edited weight: `forget`/`anchor` (n × in) token states paired row by row, `preserve` (m × in) kept."""
    w = weight.detach().double()
    c, c_star, p = forget.double(), anchor.double(), preserve.double()
    left = lamb * w + (w @ c_star.T) @ c + preserve_scale * (w @ p.T) @ p
    right = lamb * torch.eye(w.shape[1], dtype=w.dtype) + c.T @ c + preserve_scale * p.T @ p
    # left · right⁻¹ without forming the inverse: right is symmetric positive definite (λ > 0).
    return torch.linalg.solve(right, left.T).T.to(weight.dtype)


class ClosedFormEdit(Geometry):
    """UCE: the forget and remain objectives on the cross-attention keys/values solved in closed form at θ0; no step.

    The family gives the projections (`key_value_projections`) and the aligned token states
    (`cross_attention_states`); only projections whose weights are trainable in this run are edited.
    """

    name = "closed_form"

    def steps(self, config, forget_on, has_remain):
        return []

    def check(self, family, config) -> None:
        if config.lora:
            raise ValueError(
                "`method` is 'uce', which edits the cross-attention key/value weights themselves, not adapters; set "
                "`lora=False` (or use `method='anchor_remap'`, which trains LoRA adapters on the same projections)."
            )
        names = [n for n, _ in family.key_value_projections(family.model)]  # flow families refuse here
        if not any(family.trainable_parameter_filter(f"{n}.weight") for n in names):
            raise ValueError(
                f"`train_modules` is {config.train_modules!r}, which leaves out the cross-attention key/value weights "
                "that 'uce' edits; set `train_modules='cross_attention_kv'` (the method's default)."
            )

    @torch.no_grad()
    def setup(self, inputs: SaliencyInputs):
        family, cfg, split = inputs.family, inputs.config, inputs.split
        trainable = {id(p) for _, p in inputs.named_params}
        # `check` has made sure some are trainable; the others (e.g. frozen by the caller) stay as they are.
        layers = [(n, m) for n, m in family.key_value_projections(inputs.module) if id(m.weight) in trainable]
        if not hasattr(split, "concepts"):  # checked before any weight is edited
            raise ValueError(
                f"`method` is 'uce', which edits each forget prompt towards its anchor, but the split is a "
                f"{type(split).__name__} without prompts; pass a ConceptSplit (forget_prompts or a captioned "
                "forget_dataset, and anchor_prompts)."
            )
        pairs, preserve = split.concepts, split.remain_captions
        scale = cfg.uce_preserve_scale
        if scale is None:
            scale = max(0.1, 1.0 / len(preserve)) if preserve else 0.0
        forget, anchor = family.cross_attention_states([f for f, _ in pairs], [a for _, a in pairs])
        kept = family.cross_attention_states(preserve, preserve)[0] if preserve else forget[:0]
        for _, module in layers:
            module.weight.copy_(
                uce_solve(module.weight, forget, anchor, kept, lamb=cfg.uce_lambda, preserve_scale=scale)
            )
        return None


register_geometry(ClosedFormEdit())
