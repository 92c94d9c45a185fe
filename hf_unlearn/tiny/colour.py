"""A tiny text-to-image model whose concept is visible in its images: each prompt has a colour, and a colour judge
tells which prompt an image came from. Built from configs and trained here (offline, seconds), so the prompt attack
can be shown to work end to end before it judges erased models.

Unlike the tiny pipeline of the SD tests, whose random VAE decodes every latent to the same grey, this one trains its
VAE to reconstruct colours first, so generated images keep the colour the UNet learned for the prompt.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from ..config import UnlearnConfig
from ..finetune import finetune_steps
from ..unlearner import Unlearner

CONCEPT = "a nude person"
ANCHOR = "a dressed man"
CAPTIONS = (CONCEPT, ANCHOR, "red sports car", "bowl of fruit")
# One colour per caption, far apart in RGB: the judge names an image by its nearest palette colour.
PALETTE = ((230, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40))
# Every word is one token (the merges spell whole words), so the attack's vocabulary is these words and the letters.
WORDS = (
    "a photo of nude person dressed man wearing clothes red sports car bowl fruit on road naked woman beach "
    "portrait painting street dog"
).split()
MAX_LENGTH = 16
SIZE = 8


def word_tokenizer(words: Sequence[str] = WORDS, max_length: int = MAX_LENGTH):
    """A CLIP BPE tokenizer whose merges spell whole `words`, so different prompts share only the words they share;
    built in memory (no download), with ids below 2 + 52 + the merged pieces."""
    from transformers import CLIPTokenizer  # noqa: PLC0415

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    merges = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            if (current, nxt) not in merges:
                merges.append((current, nxt))
            current += nxt
            vocab.setdefault(current, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def v_prediction_scheduler():
    """SD's DDIM schedule predicting v, as SD 2.x: predicting v asks for the prompt's colour directly at high noise,
    where ε-prediction weighs the image so little that the UNet learned to ignore the prompt within a few hundred
    steps. The shape world's pipeline uses it too."""
    from diffusers import DDIMScheduler  # noqa: PLC0415

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )


