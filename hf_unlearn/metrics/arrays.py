"""Array helpers shared by the classification and membership-inference metrics: inputs as `np.float64`, checked
shapes, softmax and entropy."""

from __future__ import annotations

from typing import Any

import numpy as np

# Floor for probabilities before taking a log: keeps 0 * log(0) at 0 instead of NaN.
_EPS = 1e-12


def _to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    # Duck-typed torch support so this module does not need torch; float64 first because numpy has no bfloat16.
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _as_logits(logits: Any, name: str) -> np.ndarray:
    arr = _to_numpy(logits)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, num_classes), got shape {tuple(arr.shape)}.")
    return arr


def _as_labels(labels: Any, name: str, logits: np.ndarray, logits_name: str) -> np.ndarray:
    arr = _to_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must have shape (n,), got shape {tuple(arr.shape)}.")
    if len(arr) != len(logits):
        raise ValueError(f"`{name}` has {len(arr)} rows but `{logits_name}` has {len(logits)}.")
    if not np.all(np.mod(arr, 1) == 0):
        raise ValueError(f"`{name}` must contain integer class ids.")
    return arr.astype(np.int64)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(logits))


def _percent(correct: np.ndarray) -> float:
    return float("nan") if correct.size == 0 else float(100.0 * correct.mean())


def prediction_entropy(probs: Any) -> np.ndarray:
    """Shannon entropy (natural log) of each row of a probability matrix.

    Args:
        probs (`torch.Tensor` or `np.ndarray` of shape `(n, num_classes)`):
            Rows of class probabilities (e.g. a softmax output).

    Returns:
        `np.ndarray` of shape `(n,)`: Entropy per row, in `[0, ln(num_classes)]`. Zero probabilities contribute 0.
    """
    probs = _as_logits(probs, "probs")
    return -(probs * np.log(np.clip(probs, _EPS, None))).sum(axis=1)


def _check_same_classes(*named: tuple[str, np.ndarray]) -> None:
    first_name, first = named[0]
    for name, arr in named[1:]:
        if arr.shape[1] != first.shape[1]:
            raise ValueError(f"`{name}` has {arr.shape[1]} classes but `{first_name}` has {first.shape[1]}.")
