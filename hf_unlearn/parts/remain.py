"""The remaining part of the unified view: the loss to minimise on a remain batch."""

from __future__ import annotations

from typing import Optional

import torch

from .context import StepContext
from .forget import distill_kl


class RemainLoss:
    """A remaining part: the scalar to minimise on a remain batch."""

    name = "remain"
    families: Optional[tuple[str, ...]] = None

    def __call__(self, ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def prepare_split(self, split, family, config, device):
        """The split this part trains on (the remain rows as given, unless the part replaces them)."""
        return split

    def setup(self, ctx: StepContext) -> None:
        """Builds what the part needs besides the model (a frozen original) into `ctx`, before training."""

    def __repr__(self):
        return f"{type(self).__name__}()"


class TaskLoss(RemainLoss):
    """The family's own training loss on remain rows (cross-entropy, noise prediction with condition dropout).

    Args:
        source (`str`, *optional*, defaults to `"data"`): `"data"` trains on the remain rows; `"replay"` on samples
            the original model generates for the remain rows' conditions, drawn before the first step (selective
            amnesia's generative replay: the remain images themselves are never seen).
    """

    name = "task"

    def __init__(self, source: str = "data"):
        if source not in ("data", "replay"):
            raise ValueError(f"`source` is {source!r}; choose 'data' or 'replay'.")
        self.source = source

    def __call__(self, ctx, batch):
        loss = ctx.batch_mean(ctx.family.remain_rows(ctx.model, batch))
        return loss, {"remain_loss": loss.detach().item()}

    def prepare_split(self, split, family, config, device):
        return family.replay_split(split, config, device) if self.source == "replay" else split

    def __repr__(self):
        return "TaskLoss()" if self.source == "data" else f"TaskLoss(source={self.source!r})"


class DistillRemain(RemainLoss):
    """KL to the original model on remain rows, plus `distill_ce_weight` × cross-entropy (BT uses weight 0)."""

    name = "distill"
    families = ("image_classifier",)

    def __init__(self, with_ce: bool = False):
        self.with_ce = with_ce

    def setup(self, ctx):
        ctx.ensure_original()

    def __call__(self, ctx, batch):
        loss = ctx.batch_mean(distill_kl(ctx, ctx.original, batch))
        if self.with_ce:
            loss = loss + ctx.config.distill_ce_weight * ctx.batch_mean(ctx.family.per_sample_loss(ctx.model, batch))
        return loss, {"remain_loss": loss.detach().item()}

    def __repr__(self):
        return f"DistillRemain(with_ce={self.with_ce})"
