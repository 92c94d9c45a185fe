"""The forgetting part of the unified view: the loss to minimise on a forget batch. Each part only calls family
primitives (`per_sample_loss`, `remap_loss`, `logits`, ...), so one part serves every family that has them."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .context import StepContext


def adaptive_weights(
    losses: torch.Tensor,
    all_losses: torch.Tensor,
    temperature: float,
    sign: float = -1.0,
    valid: Optional[torch.Tensor] = None,
    all_valid: Optional[torch.Tensor] = None,
    rule: str = "inverse_power",
):
    r"""SFR-on's normalised weights w_i ∝ ℓ_i^(sign·λ), normalised over the global batch.

    `rule="inverse_power"` (the authors): c_i = 1 / (ℓ_i^(−sign·λ) + 1e-15), w_i = c_i / Σ_j c_j, so with ascent
    (`sign=-1`) a row whose loss is exactly 0 takes the whole weight. `rule="softmax"`: w_i = softmax(sign·λ·log(ℓ_i +
    1e-8)), computed in log space. The two agree to float rounding unless a loss is below ~1e-6.

    `losses` are this process's detached per-row losses, `all_losses` the same gathered over every process, so the
    normalisation runs over the global batch. `sign=-1` (ascent, the published SFR-on) gives w_i ∝ ℓ_i^(−λ): the most
    weight goes to rows not yet forgotten (low loss). `sign=+1` (descent toward a forgetting target) gives
    w_i ∝ ℓ_i^(+λ): the most weight goes to rows still far from the target. `temperature=0` gives uniform weights; a
    negative temperature reverses the direction. `valid` / `all_valid` (bool, same shapes) mark the rows that count:
    rows a multi-process loader repeated to fill its last batch get weight 0 and are left out of the normalisation,
    so every row counts once whatever the number of processes.
    """
    if rule == "inverse_power":
        power = -sign * temperature
        coef_all = 1.0 / (torch.pow(all_losses.clamp_min(0), power) + 1e-15)
        if all_valid is not None:
            coef_all = coef_all * all_valid.to(coef_all.device, coef_all.dtype)
        weights = (1.0 / (torch.pow(losses.clamp_min(0), power) + 1e-15)) / coef_all.sum()
    else:
        eps = 1e-8
        log_all = torch.log(all_losses.clamp_min(0) + eps) * (sign * temperature)
        if all_valid is not None:
            log_all = log_all.masked_fill(~all_valid.to(log_all.device), float("-inf"))
        log_norm = torch.logsumexp(log_all, dim=0)
        weights = torch.exp(torch.log(losses.clamp_min(0) + eps) * (sign * temperature) - log_norm)
    if valid is not None:
        weights = weights * valid.to(weights.device, weights.dtype)
    return weights


class ForgetLoss:
    """A forgetting part: returns the scalar to *minimise* on a forget batch (ascent parts return a negative)."""

    name = "forget"
    families: Optional[tuple[str, ...]] = None  # None: every family
    # +1: the part descends toward a target (weights ∝ ℓ^(+λ), far rows first); -1: it ascends the task loss
    # (weights ∝ ℓ^(−λ), rows not yet forgotten first). Both are "focus on the rows that still need forgetting".
    sign = 1.0

    def per_row(self, ctx: StepContext, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def __init__(self, weighted: bool = False):
        self.weighted = weighted

    def setup(self, ctx: StepContext) -> None:
        """Builds what the part needs besides the model (a frozen original, a teacher) into `ctx`, before training."""

    def __call__(self, ctx: StepContext, batch: dict) -> tuple[torch.Tensor, dict]:
        rows = self.per_row(ctx, batch)
        detached = rows.detach().float()
        if self.weighted:
            valid = ctx.row_valid
            weights = adaptive_weights(
                detached,
                ctx.gather(detached),
                ctx.config.temperature,
                sign=self.sign,
                valid=valid,
                all_valid=None if valid is None else ctx.gather(valid),
                rule=ctx.config.forget_weight_rule,
            )
            # DDP averages gradients over processes; multiply back so the sum runs over the global batch once.
            objective = (weights * rows).sum() * ctx.num_processes
        else:
            objective = ctx.batch_mean(rows)
        return self.sign * objective, {"forget_loss": detached.mean().item()}

    def __repr__(self):
        return f"{type(self).__name__}(weighted={self.weighted})"


class Ascent(ForgetLoss):
    """Gradient ascent on the task loss; with `weighted`, SFR-on's loss-weighted ascent; with `bound`, capped."""

    name = "ascent"
    sign = -1.0

    def __init__(self, weighted: bool = False, bounded: bool = False):
        super().__init__(weighted)
        self.bounded = bounded

    def per_row(self, ctx, batch):
        losses = ctx.family.per_sample_loss(ctx.model, batch)
        if self.bounded:
            bound = ctx.config.forget_bound
            if bound is None:
                bound = math.log(ctx.family.num_classes)
            # Rows already past the bound contribute no gradient: the model stops pushing them to confident errors.
            losses = torch.where(losses.detach() < bound, losses, losses.detach())
        return losses

    def __repr__(self):
        return f"Ascent(weighted={self.weighted}, bounded={self.bounded})"


