"""The shape world's models, built from configs: a tiny Stable Diffusion pipeline (CLIP text encoder over the world's
words, `AutoencoderKL` with 8×8×4 latents, `UNet2DConditionModel`) and the judge that names a scene's attributes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..tiny.colour import v_prediction_scheduler, word_tokenizer
from .scenes import ATTRIBUTES, SIZE, words

MAX_LENGTH = 16
HIDDEN = 64
JUDGE_FILE, JUDGE_CONFIG = "judge.safetensors", "judge_config.json"


def tokenizer():
    """The word-level CLIP tokenizer over every word a caption of the world can use."""
    return word_tokenizer(words(), max_length=MAX_LENGTH)


def text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: PLC0415

    config = CLIPTextConfig(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=vocab_size,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=HIDDEN,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def vae():
    """32×32×3 → 8×8×4 latents. The log-variances are pinned near zero variance: the posterior is the mean, as the
    colour model of `tiny.colour` found necessary for a VAE trained for a few minutes."""
    from diffusers import AutoencoderKL  # noqa: PLC0415

    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        mid_block_add_attention=False,
        sample_size=SIZE,
    )
    with torch.no_grad():
        model.quant_conv.weight[4:] = 0
        model.quant_conv.bias[4:] = -30.0
    return model


def unet():
    from diffusers import UNet2DConditionModel  # noqa: PLC0415

    return UNet2DConditionModel(
        sample_size=SIZE // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(48, 96),
        attention_head_dim=4,
        norm_num_groups=16,
        cross_attention_dim=HIDDEN,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )


def pipeline(text, autoencoder, denoiser):
    from diffusers import StableDiffusionPipeline  # noqa: PLC0415

    pipe = StableDiffusionPipeline(
        vae=autoencoder,
        text_encoder=text,
        tokenizer=tokenizer(),
        unet=denoiser,
        scheduler=v_prediction_scheduler(),  # as the colour model: it keeps the prompt's weight at high noise
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Judge(nn.Module):
    r"""A small CNN that names each attribute of [`scenes.ATTRIBUTES`] of a 32×32 scene (one head per attribute).

    `features` (128 numbers per image) is what the benchmark's distribution distance and the text encoder's
    contrastive training compare.
    """

    def __init__(self, width: int = 32, features: int = 128):
        super().__init__()
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GELU(), nn.MaxPool2d(2))  # noqa: E731
        self.body = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 2 * width))
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (SIZE // 8) ** 2, features), nn.GELU())
        self.heads = nn.ModuleDict({k: nn.Linear(features, len(v)) for k, v in ATTRIBUTES.items()})
        self.config = {"width": width, "features": features}

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """`pixels`: `(n, 3, 32, 32)` in [-1, 1]."""
        return self.neck(self.body(pixels))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(pixels)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def name(self, images) -> list[dict[str, str]]:
        """The attribute values the judge sees in PIL images or a `(n, 32, 32, 3)` uint8 array."""
        logits = self(to_pixels(images))
        index = {k: v.argmax(-1).tolist() for k, v in logits.items()}
        return [{k: ATTRIBUTES[k][index[k][i]] for k in ATTRIBUTES} for i in range(len(index["shape"]))]

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file  # noqa: PLC0415

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(folder) / JUDGE_FILE))
        (Path(folder) / JUDGE_CONFIG).write_text(json.dumps(self.config) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Judge:
        from safetensors.torch import load_file  # noqa: PLC0415

        judge = cls(**json.loads((Path(folder) / JUDGE_CONFIG).read_text()))
        judge.load_state_dict(load_file(str(Path(folder) / JUDGE_FILE)))
        return judge.eval()


def to_pixels(images) -> torch.Tensor:
    """PIL images or a `(n, 32, 32, 3)` uint8 array → `(n, 3, 32, 32)` floats in [-1, 1]."""
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
