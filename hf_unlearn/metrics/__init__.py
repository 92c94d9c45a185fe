from .classification import (
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
