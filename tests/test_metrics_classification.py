import math

import numpy as np
import pytest
import torch

from hf_unlearn.metrics.classification import (
    accuracy,
    avg_gap,
    classification_metrics,
    js_divergence,
    kl_divergence,
    mia_entropy,
    mia_svc,
    per_class_accuracy,
    prediction_entropy,
)

NUM_CLASSES = 10


def confident_logits(labels, rng, scale=12.0):
    """Low-entropy rows that put almost all mass on the given label, like memorised training rows."""
    logits = rng.normal(0.0, 0.1, size=(len(labels), NUM_CLASSES))
    logits[np.arange(len(labels)), labels] += scale
    return logits


def uncertain_logits(n, rng):
    """Near-uniform rows (entropy close to ln(C)), like rows the model never saw."""
    return rng.normal(0.0, 0.1, size=(n, NUM_CLASSES))


@pytest.fixture
def rng():
    return np.random.default_rng(123)


def test_accuracy_known_logits_numpy_and_torch():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
    labels = np.array([0, 1, 0, 2])
    assert accuracy(logits, labels) == pytest.approx(50.0)
    assert accuracy(torch.tensor(logits, dtype=torch.bfloat16), torch.tensor(labels)) == pytest.approx(50.0)
    assert math.isnan(accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))


def test_per_class_accuracy_omits_absent_classes():
    logits = np.eye(4)[[0, 0, 1, 2, 2, 2]]
    labels = np.array([0, 1, 1, 2, 2, 0])
    result = per_class_accuracy(logits, labels, num_classes=4)
    assert result == pytest.approx({0: 50.0, 1: 50.0, 2: 100.0})
    assert 3 not in result


def test_prediction_entropy_bounds_and_zero_probs():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    ent = prediction_entropy(probs)
    assert np.all(np.isfinite(ent))
    np.testing.assert_allclose(ent, [0.0, math.log(3), math.log(2)], atol=1e-9)


def test_kl_and_js_are_zero_for_identical_inputs(rng):
    logits = rng.normal(size=(8, 5)) * 30  # large logits exercise the log-sum-exp path
    assert kl_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)


def test_kl_positive_js_symmetric_and_bounded(rng):
    a, b = rng.normal(size=(16, 5)), rng.normal(size=(16, 5)) * 3
    assert kl_divergence(a, b) > 0
    assert kl_divergence(a, b) != pytest.approx(kl_divergence(b, a))
    assert js_divergence(a, b) == pytest.approx(js_divergence(b, a))
    # Opposite near one-hot rows approach the ln 2 upper bound without exceeding it.
    far = js_divergence(np.array([[50.0, -50.0]]), np.array([[-50.0, 50.0]]))
    assert 0.69 < far <= math.log(2) + 1e-12


def test_kl_two_class_closed_form():
    p, q = 0.8, 0.3
    ref_logits = np.array([[math.log(p), math.log(1 - p)]])
    logits = np.array([[math.log(q), math.log(1 - q)]])
    expected_kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert kl_divergence(ref_logits, logits) == pytest.approx(expected_kl, rel=1e-10)

    m = (p + q) / 2
    kl_pm = p * math.log(p / m) + (1 - p) * math.log((1 - p) / (1 - m))
    kl_qm = q * math.log(q / m) + (1 - q) * math.log((1 - q) / (1 - m))
    assert js_divergence(ref_logits, logits) == pytest.approx(0.5 * (kl_pm + kl_qm), rel=1e-10)


def test_mia_entropy_separable(rng):
    remain_labels = rng.integers(0, NUM_CLASSES, 300)
    remain = confident_logits(remain_labels, rng)
    test = uncertain_logits(60, rng)  # imbalanced on purpose: balancing must keep the attack fair
    forget_like_remain = confident_logits(rng.integers(0, NUM_CLASSES, 40), rng)
    forget_like_test = uncertain_logits(40, rng)
    assert mia_entropy(remain, test, forget_like_remain) == pytest.approx(100.0)
    assert mia_entropy(remain, test, forget_like_test) == pytest.approx(0.0)
    assert mia_entropy(remain, test, forget_like_remain, max_rows=10) == pytest.approx(100.0)


def test_mia_svc_separable(rng):
    remain_labels, test_labels = rng.integers(0, NUM_CLASSES, 200), rng.integers(0, NUM_CLASSES, 80)
    remain, test = confident_logits(remain_labels, rng), uncertain_logits(80, rng)
    forget_labels = rng.integers(0, NUM_CLASSES, 30)
    seen = confident_logits(forget_labels, rng)
    unseen = uncertain_logits(30, rng)
    args = (remain, remain_labels, test, test_labels)
    assert mia_svc(*args, seen, forget_labels) == pytest.approx(100.0)
    assert mia_svc(*args, unseen, forget_labels) == pytest.approx(0.0)
    # A confident but wrong prediction has low true-label probability, so the SVC sees it as a non-member.
    assert mia_svc(*args, seen, (forget_labels + 1) % NUM_CLASSES) == pytest.approx(0.0)


def test_mia_is_deterministic_for_a_seed(rng):
    remain, test = rng.normal(size=(100, 4)), rng.normal(size=(50, 4))
    forget = rng.normal(size=(30, 4))
    assert mia_entropy(remain, test, forget, seed=7) == mia_entropy(remain, test, forget, seed=7)


