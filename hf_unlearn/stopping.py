"""`stop_rule='held_out'`: a classifier's budget set from data the user has, so that a default run does not leave the
model further from retraining than doing nothing.

A retrained model (RT) treats random forget rows as it treats rows it never saw: their loss is the held-out loss. So
for random rows the forget steps stop at the first cycle where the forget rows' mean cross-entropy reaches the
held-out (test) rows' (both measured on the model being unlearned, at that cycle); the round's remaining cycles take
only remain steps, and the run ends with the round (a round that does not reach it is followed by another). RT never
predicts a class it never saw: class-wise, a round of `max_steps` cycles (with its own learning-rate schedule) is
repeated while forget accuracy is above `stop_forget_accuracy`. Either way at most `stop_max_rounds` rounds run.
Checks read at most `stop_max_rows` rows of each set (a fixed seeded sample) in eval mode and change nothing; their
forward passes are not counted in the run's `work`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .evaluation import predict_logits
from .utils import get_logger

logger = get_logger(__name__)


def _sample(dataset, rows: int, seed: int):
    if len(dataset) <= rows:
        return dataset
    return dataset.select(sorted(np.random.default_rng(seed).choice(len(dataset), rows, replace=False).tolist()))


class HeldOutStop:
    """Decides, after a cycle, whether the run has reached what RT would show (see the module docstring)."""

    def __init__(self, family, forget, held_out, config):
        self.family, self.forget, self.held_out = family, forget, held_out
        self.class_wise = held_out is None
        self.period, self.rounds = config.max_steps, config.stop_max_rounds
        self.target_accuracy = config.stop_forget_accuracy
        self.batch_size = config.eval_batch_size
        self.last: dict = {}

    @classmethod
    def build(cls, family, split, config) -> Optional[HeldOutStop]:
        """The rule of this run, or `None` (fixed budget: rule off, not a classifier, or no held-out rows)."""
        if config.stop_rule != "held_out" or family.name != "image_classifier":
            return None
        forget = getattr(split, "forget", None)
        if forget is None or len(forget) == 0:
            return None
        forget = _sample(forget, config.stop_max_rows, config.seed)
        if getattr(split, "forget_classes", None):
            return cls(family, forget, None, config)
        test = getattr(split, "test_dataset", None)
        if test is None or len(test) == 0:
            logger.warning(
                "stop_rule='held_out' needs held-out rows for random forgetting (the split's `test_dataset`); "
                f"running the fixed budget of {config.max_steps} cycles."
            )
            return None
        return cls(family, forget, _sample(test, config.stop_max_rows, config.seed + 1), config)

    @property
    def total(self) -> int:
        return self.period * self.rounds

    def _loss_and_accuracy(self, model, dataset) -> tuple[float, float]:
        logits, labels = predict_logits(self.family, model, dataset, self.batch_size, desc="stop rule")
        loss = torch.nn.functional.cross_entropy(logits, labels).item()
        return loss, 100.0 * (logits.argmax(1) == labels).float().mean().item()

    def after_cycle(self, model, cycles_done: int) -> str:
        """'stop', 'remain_only' (forget steps off for the rest of the round) or 'continue', after `cycles_done`."""
        round_end = cycles_done % self.period == 0
        if self.class_wise:
            if not round_end:
                return "continue"  # class-wise rounds run whole: a round's schedule ends before it is judged
            _, accuracy = self._loss_and_accuracy(model, self.forget)
            self.last = {"cycles": cycles_done, "forget_accuracy": accuracy}
            return "stop" if accuracy <= self.target_accuracy else "continue"
        if not self.last.get("reached"):
            forget_loss, _ = self._loss_and_accuracy(model, self.forget)
            held_out_loss, _ = self._loss_and_accuracy(model, self.held_out)
            reached = forget_loss >= held_out_loss
            self.last = {"cycles": cycles_done, "forget_loss": forget_loss, "held_out_loss": held_out_loss}
            self.last["reached"] = reached
        # Reached: the forget steps end and the round's remaining cycles (remain steps, the decaying rate) repair
        # what the last forget steps broke, as the cycles after the forget steps of a fixed budget would.
        if self.last["reached"]:
            return "stop" if round_end else "remain_only"
        return "continue"
