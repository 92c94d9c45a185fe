"""Diffusers pipelines shipped with hf_unlearn (also importable as `hf_unlearn.pipelines`)."""

from .class_conditional import ClassConditionalPipeline, ClassConditionalPipelineOutput

__all__ = ["ClassConditionalPipeline", "ClassConditionalPipelineOutput"]
