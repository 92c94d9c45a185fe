"""What SD3 and FLUX share in the text-to-image family: a `transformer` denoiser trained by flow matching.

The noise, target and weighting are those of diffusers' SD3 / FLUX training scripts (`train_dreambooth_lora_sd3.py`,
`train_dreambooth_flux.py`): a timestep index drawn by `compute_density_for_timestep_sampling` (logit-normal for SD3,
uniform for FLUX), its σ from a fresh `FlowMatchEulerDiscreteScheduler` of the checkpoint's config, x_t = (1 − σ)·x₀ +
σ·ε, the target the velocity ε − x₀, and the row weights of `compute_loss_weighting_for_sd3` (all 1 for these two
schemes). The remap and ESD targets are differences of predictions, so they hold under a velocity target unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .text_to_image import TextToImageFamily

# Joint attention mixes text and image tokens; these are its text-side weights (the text tokens' queries, keys,
# values, q/k norms and output), the closest thing to SD's cross-attention (`attn2`) in SD3 and FLUX blocks.
_TEXT_ATTENTION = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "norm_added_q", "norm_added_k")
# Where the prompt enters outside attention (the T5 / pooled-text embedders, time + pooled + guidance embedding,
# the output norm modulated by it, the output projection): left out of ESD-u's set, as SD's time embedding and
# output layers are.
_CONDITIONING = ("context_embedder", "time_text_embed", "norm_out", "proj_out")
# The rest of the double-stream blocks' text stream: it sees only text tokens, so ESD-u leaves it alone too.
_TEXT_STREAM = ("norm1_context", "ff_context")
# diffusers' SD3 and FLUX LoRA scripts adapt every joint-attention projection, image and text side.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class FlowMatchingTextToImageFamily(TextToImageFamily):
    r"""Base of the `transformer` variants ([`TextToImageSD3Family`], [`TextToImageFluxFamily`]); not loaded itself.

    `train_modules`: "all"; "cross_attention", the text-side weights of joint attention (`add_q_proj`,
    `add_k_proj`, `add_v_proj`, `to_add_out` and the text q/k norms); "cross_attention_kv", the text tokens' keys
    and values (`add_k_proj`, `add_v_proj`); "non_cross_attention" (ESD-u), everything but
    the text stream of the double-stream blocks (those, `norm1_context`, `ff_context`), the conditioning embedders
    (`context_embedder`, `time_text_embed`) and the output layers (`norm_out`, `proj_out`). FLUX's single-stream
    blocks have no text-only weights, so they are in ESD-u's set, not ESD-x's.
    """

    denoiser: ClassVar[str] = "transformer"
    # `compute_density_for_timestep_sampling` / `compute_loss_weighting_for_sd3` scheme of the training script.
    weighting_scheme: ClassVar[str] = "none"
    config_fields: ClassVar[tuple[str, ...]] = ("max_sequence_length",)
    max_sequence_length: ClassVar[int] = 512  # T5 tokens per prompt: each pipeline's default (the config's if set)

    def __init__(self, pipeline, config):
        super().__init__(pipeline, config)
        length = getattr(config, "max_sequence_length", None)
        if length is not None:
            if not 0 < length <= 512:
                raise ValueError(
                    f"`max_sequence_length` is {length}; give a number of T5 tokens from 1 to 512 (the limit of "
                    f"{self.pipeline_class})."
                )
            self.max_sequence_length = length

    @classmethod
    def handles(cls, components: set[str]) -> bool:
        raise NotImplementedError

    def _check_unet(self, model) -> None:
        if type(model).__name__ != self.denoiser_class:
            raise ValueError(
                f"The pipeline's `transformer` is a {type(model).__name__}; a {self.pipeline_class} trains a "
                f"{self.denoiser_class} (load the checkpoint with its own pipeline class)."
            )

    @staticmethod
    def training_scheduler(scheduler):
        from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: PLC0415

        # A fresh copy, as the training scripts keep (`noise_scheduler_copy`): sampling moves the pipeline's own one.
        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)

    def model_defaults(self) -> dict:
        return {"lora_target_modules": list(LORA_TARGETS)}

    def trainable_parameter_filter(self, name: str) -> bool:
        if self.train_modules == "cross_attention":
            return any(f".{part}." in name for part in _TEXT_ATTENTION)
        if self.train_modules == "cross_attention_kv":  # the text tokens' keys and values, as SD's attn2.to_k / to_v
            return ".add_k_proj." in name or ".add_v_proj." in name
        if self.train_modules == "non_cross_attention":
            parts = _TEXT_ATTENTION + _TEXT_STREAM + _CONDITIONING
            return not any(f".{part}." in name or name.startswith(f"{part}.") for part in parts)
        return True

    def key_value_projections(self, model):
        raise ValueError(
            f"`method` is 'uce', a closed-form edit of cross-attention keys/values, but a {self.pipeline_class}'s "
            "text projections read timestep-modulated states that no single closed form covers; use "
            "`method='anchor_remap'` (the family default), which trains the same projections."
        )

    # Flow matching
    def _noised(self, latents: torch.Tensor):
        """x_t = (1 − σ)·x₀ + σ·ε at timesteps drawn as the training scripts draw them; returns the scheduler's
        timesteps (σ · num_train_timesteps), from which σ is recovered."""
        from diffusers.training_utils import compute_density_for_timestep_sampling  # noqa: PLC0415

        u = compute_density_for_timestep_sampling(
            self.weighting_scheme, latents.shape[0], logit_mean=0.0, logit_std=1.0, mode_scale=1.29
        )
        indices = (u * self.noise_scheduler.config.num_train_timesteps).long()
        timesteps = self.noise_scheduler.timesteps[indices].to(latents.device)
        sigmas = self._sigmas(timesteps, latents.ndim, latents.dtype)
        noise = torch.randn_like(latents)
        return (1.0 - sigmas) * latents + sigmas * noise, noise, timesteps

    def _sigmas(self, timesteps: torch.Tensor, ndim: int, dtype: torch.dtype) -> torch.Tensor:
        sigmas = timesteps.to(torch.float32) / self.noise_scheduler.config.num_train_timesteps
        return sigmas.to(dtype).reshape(-1, *[1] * (ndim - 1))

    def _noise_target(self, latents, noise, timesteps):
        return noise - latents

    def _weighted(self, rows, timesteps):
        from diffusers.training_utils import compute_loss_weighting_for_sd3  # noqa: PLC0415

        if self.weighting_scheme not in ("sigma_sqrt", "cosmap"):  # the others weigh every row 1
            return rows
        sigmas = self._sigmas(timesteps, 1, torch.float32)
        return rows * compute_loss_weighting_for_sd3(self.weighting_scheme, sigmas)

    # Shared conditioning helpers
    def _tokenize_each(self, prompts: list[str], tokenizers_and_lengths) -> torch.Tensor:
        """Every tokenizer's padded ids side by side, `(batch, sum of lengths)`, as the pipelines pad them."""
        ids = [
            tokenizer(
                list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids
            for tokenizer, length in tokenizers_and_lengths
        ]
        return torch.cat(ids, dim=1)

    def _stack_rows(self, rows: list) -> dict[str, torch.Tensor]:
        return {
            "encoder_hidden_states": torch.stack([states for states, _ in rows]),
            "pooled_projections": torch.stack([pooled for _, pooled in rows]),
        }

    def unconditional(self, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The encoded empty prompt (what the pipelines' negative branch encodes for `negative_prompt=""`)."""
        device, batch = cond["pooled_projections"].device, len(cond["pooled_projections"])
        empty = self.encode_prompts(self.tokenize([""]).to(device))
        return {key: value.expand(batch, *value.shape[1:]) for key, value in empty.items()}


__all__ = ["LORA_TARGETS", "FlowMatchingTextToImageFamily"]