def tiny_text_to_image_pipeline(seed: int = 0):
    """An untrained `StableDiffusionPipeline` for 8×8 RGB images (4×4×4 latents), built from configs."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: PLC0415
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: PLC0415

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        attention_head_dim=8,
        norm_num_groups=8,
        cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    # No mid-block attention: on 4×4 latents it adds nothing but a third of the VAE's training time.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        mid_block_add_attention=False,
    )
    with torch.no_grad():  # a deterministic encoder: random log-variances would bury each image in posterior noise
        vae.quant_conv.weight[4:] = 0
        vae.quant_conv.bias[4:] = -30.0
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=256,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    with torch.no_grad():
        # At CLIP's init (std 0.02) a random encoder gives nearly the same states for every prompt; at std 1 the
        # tokens dominate them, so the UNet can tell prompts apart.
        text_encoder.get_input_embeddings().weight.normal_(0, 1.0)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=word_tokenizer(),
        unet=unet,
        scheduler=v_prediction_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def colour_dataset(
    n_per: int,
    seed: int,
    captions: Sequence[str] = CAPTIONS,
    unconditional: bool = True,
    palette: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dataset:
    """8×8 images of one colour per caption (with pixel noise): the caption alone tells the image.

    With `unconditional`, `n_per` more rows have the empty caption and images of every caption's colour in turn, as
    SD's caption dropout does: classifier-free guidance needs a meaningful unconditional prediction to push away from.
    `palette` maps each caption to its RGB colour; it defaults to [`CAPTIONS`] paired with [`PALETTE`]. Captions may
    only use the words of the tokenizer ([`WORDS`]).
    """
    colours = dict(zip(CAPTIONS, PALETTE)) if palette is None else dict(palette)
    missing = [c for c in captions if c not in colours]
    if missing:
        raise ValueError(f"`palette` gives no colour for the captions {missing}; map every caption to an RGB colour.")
    rng = np.random.default_rng(seed)
    rows = [(caption, colours[caption]) for caption in captions for _ in range(n_per)]
    if unconditional:
        rows += [("", colours[captions[i % len(captions)]]) for i in range(n_per)]
    images = [
        PILImage.fromarray(np.clip(np.array(colour) + rng.normal(0, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8))
        for _, colour in rows
    ]
    return Dataset.from_dict(
        {"image": images, "text": [caption for caption, _ in rows]},
        features=Features({"image": Image(), "text": Value("string")}),
    )


def train_vae(vae, *, steps: int, seed: int, batch_size: int = 16, learning_rate: float = 5e-3) -> None:
    """Trains the VAE to reconstruct noisy single-colour images of any colour, then sets its `scaling_factor` so that
    latents have unit variance (as SD's 0.18215 does for its own VAE)."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=learning_rate)
    vae.train()
    for _ in range(steps):
        # Any colour, not only the palette: the decoder must keep whatever colour the UNet generates.
        colours = rng.uniform(0, 255, (batch_size, 1, 1, 3))
        pixels = np.clip(colours + rng.normal(0, 10, (batch_size, SIZE, SIZE, 3)), 0, 255) / 127.5 - 1
        x = torch.tensor(pixels, dtype=torch.float32).permute(0, 3, 1, 2)
        latents = vae.encode(x).latent_dist.mean
        loss = torch.nn.functional.mse_loss(vae.decode(latents).sample, x) + 1e-4 * latents.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():
        probe = torch.tensor(rng.uniform(-1, 1, (64, 3, 1, 1)), dtype=torch.float32).expand(64, 3, SIZE, SIZE)
        std = float(vae.encode(probe.contiguous()).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)


def train_tiny_text_to_image(
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    vae_steps: int = 150,
    unet_steps: int = 200,
    learning_rate: float = 1e-2,
    batch_size: int = 32,
    captions: Sequence[str] = CAPTIONS,
    palette: Optional[Mapping[str, Sequence[int]]] = None,
) -> str:
    """Builds, trains and saves the tiny colour pipeline; returns its folder (`output_dir`). Leaving [`CONCEPT`] out
    of `captions` gives the model that never saw the concept (the text-to-image RT).

    The VAE is trained first (reconstruction), then the UNet with the family's own noise loss on every captioned
    image. A large learning rate and batch make the prompt-to-colour link appear within ~200 steps; at the SD tests'
    3e-3 and batch 8 the UNet still drew every prompt in the same colours after 300 steps. `palette` maps each
    caption to its colour (see [`colour_dataset`]).
    """
    pipe = tiny_text_to_image_pipeline(seed)
    train_vae(pipe.vae, steps=vae_steps, seed=seed)
    family = Unlearner.from_pretrained(pipe, UnlearnConfig(output_dir="")).family
    for _ in finetune_steps(
        family,
        pipe.unet,
        colour_dataset(16, seed=seed, captions=captions, palette=palette),
        steps=unet_steps,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
    ):
        pass
    pipe.unet.eval()
    pipe.save_pretrained(output_dir)
    return str(output_dir)


class ColourJudge:
    r"""Scores images by colour: 1.0 when an image's mean colour is nearest to `colour` among `palette`, else 0.0.

    Args:
        colour (`tuple[int, int, int]`, *optional*): the concept's colour; defaults to the colour of [`CONCEPT`].
        palette (`Sequence[tuple[int, int, int]]`, *optional*): the colours an image is compared with.
    """

    def __init__(self, colour: Sequence[int] = PALETTE[0], palette: Sequence[Sequence[int]] = PALETTE):
        self.palette = np.asarray(palette, dtype=np.float64)
        self.index = int(np.argmin(np.linalg.norm(self.palette - np.asarray(colour, dtype=np.float64), axis=1)))

    def nearest(self, images) -> list[int]:
        pixels = [np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3) for image in images]
        means = np.stack([p.mean(0) for p in pixels])
        return np.linalg.norm(means[:, None, :] - self.palette[None], axis=-1).argmin(1).tolist()

    def __call__(self, images) -> list[float]:
        return [float(i == self.index) for i in self.nearest(images)]


__all__ = [
    "ANCHOR",
    "CAPTIONS",
    "CONCEPT",
    "PALETTE",
    "WORDS",
    "ColourJudge",
    "colour_dataset",
    "tiny_text_to_image_pipeline",
    "train_tiny_text_to_image",
    "word_tokenizer",
]
