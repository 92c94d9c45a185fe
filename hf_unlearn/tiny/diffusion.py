"""Tiny class-conditional diffusion models for the embedded digits data: a `UNet2DModel` (8×8) and a pixel-space
`DiT` (16×16), their DDPM scheduler and the recipe that trains them (the demo and `hf-unlearn benchmark-diffusion`
train the original model and its retrained reference with it, through the same loop as the `retrain` method).
"""

from __future__ import annotations

import torch

from ..config import UnlearnConfig
from ..data import TrainingSet
from ..unlearner import Unlearner

# Recipes of the original model and of RT (same loop, same numbers): steps, learning rate, batch size.
RECIPES = {
    "unet": {"max_steps": 400, "learning_rate": 2e-3, "batch": 128},
    "dit": {"max_steps": 1200, "learning_rate": 1e-3, "batch": 128},
}


def tiny_unet(num_classes: int = 10, size: int = 8, seed: int = 0, widths: tuple[int, ...] = (32, 64)):
    """A class-conditional `UNet2DModel` for 1-channel `size`×`size` images with `widths` block channels (the
    benchmark's 32/64); the null class is `num_classes`."""
    from diffusers import UNet2DModel  # noqa: PLC0415

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(widths),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=num_classes + 1,
    )


def tiny_dit(num_classes: int = 10, size: int = 16, seed: int = 0):
    """A pixel-space `DiTTransformer2DModel` for 1-channel `size`×`size` images; the null class is `num_classes`."""
    from diffusers import DiTTransformer2DModel  # noqa: PLC0415

    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=1,
        out_channels=1,
        num_layers=4,
        sample_size=size,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )


def tiny_scheduler():
    from diffusers import DDPMScheduler  # noqa: PLC0415

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def train_diffusion(kind: str, dataset, *, seed: int, max_steps: int, learning_rate: float, batch: int, model=None):
    """Trains a fresh tiny model of `kind` (or the fresh `model` given) on every row of `dataset` (condition dropout
    0.1); returns the Unlearner."""
    if model is None:
        model = tiny_unet(seed=seed) if kind == "unet" else tiny_dit(seed=seed)
    config = UnlearnConfig(
        method="retrain",
        family="class_conditional_diffusion",
        retrain_init="config",
        seed=seed,
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch,
        max_grad_norm=1.0,
        output_dir="",
        logging_steps=100,
    )
    unlearner = Unlearner.from_pretrained(model, config, scheduler=tiny_scheduler())
    unlearner.unlearn(TrainingSet(dataset))
    return unlearner
