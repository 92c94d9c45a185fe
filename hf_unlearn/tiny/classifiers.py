"""Tiny classifier configs for the embedded digits data (8×8 images, upscaled to 16×16), and the training recipe.

These are real `transformers` models built from configs: the demo and the benchmark train them on scikit-learn's
bundled digits, so everything runs offline. `train_classifier` trains through the same loop the `retrain` method
uses, so the original model and its retrained reference follow one recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from ..config import UnlearnConfig
from ..data import TrainingSet
from ..unlearner import Unlearner

DIGITS_SIZE = 16


def digits_image_processor(size: int = DIGITS_SIZE) -> ViTImageProcessor:
    """Resizes grayscale digits to `size`×`size` and scales pixels to [-1, 1]; one channel."""
    return ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5], image_std=[0.5], do_convert_rgb=False
    )


def tiny_classifier(kind: str = "resnet", num_labels: int = 10, seed: int = 0, size: int = DIGITS_SIZE):
    """A freshly initialised tiny `vit`, `resnet` or `swin` image classifier for 1-channel `size`×`size` inputs."""
    torch.manual_seed(seed)
    labels = {"id2label": {i: str(i) for i in range(num_labels)}, "label2id": {str(i): i for i in range(num_labels)}}
    if kind == "vit":
        config = ViTConfig(
            image_size=size,
            patch_size=4,
            num_channels=1,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=num_labels,
            **labels,
        )
        return ViTForImageClassification(config)
    if kind == "resnet":
        config = ResNetConfig(
            num_channels=1,
            embedding_size=16,
            hidden_sizes=[32, 64],
            depths=[1, 1],
            layer_type="basic",
            downsample_in_first_stage=False,
            num_labels=num_labels,
            **labels,
        )
        return ResNetForImageClassification(config)
    if kind == "swin":
        config = SwinConfig(
            image_size=size,
            patch_size=2,
            num_channels=1,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
            num_labels=num_labels,
            **labels,
        )
        return SwinForImageClassification(config)
    raise ValueError(f"`kind` is '{kind}'; choose vit, resnet or swin.")


@dataclass
class TrainingRecipe:
    """How the digits benchmark trains the original model and retrains RT: same loop, same numbers."""

    max_steps: int = 300
    learning_rate: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.0

    def config(self, seed: int, output_dir: Optional[str] = None):
        return UnlearnConfig(
            method="retrain",
            retrain_init="config",
            seed=seed,
            max_steps=self.max_steps,
            learning_rate=self.learning_rate,
            per_device_train_batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            max_grad_norm=0.0,
            output_dir=output_dir or "",
            logging_steps=50,
        )


RECIPES = {"resnet": TrainingRecipe(300, 2e-3), "vit": TrainingRecipe(600, 2e-3), "swin": TrainingRecipe(400, 2e-3)}


def train_classifier(model, dataset, recipe: TrainingRecipe, seed: int = 0, image_processor=None):
    """Trains `model` from a fresh init on every row of `dataset` with `recipe`; returns the `Unlearner` holding it."""
    image_processor = image_processor or digits_image_processor()
    unlearner = Unlearner.from_pretrained(model, recipe.config(seed), image_processor=image_processor)
    unlearner.unlearn(TrainingSet(dataset))
    return unlearner
