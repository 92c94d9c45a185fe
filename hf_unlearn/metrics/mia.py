"""Membership-inference attacks on a classifier's outputs (the MIA column): a classifier trained on remain rows
(members) against test rows (non-members) on one feature, then applied to the forget rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import _as_labels, _as_logits, _check_same_classes, _percent, _softmax, prediction_entropy


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
