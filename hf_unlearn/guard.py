"""What the divergence guard watches and what may be saved: every floating tensor of the model, buffers included.

A step with a huge learning rate can leave every parameter finite and still write Inf into a BatchNorm `running_var`
during the next forward pass; a check of the parameters alone then lets a corrupt model be evaluated and saved. The
guard therefore watches the trainable parameters *and* the floating buffers, and keeps its copy of both from before
the step's forward passes (the buffers change there, not in the optimizer step).
"""

from __future__ import annotations

from typing import Optional

import torch

from .validation import all_finite

SETTINGS_HINT = (
    "lower `learning_rate`{lr}, `forget_alpha`{alpha}, or set `max_grad_norm`{clip} (gradient clipping), then rerun"
)


class DivergenceError(RuntimeError):
    """A loss, gradient, weight or buffer became NaN/Inf; the weights were left at the last good step."""


def settings_hint(cfg) -> str:
    """The settings to change after a divergence, with this run's values."""

    def value(name):
        return f" ({getattr(cfg, name, None)})" if cfg is not None else ""

    return SETTINGS_HINT.format(lr=value("learning_rate"), alpha=value("forget_alpha"), clip=value("max_grad_norm"))


def watched_tensors(model: torch.nn.Module, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The trainable parameters, then every floating buffer of `model` (BatchNorm running statistics, ...)."""
    return list(params) + [b for b in model.buffers() if b.is_floating_point()]


def nonfinite_names(model: torch.nn.Module, limit: int = 3) -> list[str]:
    """Names of the floating parameters and buffers of `model` holding NaN/Inf (at most `limit`)."""
    bad = []
    with torch.no_grad():
        named = [*model.named_parameters(), *model.named_buffers()]
        tensors = [t.detach() for _, t in named if t.is_floating_point()]
        if all_finite(tensors):  # the fast path: one fused norm
            return bad
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
                if len(bad) >= limit:
                    break
    return bad


def check_checkpointable(models, step: int) -> None:
    """Refuses to write a checkpoint of a model holding NaN/Inf (possible with `divergence_guard='off'`)."""
    for model in models:
        bad = nonfinite_names(model)
        if bad:
            raise DivergenceError(
                f"The model holds NaN/Inf in {bad} at cycle {step}, so no checkpoint is written (the newest one "
                f"stays the last good state); {settings_hint(None)}, and keep divergence_guard='copy'."
            )


def check_savable(unlearner, what: str = "save_pretrained") -> None:
    """Refuses to save (or evaluate) a model that holds NaN/Inf, or the partial model of a run that diverged.

    Raises `ValueError` in one sentence naming the tensors and the settings to change.
    """
    diverged: Optional[str] = getattr(unlearner, "_diverged", None)
    if diverged is not None:
        raise ValueError(
            f"`{what}`: the last `unlearn` stopped with a DivergenceError ({diverged}), so the model in memory is an "
            f"unfinished run (its last good step) and is not saved; {settings_hint(unlearner.config)}."
        )
    check_finite_model(unlearner, what)


def check_finite_model(unlearner, what: str = "evaluate") -> None:
    """Refuses to go on (`evaluate`, `save_pretrained`) with a model that holds NaN/Inf parameters or buffers."""
    cfg = getattr(unlearner, "config", None)
    bad = nonfinite_names(unlearner.model)
    if bad:
        guard = getattr(cfg, "divergence_guard", None)
        raise ValueError(
            f"`{what}`: the model holds NaN/Inf in {bad} (divergence_guard={guard!r}), so it is not "
            f"{'evaluated' if what == 'evaluate' else 'saved'}; {settings_hint(cfg)}, and keep "
            "divergence_guard='copy'."
        )


__all__ = [
    "DivergenceError",
    "check_checkpointable",
    "check_finite_model",
    "check_savable",
    "nonfinite_names",
    "settings_hint",
    "watched_tensors",
]
