"""Stable Diffusion XL (`StableDiffusionXLPipeline`) in the text-to-image family: two text encoders, a pooled text
embedding and size conditioning (`added_cond_kwargs`) beside the cross-attention states.

Everything else (data, noise, losses, trainable subsets, LoRA, saving) is [`TextToImageFamily`]'s: the losses only see
the conditioning through `encode_prompts`, `unconditional` and `predict`, which this class overrides.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .text_to_image import TextToImageFamily


class TextToImageXLFamily(TextToImageFamily):
    r"""An SDXL pipeline whose `UNet2DConditionModel` is unlearned; VAE and both text encoders are frozen.

    Loaded by [`TextToImageFamily.from_pretrained`] (hence by detection and `family="text_to_image"`) for any pipeline,
    folder or repo id with a `text_encoder_2` and a `unet`; its `name` stays `"text_to_image"`, so every method and
    default of the family applies unchanged.

    The conditioning is what `StableDiffusionXLPipeline.encode_prompt` computes for a prompt: the penultimate hidden
    states of both text encoders concatenated (cross-attention), the projected pooled output of `text_encoder_2`
    (`text_embeds`), and `time_ids` from `StableDiffusionXLPipeline._get_add_time_ids` with original and target size
    `resolution` and crop (0, 0), as the pipeline uses when sampling at that size. The empty prompt is all zeros when
    the pipeline's `force_zeros_for_empty_prompt` is set (SDXL base's setting), as the pipeline's own guidance does.

    Args:
        pipeline (`StableDiffusionXLPipeline`): the pipeline; its VAE and text encoders are frozen.
        config ([`UnlearnConfig`]): as for [`TextToImageFamily`].
    """

    pipeline_class: ClassVar[str] = "StableDiffusionXLPipeline"
    required_components: ClassVar[tuple[str, ...]] = (
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    )

    def __init__(self, pipeline, config):
        self.text_encoder_2 = getattr(pipeline, "text_encoder_2", None)
        self.tokenizer_2 = getattr(pipeline, "tokenizer_2", None)
        super().__init__(pipeline, config)
        self.force_zeros_for_empty_prompt = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", False))
        size = (self.resolution, self.resolution)
        # The pipeline's own helper also checks the UNet's added-embedding width against text_encoder_2's projection.
        self.time_ids = pipeline._get_add_time_ids(
            size,
            (0, 0),
            size,
            dtype=torch.float32,
            text_encoder_projection_dim=int(self.text_encoder_2.config.projection_dim),
        )

    @classmethod
    def handles(cls, components: set[str]) -> bool:
        """A pipeline with a second text encoder and a UNet (SD3's denoiser is a `transformer`, not a `unet`)."""
        return "text_encoder_2" in components and "unet" in components

    def _check_unet(self, unet) -> None:
        if unet.config.addition_embed_type != "text_time":
            raise ValueError(
                "`pipeline` is an SDXL pipeline (two text encoders), but the UNet has no pooled-text and size "
                f"embedding (addition_embed_type={unet.config.addition_embed_type!r}); pass the UNet of an SDXL "
                "checkpoint, or a StableDiffusionPipeline for an SD 1.x / 2.x UNet."
            )

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Both tokenizers' ids side by side, `(batch, max_length + max_length_2)`: one tensor, as batches carry."""
        ids = [
            tokenizer(
                list(prompts),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tokenizer in (self.tokenizer, self.tokenizer_2)
        ]
        return torch.cat(ids, dim=1)

    def _encode_rows(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # `StableDiffusionXLPipeline.encode_prompt` takes strings, batches carry token ids (cacheable, moved by the
        # engine); these are its steps for clip_skip=None: penultimate states of each encoder, pooled from the second.
        length = self.tokenizer.model_max_length
        first = self.text_encoder(ids[:, :length], output_hidden_states=True)
        second = self.text_encoder_2(ids[:, length:], output_hidden_states=True)
        states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return list(zip(states, second[0]))

    def _stack_rows(self, rows: list) -> dict[str, torch.Tensor]:
        return {
            "encoder_hidden_states": torch.stack([states for states, _ in rows]),
            "text_embeds": torch.stack([pooled for _, pooled in rows]),
        }

    def unconditional(self, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.force_zeros_for_empty_prompt:
            return {key: torch.zeros_like(value) for key, value in cond.items()}
        device, batch = cond["text_embeds"].device, len(cond["text_embeds"])
        empty = self.encode_prompts(self.tokenize([""]).to(device))
        return {key: value.expand(batch, *value.shape[1:]) for key, value in empty.items()}

    def predict(self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, states: dict[str, torch.Tensor]):
        """The UNet's output at x_t, t for the conditioning `states` (`encode_prompts`) and this size's time ids."""
        embeds = states["text_embeds"]
        time_ids = self.time_ids.to(device=embeds.device, dtype=embeds.dtype).expand(len(embeds), -1)
        return model(
            noisy,
            timesteps,
            encoder_hidden_states=states["encoder_hidden_states"],
            added_cond_kwargs={"text_embeds": embeds, "time_ids": time_ids},
        ).sample


__all__ = ["TextToImageXLFamily"]
