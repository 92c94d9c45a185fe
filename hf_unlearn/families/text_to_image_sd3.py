"""Stable Diffusion 3 (`StableDiffusion3Pipeline`) in the text-to-image family: an `SD3Transformer2DModel` trained by
flow matching, conditioned on two CLIP encoders and a T5 encoder; VAE and text encoders frozen."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .text_to_image_flow import FlowMatchingTextToImageFamily


class TextToImageSD3Family(FlowMatchingTextToImageFamily):
    r"""An SD3 pipeline whose `SD3Transformer2DModel` is unlearned; VAE and the three text encoders are frozen.

    Loaded by [`TextToImageFamily.from_pretrained`] (hence by detection and `family="text_to_image"`) for any pipeline,
    folder or repo id with a `transformer` and a `text_encoder_3`; its `name` stays `"text_to_image"`, so every method
    and default of the family applies unchanged.

    The conditioning is what `StableDiffusion3Pipeline.encode_prompt` computes for a prompt (`clip_skip=None`,
    `max_sequence_length`: the config's, else 256, its default): both CLIP encoders' penultimate states concatenated,
    zero-padded to T5's width and followed along the sequence by T5's last hidden states (`encoder_hidden_states`), and
    both CLIP encoders' projected pooled outputs concatenated (`pooled_projections`). The empty prompt is the encoded
    `""`, as the pipeline's negative branch. Training noise is flow matching with logit-normal timesteps (the default
    `weighting_scheme` of diffusers' SD3 scripts), target ε − x₀ (the LoRA script's; the full fine-tuning script's
    `precondition_outputs=1` is the same error weighted by σ²).

    Args:
        pipeline (`StableDiffusion3Pipeline`): the pipeline; its VAE and text encoders are frozen.
        config ([`UnlearnConfig`]): as for [`TextToImageFamily`].
    """

    pipeline_class: ClassVar[str] = "StableDiffusion3Pipeline"
    denoiser_class: ClassVar[str] = "SD3Transformer2DModel"
    required_components: ClassVar[tuple[str, ...]] = (
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "scheduler",
    )
    weighting_scheme: ClassVar[str] = "logit_normal"
    max_sequence_length: ClassVar[int] = 256  # the pipeline's `encode_prompt` / `__call__` default

    def __init__(self, pipeline, config):
        for part in ("text_encoder_2", "text_encoder_3", "tokenizer_2", "tokenizer_3"):
            setattr(self, part, getattr(pipeline, part, None))
        super().__init__(pipeline, config)

    @classmethod
    def handles(cls, components: set[str]) -> bool:
        """A pipeline with a `transformer` and a third (T5) text encoder."""
        return {"transformer", "text_encoder_3"} <= components

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder, self.text_encoder_2, self.text_encoder_3]

    def _check_resolution(self, resolution: int) -> None:
        multiple = self.vae_scale_factor * int(self.model.config.patch_size)
        if resolution % multiple:
            raise ValueError(
                f"`resolution` is {resolution}, but this SD3 transformer and VAE need a multiple of {multiple} "
                f"(e.g. {max(multiple, resolution // multiple * multiple)})."
            )

    @property
    def _clip_length(self) -> int:
        return int(self.tokenizer.model_max_length)  # the pipeline's `tokenizer_max_length`, for both CLIPs

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Both CLIP tokenizers' ids and T5's side by side: one tensor, as batches carry."""
        length = self._clip_length
        pairs = ((self.tokenizer, length), (self.tokenizer_2, length), (self.tokenizer_3, self.max_sequence_length))
        return self._tokenize_each(prompts, pairs)

    def _encode_rows(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # The steps of `StableDiffusion3Pipeline.encode_prompt` on token ids (batches carry ids: cacheable, moved).
        length = self._clip_length
        first = self.text_encoder(ids[:, :length], output_hidden_states=True)
        second = self.text_encoder_2(ids[:, length : 2 * length], output_hidden_states=True)
        t5 = self.text_encoder_3(ids[:, 2 * length :])[0]
        clip = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        states = torch.cat([clip, t5.to(clip.dtype)], dim=-2)
        pooled = torch.cat([first[0], second[0]], dim=-1)
        return list(zip(states, pooled))

    def predict(self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, states: dict[str, torch.Tensor]):
        """The transformer's velocity at x_t, t for the conditioning `states` (`encode_prompts`)."""
        return model(
            hidden_states=noisy,
            timestep=timesteps,
            encoder_hidden_states=states["encoder_hidden_states"],
            pooled_projections=states["pooled_projections"],
        ).sample


__all__ = ["TextToImageSD3Family"]
