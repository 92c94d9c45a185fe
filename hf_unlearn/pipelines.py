"""`hf_unlearn.pipelines`: the class-conditional diffusion pipeline, whose code lives in the top-level `pipelines`
package (`pipelines/class_conditional.py`, installed with hf_unlearn) so that diffusers can load that file on its own
as a custom pipeline."""

from pipelines.class_conditional import (
    ClassConditionalPipeline,
    ClassConditionalPipelineOutput,
    default_null_class_id,
    predict_noise,
)

__all__ = ["ClassConditionalPipeline", "ClassConditionalPipelineOutput", "default_null_class_id", "predict_noise"]