def test_avg_gap_arithmetic_and_missing_key():
    metrics = {"FA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 20.0}
    reference = {"FA": 12.0, "RA": 94.0, "TA": 79.0, "MIA": 25.0}
    assert avg_gap(metrics, reference) == pytest.approx((2 + 4 + 1 + 5) / 4)
    assert avg_gap(metrics, reference, keys=("FA",)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="'MIA'"):
        avg_gap(metrics, {**reference, "MIA": None})
    with pytest.raises(ValueError, match="'TA'"):
        avg_gap({k: v for k, v in metrics.items() if k != "TA"}, reference)


def _classwise_data(rng):
    """Class 0 is forgotten: the model now fails on it, but still gets the other classes right."""
    forget_labels = np.zeros(40, dtype=int)
    forget = uncertain_logits(40, rng)
    forget[:, 1] += 5  # predicts class 1, so FA = 0
    remain_labels = rng.integers(1, NUM_CLASSES, 200)
    remain = confident_logits(remain_labels, rng)
    test_labels = np.array([0] * 10 + [1, 2, 3, 4] * 5)
    test = confident_logits(test_labels, rng, scale=3.0)
    test[:10] = uncertain_logits(10, rng)
    test[:4, 0] += 5  # 4 of 10 forgotten-class test rows still correct
    test[10:15] = np.roll(test[10:15], 1, axis=1)  # 5 of 20 retained-class test rows wrong
    return forget, forget_labels, remain, remain_labels, test, test_labels


def test_classification_metrics_classwise_split(rng):
    forget, forget_labels, remain, remain_labels, test, test_labels = _classwise_data(rng)
    reference = {"FA": 0.0, "RA": 100.0, "TA": 75.0, "MIA": 0.0}
    out = classification_metrics(
        forget_logits=forget,
        forget_labels=forget_labels,
        remain_logits=remain,
        remain_labels=remain_labels,
        test_logits=torch.tensor(test),
        test_labels=torch.tensor(test_labels),
        forget_classes=[0],
        reference_forget_logits=forget,
        reference_metrics=reference,
    )
    assert set(out) == {"FA", "RA", "TA", "TA_forget", "MIA", "MIA_svc", "KL", "JS", "avg_d"}
    assert out["FA"] == pytest.approx(0.0)
    assert out["RA"] == pytest.approx(100.0)
    assert out["TA"] == pytest.approx(75.0)
    assert out["TA_forget"] == pytest.approx(40.0)
    assert 0.0 <= out["MIA"] <= 100.0 and 0.0 <= out["MIA_svc"] <= 100.0
    assert out["KL"] == pytest.approx(0.0, abs=1e-12) and out["JS"] == pytest.approx(0.0, abs=1e-12)
    assert out["avg_d"] == pytest.approx(out["MIA"] / 4)


def test_classification_metrics_none_handling(rng):
    forget, forget_labels, remain, remain_labels, test, test_labels = _classwise_data(rng)
    base = dict(forget_logits=forget, forget_labels=forget_labels, remain_logits=remain, remain_labels=remain_labels)
    out = classification_metrics(**base)
    assert out["FA"] == pytest.approx(0.0)
    assert all(out[k] is None for k in ("TA", "TA_forget", "MIA", "MIA_svc", "KL", "JS", "avg_d"))

    out = classification_metrics(**base, test_logits=test, test_labels=test_labels)
    assert out["TA"] == pytest.approx(accuracy(test, test_labels))
    assert out["TA_forget"] is None and out["MIA"] is not None

    # No test rows of the forgotten class: TA_forget is None and the MIA falls back to all test rows.
    out = classification_metrics(**base, test_logits=test[10:], test_labels=test_labels[10:], forget_classes=[0])
    assert out["TA"] == pytest.approx(75.0) and out["TA_forget"] is None
    assert out["MIA"] == pytest.approx(mia_entropy(remain, test[10:], forget, max_rows=2000))


def test_shape_mismatch_errors(rng):
    logits, labels = rng.normal(size=(10, 3)), np.zeros(12, dtype=int)
    with pytest.raises(ValueError, match="`forget_labels` has 12 rows but `forget_logits` has 10"):
        classification_metrics(
            forget_logits=logits, forget_labels=labels, remain_logits=logits, remain_labels=labels[:10]
        )
    with pytest.raises(ValueError, match="`labels` has 12 rows"):
        accuracy(logits, labels)
    with pytest.raises(ValueError, match="`logits` must have shape"):
        accuracy(logits[0], labels[:1])
    with pytest.raises(ValueError, match="`ref_logits` has shape"):
        kl_divergence(logits, logits[:5])
    with pytest.raises(ValueError, match="`reference_forget_logits`"):
        classification_metrics(
            forget_logits=logits,
            forget_labels=labels[:10],
            remain_logits=logits,
            remain_labels=labels[:10],
            reference_forget_logits=logits[:, :2],
        )
    with pytest.raises(ValueError, match="`test_logits` and `test_labels` must be given together"):
        classification_metrics(
            forget_logits=logits,
            forget_labels=labels[:10],
            remain_logits=logits,
            remain_labels=labels[:10],
            test_logits=logits,
        )
    with pytest.raises(ValueError, match="`test_logits` has 4 classes"):
        mia_entropy(logits, rng.normal(size=(5, 4)), logits)
