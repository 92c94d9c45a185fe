"""Diffusers pipelines shipped with hf_unlearn: the code itself, one self-contained file per pipeline (also importable
as `hf_unlearn.pipelines`)."""

from .class_conditional import (
    ClassConditionalPipeline,
    ClassConditionalPipelineOutput,
    default_null_class_id,
    predict_noise,
)

__all__ = ["ClassConditionalPipeline", "ClassConditionalPipelineOutput", "default_null_class_id", "predict_noise"]
