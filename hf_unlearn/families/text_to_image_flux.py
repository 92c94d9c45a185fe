"""FLUX (`FluxPipeline`) in the text-to-image family: a `FluxTransformer2DModel` trained by flow matching on packed
latents, conditioned on T5 states, CLIP's pooled output and (FLUX-dev) a guidance embedding; VAE, encoders frozen."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .text_to_image_flow import FlowMatchingTextToImageFamily


class TextToImageFluxFamily(FlowMatchingTextToImageFamily):
    r"""A FLUX pipeline whose `FluxTransformer2DModel` is unlearned; VAE, CLIP and T5 encoders are frozen.

    Loaded by [`TextToImageFamily.from_pretrained`] for any pipeline, folder or repo id with a `transformer` and a
    `text_encoder_2` but no `text_encoder_3`; its `name` stays `"text_to_image"`.

    The conditioning is what `FluxPipeline.encode_prompt` computes (`max_sequence_length`: the config's, else 512, the
    pipeline's default): T5's last hidden states (`encoder_hidden_states`), the pooled output of the CLIP encoder
    (`pooled_projections`), zero text position ids; `predict` packs the latents into 2×2 patches as
    `FluxPipeline._pack_latents` does, with the pipeline's image position ids, passes the timestep divided by 1000,
    and, for a guidance-distilled transformer (`guidance_embeds`, FLUX-dev), the guidance embedding at the config's
    `flux_guidance_scale` (else 3.5, the pipeline's and diffusers' FLUX training scripts' default), then unpacks the
    prediction. The empty prompt is the encoded `""` (what the pipeline's true-CFG branch encodes for
    `negative_prompt=""`), at the same guidance embedding. Training noise is flow matching with uniform timesteps
    (`weighting_scheme="none"`, the FLUX scripts' default), target ε − x₀.

    Args:
        pipeline (`FluxPipeline`): the pipeline; its VAE and text encoders are frozen.
        config ([`UnlearnConfig`]): as for [`TextToImageFamily`]; `resolution` defaults to the pipeline's default
            size (its `default_sample_size` times the VAE factor: 1024 for FLUX.1).
    """

    pipeline_class: ClassVar[str] = "FluxPipeline"
    denoiser_class: ClassVar[str] = "FluxTransformer2DModel"
    required_components: ClassVar[tuple[str, ...]] = (
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    )
    max_sequence_length: ClassVar[int] = 512  # the pipeline's `encode_prompt` / `__call__` default
    guidance_scale: float = 3.5  # the guidance embedding's value in every prediction (FLUX-dev; the config's if set)
    config_fields: ClassVar[tuple[str, ...]] = ("max_sequence_length", "flux_guidance_scale")

    def __init__(self, pipeline, config):
        self.text_encoder_2 = getattr(pipeline, "text_encoder_2", None)
        self.tokenizer_2 = getattr(pipeline, "tokenizer_2", None)
        self.default_sample_size = int(getattr(pipeline, "default_sample_size", 128))
        super().__init__(pipeline, config)
        self.guidance_embeds = bool(self.model.config.guidance_embeds)
        scale = getattr(config, "flux_guidance_scale", None)
        if scale is not None:
            if not self.guidance_embeds:
                raise ValueError(
                    "`flux_guidance_scale` is set, but this FLUX transformer has no guidance embedding "
                    "(`guidance_embeds` is false, as FLUX.1-schnell); leave it unset."
                )
            self.guidance_scale = float(scale)

    @classmethod
    def handles(cls, components: set[str]) -> bool:
        """A pipeline with a `transformer` and a second (T5) text encoder, and no third one (that is SD3)."""
        return {"transformer", "text_encoder_2"} <= components and "text_encoder_3" not in components

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    def native_resolution(self) -> int:
        return self.default_sample_size * self.vae_scale_factor

    def _check_resolution(self, resolution: int) -> None:
        multiple = self.vae_scale_factor * 2  # latents are packed in 2×2 patches
        if resolution % multiple:
            raise ValueError(
                f"`resolution` is {resolution}, but FLUX packs latents in 2×2 patches: with this VAE it needs a "
                f"multiple of {multiple} (e.g. {max(multiple, resolution // multiple * multiple)})."
            )

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """The CLIP tokenizer's ids and T5's side by side: one tensor, as batches carry."""
        pairs = ((self.tokenizer, int(self.tokenizer.model_max_length)), (self.tokenizer_2, self.max_sequence_length))
        return self._tokenize_each(prompts, pairs)

    def _encode_rows(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # The steps of `FluxPipeline.encode_prompt` on token ids: CLIP's pooled output only, T5's last states.
        length = int(self.tokenizer.model_max_length)
        pooled = self.text_encoder(ids[:, :length], output_hidden_states=False).pooler_output
        states = self.text_encoder_2(ids[:, length:], output_hidden_states=False)[0]
        return list(zip(states, pooled.to(states.dtype)))

    def predict(self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, states: dict[str, torch.Tensor]):
        """The transformer's velocity at x_t, t (unpacked to the latents' shape) for the conditioning `states`."""
        from diffusers import FluxPipeline  # noqa: PLC0415

        batch, channels, height, width = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, noisy.dtype)
        text = states["encoder_hidden_states"]
        text_ids = torch.zeros(text.shape[1], 3, device=text.device, dtype=text.dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((batch,), self.guidance_scale, device=noisy.device, dtype=torch.float32)
        out = model(
            hidden_states=packed,
            timestep=timesteps.to(noisy.dtype) / 1000,
            guidance=guidance,
            pooled_projections=states["pooled_projections"],
            encoder_hidden_states=text,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        scale = self.vae_scale_factor
        return FluxPipeline._unpack_latents(out, height * scale, width * scale, scale)


__all__ = ["TextToImageFluxFamily"]
