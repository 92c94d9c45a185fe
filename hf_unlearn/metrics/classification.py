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


def _balanced_indices(n_member: int, n_nonmember: int, rng: np.random.Generator, max_rows: int | None):
    # Equal class sizes so the attack cannot score well just by predicting the majority class.
    n = min(n_member, n_nonmember)
    if max_rows is not None:
        n = min(n, int(max_rows))
    member_idx = np.sort(rng.choice(n_member, size=n, replace=False))
    nonmember_idx = np.sort(rng.choice(n_nonmember, size=n, replace=False))
    return member_idx, nonmember_idx


def _run_attack(
    model: Any,
    member_feat: np.ndarray,
    nonmember_feat: np.ndarray,
    target_feat: np.ndarray,
    seed: int,
    max_rows: int | None,
) -> float:
    if len(member_feat) == 0 or len(nonmember_feat) == 0:
        raise ValueError("The membership-inference attack needs at least one member (remain) and one test row.")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"`max_rows` must be a positive integer or None, got {max_rows}.")
    if len(target_feat) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    m_idx, n_idx = _balanced_indices(len(member_feat), len(nonmember_feat), rng, max_rows)
    x = np.concatenate([member_feat[m_idx], nonmember_feat[n_idx]]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(m_idx)), np.zeros(len(n_idx))])
    model.fit(x, y)
    return _percent(model.predict(target_feat.reshape(-1, 1)) == 1)


def _logits_entropy(logits: np.ndarray) -> np.ndarray:
    return prediction_entropy(_softmax(logits))


def mia_entropy(
    remain_logits: Any,
    test_logits: Any,
    forget_logits: Any,
    seed: int = 0,
    max_rows: int | None = None,
) -> float:
    """Entropy-based membership-inference attack (MIA).

    A logistic regression is trained on the prediction entropy of each row (a single feature), with remain rows
    labelled member (1) and test rows labelled non-member (0). The larger side is subsampled (with
    `np.random.default_rng(seed)`) to the size of the smaller one so the attack is not biased by class imbalance.
    The attack is then applied to the forget rows.

    Args:
        remain_logits (`torch.Tensor` or `np.ndarray` of shape `(n_remain, num_classes)`):
            Logits on data the model was trained on and should keep (members).
        test_logits (`torch.Tensor` or `np.ndarray` of shape `(n_test, num_classes)`):
            Logits on held-out data (non-members).
        forget_logits (`torch.Tensor` or `np.ndarray` of shape `(n_forget, num_classes)`):
            Logits on the data to be forgotten.
        seed (`int`, *optional*, defaults to 0):
            Seed for the balancing subsample.
        max_rows (`int`, *optional*):
            Cap on the number of rows used from each side for training the attack, for speed.

    Returns:
        `float`: Percentage (`[0, 100]`) of forget rows predicted to be members; lower means the forget set looks
        more like unseen data. `float('nan')` when there are no forget rows.
    """
    from sklearn.linear_model import LogisticRegression

    remain = _as_logits(remain_logits, "remain_logits")
    test = _as_logits(test_logits, "test_logits")
    forget = _as_logits(forget_logits, "forget_logits")
    _check_same_classes(("remain_logits", remain), ("test_logits", test), ("forget_logits", forget))
    return _run_attack(
        LogisticRegression(),
        _logits_entropy(remain),
        _logits_entropy(test),
        _logits_entropy(forget),
        seed,
        max_rows,
    )


def _true_label_prob(logits: np.ndarray, labels: np.ndarray, labels_name: str) -> np.ndarray:
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"`{labels_name}` contains class ids outside [0, {logits.shape[1]}).")
    return _softmax(logits)[np.arange(len(labels)), labels]


def mia_svc(
    remain_logits: Any,
    remain_labels: Any,
    test_logits: Any,
    test_labels: Any,
    forget_logits: Any,
    forget_labels: Any,
    seed: int = 0,
    max_rows: int | None = None,
) -> float:
    """Confidence-based SVC membership-inference attack, as used by SalUn and "Unlearn-Sparse".

    The feature of each row is the softmax probability of its true label. An `sklearn.svm.SVC(C=3, gamma="auto",
    kernel="rbf")` is trained on remain rows (member, 1) versus test rows (non-member, 0), balanced by subsampling the
    larger side with `np.random.default_rng(seed)`, and then applied to the forget rows.

    SalUn reports "MIA-efficacy", which is `100 - mia_svc(...)` (the share of forget rows classified as
    non-members).

    Args:
        remain_logits (`torch.Tensor` or `np.ndarray` of shape `(n_remain, num_classes)`):
            Logits on data the model was trained on and should keep (members).
        remain_labels (`torch.Tensor` or `np.ndarray` of shape `(n_remain,)`):
            Integer labels of the remain rows.
        test_logits (`torch.Tensor` or `np.ndarray` of shape `(n_test, num_classes)`):
            Logits on held-out data (non-members).
        test_labels (`torch.Tensor` or `np.ndarray` of shape `(n_test,)`):
            Integer labels of the test rows.
        forget_logits (`torch.Tensor` or `np.ndarray` of shape `(n_forget, num_classes)`):
            Logits on the data to be forgotten.
        forget_labels (`torch.Tensor` or `np.ndarray` of shape `(n_forget,)`):
            Integer labels of the forget rows.
        seed (`int`, *optional*, defaults to 0):
            Seed for the balancing subsample.
        max_rows (`int`, *optional*):
            Cap on the number of rows used from each side for training the attack, for speed.

    Returns:
        `float`: Percentage (`[0, 100]`) of forget rows predicted to be members. `float('nan')` when there are no
        forget rows.
    """
    from sklearn.svm import SVC

    feats = []
    for prefix, logits, labels in (
        ("remain", remain_logits, remain_labels),
        ("test", test_logits, test_labels),
        ("forget", forget_logits, forget_labels),
    ):
        arr = _as_logits(logits, f"{prefix}_logits")
        lab = _as_labels(labels, f"{prefix}_labels", arr, f"{prefix}_logits")
        feats.append((f"{prefix}_logits", arr, lab))
    _check_same_classes(*[(name, arr) for name, arr, _ in feats])
    probs = [_true_label_prob(arr, lab, name.replace("logits", "labels")) for name, arr, lab in feats]
    return _run_attack(SVC(C=3, gamma="auto", kernel="rbf"), *probs, seed, max_rows)


def _check_same_classes(*named: tuple[str, np.ndarray]) -> None:
    first_name, first = named[0]
    for name, arr in named[1:]:
        if arr.shape[1] != first.shape[1]:
            raise ValueError(f"`{name}` has {arr.shape[1]} classes but `{first_name}` has {first.shape[1]}.")


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
