"""`ClassConditionalPipeline`: class-conditional DDPM/DDIM sampling with classifier-free guidance for a diffusers
`UNet2DModel` or `DiTTransformer2DModel`. The implementation lives in `hf_unlearn.pipelines`; this module re-exports it
so that `from pipelines.class_conditional import ClassConditionalPipeline` works as well."""

from hf_unlearn.pipelines import (
    ClassConditionalPipeline,
    ClassConditionalPipelineOutput,
    default_null_class_id,
    predict_noise,
)

__all__ = ["ClassConditionalPipeline", "ClassConditionalPipelineOutput", "default_null_class_id", "predict_noise"]
