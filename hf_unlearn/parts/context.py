"""What a loss part may look at during a step."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn


@dataclass
class StepContext:
    """Handles given to every part: the family, the (possibly wrapped) model, frozen copies, config and helpers."""

    family: Any
    model: nn.Module
    config: Any
    forget_classes: Optional[list[int]] = None
    original: Optional[nn.Module] = None
    teacher: Optional[nn.Module] = None
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    num_processes: int = 1
    generator: torch.Generator = field(default_factory=torch.Generator)
    step: int = 0
    # Rows of the current forget batch that count (`None`: all); a multi-process loader pads its last batch.
    row_valid: Optional[torch.Tensor] = None

    def ensure_original(self) -> nn.Module:
        """A frozen copy of the model as it is now (θ0), made once and shared by every part that asks."""
        if self.original is None:
            self.original = copy.deepcopy(self.model).eval().requires_grad_(False)
        return self.original

    def ensure_teacher(self) -> nn.Module:
        """A frozen, freshly initialised model of the same configuration (the bad teacher), made once."""
        if self.teacher is None:
            self.teacher = self.family.fresh_model("config").eval().requires_grad_(False)
        return self.teacher

    def batch_mean(self, rows: torch.Tensor) -> torch.Tensor:
        """The mean of per-row values over the global batch, each real row once, as DDP will average it.

        One process: `rows.mean()`. Several: rows a padded last batch repeats count zero, and the local sum is scaled
        so that DDP's average over processes gives Σ_real ℓ_i / n_real of the whole global batch.
        """
        if self.row_valid is None:
            return rows.mean()
        valid = self.row_valid.to(rows.device)
        count = self.gather(valid.float().sum().reshape(1)).sum()
        return (rows * valid).sum() * self.num_processes / count.clamp_min(1)

    def anchor_labels(self, batch: dict, anchor: Optional[str] = None) -> Optional[torch.Tensor]:
        """The labels each forget row is pulled toward, per `remap_anchor`; `None` where the batch carries anchors."""
        labels = batch.get("labels")
        if labels is None:
            return None
        anchor = str(anchor or self.config.remap_anchor)
        num_classes = self.family.num_classes
        if anchor == "null":
            return torch.full_like(labels, int(self.config.null_class_id))
        if anchor != "random":
            return torch.full_like(labels, int(anchor))
        excluded = set(self.forget_classes or [])
        choices = torch.tensor([c for c in range(num_classes) if c not in excluded], dtype=torch.long)
        picks = choices[torch.randint(len(choices), (len(labels),), generator=self.generator)]
        # Class-wise the choices exclude every forgotten class; for row forgetting, redraw rows that got their own.
        same = picks == labels.cpu()
        while bool(same.any()) and len(choices) > 1:
            picks[same] = choices[torch.randint(len(choices), (int(same.sum()),), generator=self.generator)]
            same = picks == labels.cpu()
        return picks.to(labels.device)