class Remap(ForgetLoss):
    """Pull each forget row's output toward another condition's: random other labels (RL) or an anchor.

    Classifiers: cross-entropy to random labels other than the row's own. Diffusion: MSE between ε(x_t, c_forget) and
    a detached ε(x_t, c_anchor), the anchor chosen by `remap_anchor` ("random", "null", a class id) or, for
    text-to-image, the batch's anchor prompts.
    """

    name = "remap"

    def __init__(self, weighted: bool = False, anchor: Optional[str] = None):
        super().__init__(weighted)
        self.anchor = anchor  # None: the config's `remap_anchor`

    def per_row(self, ctx, batch):
        return ctx.family.remap_loss(ctx.model, batch, ctx.anchor_labels(batch, self.anchor))

    def __repr__(self):
        return f"Remap(weighted={self.weighted}, anchor={self.anchor!r})"


class KLUniform(ForgetLoss):
    """KL from a uniform distribution over the kept classes (all but the forgotten ones, or all but the row's own)."""

    name = "kl_uniform"
    families = ("image_classifier",)

    def per_row(self, ctx, batch):
        log_p = F.log_softmax(ctx.family.logits(ctx.model, batch).float(), dim=-1)
        allowed = torch.ones_like(log_p, dtype=torch.bool)
        if ctx.forget_classes:
            allowed[:, ctx.forget_classes] = False
        else:
            allowed[torch.arange(len(log_p)), batch["labels"]] = False
        target = allowed.float() / allowed.sum(-1, keepdim=True)
        return -(target * log_p).sum(-1) + (target * torch.log(target.clamp_min(1e-12))).sum(-1)


class TeacherKL(ForgetLoss):
    """KL(p_teacher ‖ p_model) on forget rows; `teacher="random"` (bad teacher) or `"original"` with ascent (SCRUB)."""

    families = ("image_classifier",)

    def __init__(self, teacher: str = "random", ascend: bool = False):
        super().__init__(weighted=False)
        self.teacher = teacher
        self.name = f"kl_{teacher}"
        self.sign = -1.0 if ascend else 1.0

    def setup(self, ctx):
        if self.teacher == "random":
            ctx.ensure_teacher()
        else:
            ctx.ensure_original()

    def per_row(self, ctx, batch):
        teacher = ctx.teacher if self.teacher == "random" else ctx.original
        return distill_kl(ctx, teacher, batch)

    def __repr__(self):
        return f"TeacherKL(teacher={self.teacher!r}, ascend={self.sign < 0})"


class NegativeGuidance(ForgetLoss):
    """ESD: pull ε(x_t, c) toward ε₀(x_t) − η·(ε₀(x_t, c) − ε₀(x_t)) of the frozen original."""

    name = "negative_guidance"
    families = ("text_to_image", "class_conditional_diffusion")

    def setup(self, ctx):
        ctx.ensure_original()

    def per_row(self, ctx, batch):
        return ctx.family.negative_guidance_loss(ctx.model, ctx.original, batch, ctx.config.esd_negative_guidance)


def distill_kl(ctx: StepContext, teacher, batch) -> torch.Tensor:
    temperature = ctx.config.kl_temperature
    with torch.no_grad():
        target = F.softmax(ctx.family.logits(teacher, batch).float() / temperature, dim=-1)
    log_p = F.log_softmax(ctx.family.logits(ctx.model, batch).float() / temperature, dim=-1)
    return (target * (torch.log(target.clamp_min(1e-12)) - log_p)).sum(-1) * temperature**2
