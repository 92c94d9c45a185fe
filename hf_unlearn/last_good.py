"""The engine's divergence guard (`divergence_guard`): the checks of every step's losses, gradient norm and weights,
and, with `'copy'`, the copy of the last good step that a step making a weight or buffer NaN/Inf puts back."""

from __future__ import annotations

from typing import Optional

import torch

from .guard import DivergenceError
from .parts.sharded import local
from .validation import all_finite


def check_finite(value: torch.Tensor, what: str, step: int, cfg) -> None:
    """Raises a [`DivergenceError`] naming `what` and the settings to lower when `value` is not finite."""
    if not torch.isfinite(value.detach()).all():
        raise DivergenceError(
            f"The {what} became {float(value.detach().float().flatten()[0])} at cycle {step}; the weights are those "
            f"of the last good step. Likely cause: a too large `learning_rate` ({cfg.learning_rate}) or "
            f"`forget_alpha` ({cfg.forget_alpha}), or no `max_grad_norm`; lower them and rerun."
        )


def _local(tensors) -> list[torch.Tensor]:
    # FSDP2 parameters are DTensors, for which `_foreach_copy_` has no sharding rule: copy each rank's shard.
    return [local(t) for t in tensors]


class LastGood:
    """The watched tensors of one run (trainable parameters, the adapters alone under LoRA, and floating buffers) and,
    under `divergence_guard='copy'`, one reused copy of them taken before each step."""

    def __init__(self, watched: list[torch.Tensor], cfg):
        self.watched, self.cfg = watched, cfg
        self.copy: Optional[list[torch.Tensor]] = None

    @torch.no_grad()
    def keep(self) -> None:
        if self.copy is None:
            self.copy = [p.detach().clone() for p in self.watched]
        else:  # one fused copy over all tensors rather than a call per parameter (this runs every step)
            torch._foreach_copy_(_local(self.copy), _local(self.watched))

    @torch.no_grad()
    def restore(self) -> None:
        if self.copy is not None and self.cfg.divergence_guard == "copy":
            torch._foreach_copy_(_local(self.watched), _local(self.copy))

    def check(self, step: int) -> None:
        """After the optimizer step: raises when a watched tensor is NaN/Inf. The loop's handler of the error puts the
        copy back ([`restore`]), as it does for an error raised on a loss before the step."""
        with torch.no_grad():
            if all_finite(self.watched):
                return
        cfg = self.cfg
        what = (
            "the weights and buffers of the last good step were restored"
            if cfg.divergence_guard == "copy"
            else "the weights were NOT restored (divergence_guard='check' keeps no copy; use the last checkpoint)"
        )
        raise DivergenceError(
            f"A weight or buffer became NaN/Inf in the step of cycle {step}; {what}. Likely cause: a too large "
            f"`learning_rate` ({cfg.learning_rate}) or `forget_alpha` ({cfg.forget_alpha}), or no `max_grad_norm` "
            f"({cfg.max_grad_norm}); lower them and rerun."
        )
