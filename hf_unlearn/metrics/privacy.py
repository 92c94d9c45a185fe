"""Per-example membership statistics for the privacy audit (LiRA, and its unlearning form U-LiRA).

Every function works on already computed logits, labels and shadow scores (numpy arrays or torch tensors), so the
statistics are cheap to test and independent of how the shadow models were trained (see `hf_unlearn.audit`).

- **logit-scaled confidence** φ = log(p_y / (1 − p_y)) of the true label: roughly Gaussian over training runs, which
  is what makes per-example Gaussians work (Carlini et al., "Membership Inference Attacks From First Principles").
- **likelihood ratio** of a model's φ on a row under the row's IN Gaussian (shadows that trained on it) against its
  OUT Gaussian (shadow RT models that never saw it): large means "this model still behaves as if it trained on the
  row" (Hayes et al., "Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of Privacy").
- **memorisation** of a row: accuracy of the shadows that trained on it minus accuracy of those that did not
  (Feldman & Zhang's estimator), with the gap in φ breaking ties.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .arrays import _as_labels, _as_logits, _to_numpy

__all__ = [
    "auc",
    "distinguishable_share",
    "fit_gaussians",
    "likelihood_ratio",
    "logit_confidence",
    "memorisation_scores",
    "tpr_at_fpr",
]

# Smallest standard deviation of a Gaussian: a row whose shadows all agree would otherwise divide by zero.
_MIN_STD = 1e-3


def logit_confidence(logits: Any, labels: Any) -> np.ndarray:
    """φ = log p_y − log(1 − p_y) for each row, computed as z_y − logsumexp_{j≠y} z_j (exact, no overflow).

    Args:
        logits (`torch.Tensor` or `np.ndarray` of shape `(n, num_classes)`): unnormalised class scores.
        labels (`torch.Tensor` or `np.ndarray` of shape `(n,)`): integer class ids.

    Returns:
        `np.ndarray` of shape `(n,)`.
    """
    logits = _as_logits(logits, "logits")
    labels = _as_labels(labels, "labels", logits, "logits")
    if logits.shape[1] < 2:
        raise ValueError("`logits` needs at least two classes for a confidence ratio.")
    rows = np.arange(len(labels))
    true = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    top = others.max(axis=1)
    return true - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))


def fit_gaussians(scores: Any, members: Any, per_example_variance: bool = False) -> dict[str, np.ndarray]:
    """Per-row mean and standard deviation of the shadow scores where `members` is true.

    Args:
        scores (array of shape `(num_shadows, n)`): φ of each shadow on each row.
        members (bool array of the same shape): which (shadow, row) scores belong to this Gaussian.
        per_example_variance (`bool`, *optional*, defaults to `False`): each row its own variance (needs many
            shadows); otherwise one variance pooled over all rows (LiRA's choice with few shadows).

    Returns:
        `dict` with `mean`, `std` and `count` (shadows per row), each of shape `(n,)`.
    """
    scores = _to_numpy(scores)
    members = _to_numpy(members, dtype=bool)
    if scores.ndim != 2 or members.shape != scores.shape:
        raise ValueError(f"`scores` {scores.shape} and `members` {members.shape} must be equal 2-d shapes.")
    count = members.sum(axis=0)
    if (count == 0).any():
        raise ValueError(
            f"{int((count == 0).sum())} rows have no shadow score of this kind; train more shadows (num_shadows)."
        )
    mean = np.where(members, scores, 0.0).sum(axis=0) / count
    sq = np.where(members, (scores - mean) ** 2, 0.0)
    if per_example_variance:
        std = np.sqrt(sq.sum(axis=0) / np.maximum(count - 1, 1))
    else:
        dof = max(int(count.sum() - len(count)), 1)
        std = np.full(len(count), math.sqrt(sq.sum() / dof))
    return {"mean": mean, "std": np.maximum(std, _MIN_STD), "count": count}


def _log_normal(x: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    z = (x - stats["mean"]) / stats["std"]
    return -0.5 * z**2 - np.log(stats["std"]) - 0.5 * math.log(2 * math.pi)


def likelihood_ratio(phi: Any, in_stats: dict, out_stats: dict) -> np.ndarray:
    """log N(φ; IN) − log N(φ; OUT) per row: positive where the model looks like one that trained on the row."""
    phi = _to_numpy(phi)
    return _log_normal(phi, in_stats) - _log_normal(phi, out_stats)


def tpr_at_fpr(positive: Any, negative: Any, fpr: float) -> float:
    """Share of `positive` scores above the threshold that flags at most `fpr` of the `negative` scores.

    With fewer than `1 / fpr` negatives the threshold is their maximum (the rate is then an upper bound on FPR).
    """
    positive, negative = _to_numpy(positive).ravel(), np.sort(_to_numpy(negative).ravel())
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    allowed = int(math.floor(fpr * negative.size))  # negatives allowed above the threshold
    threshold = negative[negative.size - 1 - allowed]
    return float((positive > threshold).mean())


def auc(positive: Any, negative: Any) -> float:
    """Area under the ROC curve of scores that should be higher for `positive` (Mann-Whitney U, ties count half)."""
    positive, negative = _to_numpy(positive).ravel(), _to_numpy(negative).ravel()
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    both = np.concatenate([positive, negative])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(both.size)
    sorted_vals = both[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2.0
    return float(u / (positive.size * negative.size))


def distinguishable_share(phi: Any, out_stats: dict, level: float = 0.01) -> float:
    """Share of rows whose φ falls outside the central `1 − level` of the row's OUT (RT) Gaussian, either side.

    Two-sided: a row forgotten "too well" (far less confident than RT would be) is as recognisable as a remembered
    one. An RT-like model scores about `level` here.
    """
    phi = _to_numpy(phi)
    if phi.size == 0:
        return float("nan")
    z = np.abs(phi - out_stats["mean"]) / out_stats["std"]
    limit = _normal_quantile(1 - level / 2)
    return float((z > limit).mean())


def _normal_quantile(p: float) -> float:
    # Inverse of the standard normal CDF by bisection on erf: no scipy needed for two numbers.
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def memorisation_scores(correct: Any, members: Any, phi: Optional[Any] = None) -> dict[str, np.ndarray]:
    """Feldman & Zhang's memorisation of each row, estimated from shadows trained on random halves.

    Args:
        correct (bool array of shape `(num_shadows, n)`): whether each shadow classifies each row correctly.
        members (bool array of the same shape): whether each shadow trained on each row.
        phi (array of the same shape, *optional*): the shadows' φ, for the confidence gap.

    Returns:
        `dict` with `memorisation` (accuracy IN − accuracy OUT, in [-1, 1]) and, with `phi`, `phi_gap` (mean φ IN −
        mean φ OUT), each of shape `(n,)`.
    """
    correct = _to_numpy(correct, dtype=float)
    members = _to_numpy(members, dtype=bool)
    inside, outside = fit_gaussians(correct, members), fit_gaussians(correct, ~members)
    result = {"memorisation": inside["mean"] - outside["mean"]}
    if phi is not None:
        phi = _to_numpy(phi)
        result["phi_gap"] = fit_gaussians(phi, members)["mean"] - fit_gaussians(phi, ~members)["mean"]
    return result
