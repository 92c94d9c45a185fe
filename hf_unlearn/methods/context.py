"""What a loss part may look at during a step."""

from __future__ import annotations

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
