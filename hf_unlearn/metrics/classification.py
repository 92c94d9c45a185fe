"""Numeric metrics for evaluating unlearning of classifiers.

Every function works on already computed logits and labels (numpy arrays or torch tensors), so the metrics can be
reused with any model family and are cheap to test. Inputs are converted to `np.float64` internally.

The metric names follow the unlearning literature (e.g. SalUn, "Model Sparsity Can Simplify Machine Unlearning"):

- **FA**: accuracy on the forget set (lower means more forgetting).
- **RA**: accuracy on the remain (retain) set.
- **TA**: accuracy on the test set (restricted to the retained classes for class-wise forgetting).
- **MIA**: percentage of forget rows a membership-inference attack still flags as training members.
- **Avg.D**: mean absolute gap of FA/RA/TA/MIA to a reference model (usually one retrained from scratch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .arrays import (
    _as_labels,
    _as_logits,
    _log_softmax,
    _percent,
    prediction_entropy,
)
from .mia import mia_entropy, mia_svc

__all__ = [
    "accuracy",
    "avg_gap",
    "classification_metrics",
    "js_divergence",
    "kl_divergence",
    "mia_entropy",
    "mia_svc",
    "per_class_accuracy",
    "prediction_entropy",
]


def accuracy(logits: Any, labels: Any) -> float:
    """Top-1 accuracy in percent.

    Args:
        logits (`torch.Tensor` or `np.ndarray` of shape `(n, num_classes)`):
            Unnormalised class scores (probabilities work as well, only the argmax is used).
        labels (`torch.Tensor` or `np.ndarray` of shape `(n,)`):
            Integer class ids.

    Returns:
        `float`: Accuracy in `[0, 100]`, or `float('nan')` when `n == 0`.
    """
    logits = _as_logits(logits, "logits")
    labels = _as_labels(labels, "labels", logits, "logits")
    if len(labels) == 0:
        return float("nan")
    return _percent(logits.argmax(axis=1) == labels)


def per_class_accuracy(logits: Any, labels: Any, num_classes: int) -> dict[int, float]:
    """Top-1 accuracy in percent for each class that occurs in `labels`.

    Args:
        logits (`torch.Tensor` or `np.ndarray` of shape `(n, num_classes)`):
            Unnormalised class scores.
        labels (`torch.Tensor` or `np.ndarray` of shape `(n,)`):
            Integer class ids.
        num_classes (`int`):
            Number of classes; only ids in `range(num_classes)` are reported.

    Returns:
        `dict[int, float]`: Maps class id to the accuracy (in `[0, 100]`) on the rows with that label. Classes absent
        from `labels` are omitted rather than reported as NaN.
    """
    logits = _as_logits(logits, "logits")
    labels = _as_labels(labels, "labels", logits, "logits")
    correct = logits.argmax(axis=1) == labels
    present = np.unique(labels)
    return {int(c): _percent(correct[labels == c]) for c in present if 0 <= c < num_classes}


def _paired_log_probs(ref_logits: Any, logits: Any) -> tuple[np.ndarray, np.ndarray]:
    ref = _as_logits(ref_logits, "ref_logits")
    cur = _as_logits(logits, "logits")
    if ref.shape != cur.shape:
        raise ValueError(f"`ref_logits` has shape {tuple(ref.shape)} but `logits` has shape {tuple(cur.shape)}.")
    return _log_softmax(ref), _log_softmax(cur)


def _row_kl(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    # Clipped at 0 because rounding can make the KL of (nearly) identical rows slightly negative.
    return np.maximum((np.exp(log_p) * (log_p - log_q)).sum(axis=1), 0.0)


def kl_divergence(ref_logits: Any, logits: Any) -> float:
    """Mean over rows of `KL(p_ref || p)`, with `p_ref = softmax(ref_logits)` and `p = softmax(logits)`.

    Uses log-softmax (log-sum-exp) so large logits do not overflow.

    Args:
        ref_logits (`torch.Tensor` or `np.ndarray` of shape `(n, num_classes)`):
            Logits of the reference model (e.g. retrained from scratch) on the same rows.
        logits (`torch.Tensor` or `np.ndarray` of shape `(n, num_classes)`):
            Logits of the evaluated model.

    Returns:
        `float`: Mean KL divergence in nats (`>= 0`, 0 for identical inputs), `float('nan')` when `n == 0`.
    """
    log_ref, log_cur = _paired_log_probs(ref_logits, logits)
    if len(log_ref) == 0:
        return float("nan")
    return float(_row_kl(log_ref, log_cur).mean())


def js_divergence(ref_logits: Any, logits: Any) -> float:
    """Mean over rows of the Jensen-Shannon divergence between `softmax(ref_logits)` and `softmax(logits)`.

    `JS(p, q) = (KL(p || m) + KL(q || m)) / 2` with `m = (p + q) / 2`, using natural logs.

    Args:
        ref_logits (`torch.Tensor` or `np.ndarray` of shape `(n, num_classes)`):
            Logits of the reference model on the same rows.
        logits (`torch.Tensor` or `np.ndarray` of shape `(n, num_classes)`):
            Logits of the evaluated model.

    Returns:
        `float`: Mean JS divergence in `[0, ln 2]` (symmetric, 0 for identical inputs), `float('nan')` when `n == 0`.
    """
    log_p, log_q = _paired_log_probs(ref_logits, logits)
    if len(log_p) == 0:
        return float("nan")
    # log(m) computed in log space so tiny probabilities do not underflow to log(0).
    log_m = np.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * (_row_kl(log_p, log_m) + _row_kl(log_q, log_m))
    return float(np.clip(js, 0.0, math.log(2.0)).mean())


def avg_gap(
    metrics: Mapping[str, Any],
    reference: Mapping[str, Any],
    keys: Sequence[str] = ("FA", "RA", "TA", "MIA"),
) -> float:
    """Average absolute gap ("Avg.D") between two metric dicts.

    Args:
        metrics (`dict`):
            Metrics of the evaluated model, e.g. the output of [`classification_metrics`].
        reference (`dict`):
            Metrics of the reference model (usually retrained from scratch without the forget set).
        keys (`Sequence[str]`, *optional*, defaults to `("FA", "RA", "TA", "MIA")`):
            Metric names to compare.

    Returns:
        `float`: `mean(|metrics[k] - reference[k]| for k in keys)`.

    Raises:
        `ValueError`: If `keys` is empty or a key is missing or `None` in either dict.
    """
    if not keys:
        raise ValueError("`keys` must name at least one metric.")
    for name, d in (("metrics", metrics), ("reference", reference)):
        for key in keys:
            if d.get(key) is None:
                raise ValueError(f"Key {key!r} is missing or None in `{name}`.")
    return float(np.mean([abs(float(metrics[k]) - float(reference[k])) for k in keys]))


def _optional_pair(logits: Any, labels: Any, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    if logits is None and labels is None:
        return None
    if logits is None or labels is None:
        raise ValueError(f"`{name}_logits` and `{name}_labels` must be given together.")
    arr = _as_logits(logits, f"{name}_logits")
    return arr, _as_labels(labels, f"{name}_labels", arr, f"{name}_logits")


def _test_split(
    test: tuple[np.ndarray, np.ndarray], forget_classes: Iterable[int] | None
) -> tuple[float, float | None, np.ndarray]:
    """Returns (TA, TA_forget, mask of the test rows used as MIA non-members)."""
    logits, labels = test
    if forget_classes is None:
        return accuracy(logits, labels), None, np.ones(len(labels), dtype=bool)
    in_forget = np.isin(labels, np.asarray(list(forget_classes), dtype=np.int64))
    ta = accuracy(logits[~in_forget], labels[~in_forget])
    ta_forget = accuracy(logits[in_forget], labels[in_forget]) if in_forget.any() else None
    # Non-members of the forgotten classes make the attack ask "does this class look seen?", which is the question
    # class-wise forgetting cares about; without such rows the whole test set is the best stand-in.
    mia_mask = in_forget if in_forget.any() else np.ones(len(labels), dtype=bool)
    return ta, ta_forget, mia_mask


def classification_metrics(
    *,
    forget_logits: Any,
    forget_labels: Any,
    remain_logits: Any,
    remain_labels: Any,
    test_logits: Any = None,
    test_labels: Any = None,
    forget_classes: Sequence[int] | None = None,
    reference_forget_logits: Any = None,
    reference_metrics: Mapping[str, Any] | None = None,
    seed: int = 0,
    mia_max_rows: int | None = 2000,
) -> dict[str, float | None]:
    """Computes the standard unlearning metrics of a classifier from its logits.

    Args:
        forget_logits (`torch.Tensor` or `np.ndarray` of shape `(n_forget, num_classes)`):
            Logits on the forget set.
        forget_labels (`torch.Tensor` or `np.ndarray` of shape `(n_forget,)`):
            Integer labels of the forget set.
        remain_logits (`torch.Tensor` or `np.ndarray` of shape `(n_remain, num_classes)`):
            Logits on the remain (retain) set; these are the members for the MIA.
        remain_labels (`torch.Tensor` or `np.ndarray` of shape `(n_remain,)`):
            Integer labels of the remain set.
        test_logits (`torch.Tensor` or `np.ndarray` of shape `(n_test, num_classes)`, *optional*):
            Logits on the test set; needed for TA, TA_forget and the MIAs.
        test_labels (`torch.Tensor` or `np.ndarray` of shape `(n_test,)`, *optional*):
            Integer labels of the test set; must be given together with `test_logits`.
        forget_classes (`list[int]`, *optional*):
            Class ids being forgotten (class-wise forgetting). When given, TA is measured on test rows of the other
            classes, TA_forget on test rows of these classes, and the MIA non-members are the test rows of these
            classes (all test rows if there are none).
        reference_forget_logits (`torch.Tensor` or `np.ndarray` of shape `(n_forget, num_classes)`, *optional*):
            Logits of a reference model (e.g. retrained) on the same forget rows; enables KL and JS.
        reference_metrics (`dict`, *optional*):
            Reference metrics with keys `FA`, `RA`, `TA`, `MIA`; enables `avg_d`.
        seed (`int`, *optional*, defaults to 0):
            Seed for the class-balancing subsample of the MIAs.
        mia_max_rows (`int`, *optional*, defaults to 2000):
            Cap on the rows used per side to train each MIA; `None` uses all rows.

    Returns:
        `dict[str, float | None]`: Keys `FA`, `RA`, `TA`, `TA_forget`, `MIA` (entropy attack, see [`mia_entropy`]),
        `MIA_svc` (see [`mia_svc`]), `KL`, `JS` and `avg_d`. Accuracies and MIAs are percentages. Values that
        cannot be computed from the given inputs are `None`; an accuracy over zero rows is `float('nan')`.
    """
    forget = _optional_pair(forget_logits, forget_labels, "forget")
    remain = _optional_pair(remain_logits, remain_labels, "remain")
    if forget is None or remain is None:
        raise ValueError("`forget_logits`/`forget_labels` and `remain_logits`/`remain_labels` are required.")
    test = _optional_pair(test_logits, test_labels, "test")

    out: dict[str, float | None] = dict.fromkeys(
        ("FA", "RA", "TA", "TA_forget", "MIA", "MIA_svc", "KL", "JS", "avg_d")
    )
    out["FA"] = accuracy(*forget)
    out["RA"] = accuracy(*remain)
    if test is not None:
        out["TA"], out["TA_forget"], mask = _test_split(test, forget_classes)
        nonmember = (test[0][mask], test[1][mask])
        out["MIA"] = mia_entropy(remain[0], nonmember[0], forget[0], seed=seed, max_rows=mia_max_rows)
        out["MIA_svc"] = mia_svc(*remain, *nonmember, *forget, seed=seed, max_rows=mia_max_rows)
    if reference_forget_logits is not None:
        ref = _as_logits(reference_forget_logits, "reference_forget_logits")
        if ref.shape != forget[0].shape:
            raise ValueError(
                f"`reference_forget_logits` has shape {tuple(ref.shape)} but `forget_logits` has shape "
                f"{tuple(forget[0].shape)}."
            )
        out["KL"] = kl_divergence(ref, forget[0])
        out["JS"] = js_divergence(ref, forget[0])
    if reference_metrics is not None:
        out["avg_d"] = avg_gap(out, reference_metrics)
    return out
