"""The interface a model family implements. Methods only ever call these primitives."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader


class ModelFamily:
    r"""One kind of model: how to load it, batch its data, compute per-sample losses, and save it.

    A family instance holds the trainable module in `self.model` (what the engine optimises) and anything frozen
    beside it (an image processor, a VAE, a text encoder, a noise scheduler). Every loss primitive takes the module to
    run explicitly, because the engine may pass a wrapped (DDP) module, a frozen copy of the original, or a teacher.

    Subclasses set `name`, `default_config` (defaults for `UnlearnConfig` fields left at `None`) and implement the
    methods below; `logits` only exists for families with class predictions.
    """

    name: ClassVar[str] = ""
    default_config: ClassVar[dict[str, Any]] = {}
    # Worker processes of the loaders `make_dataloader` builds (the engine sets `dataloader_num_workers` here).
    num_workers: int = 0

    def loader_options(self) -> dict[str, Any]:
        """`DataLoader` options for `num_workers`: workers that stay alive across epochs (the engine's loaders run
        epoch after epoch), and pinned memory when batches go to a GPU. Workers change no batch: the order comes from
        the seeded sampler in the main process and `collate` is deterministic."""
        if not self.num_workers:
            return {}
        return {"num_workers": self.num_workers, "persistent_workers": True, "pin_memory": torch.cuda.is_available()}

    default_method: ClassVar[str] = "sfr_on"  # used when `UnlearnConfig.method` is unset
    lora_trains_head: ClassVar[bool] = False  # LoRA: also train the classification head fully (`modules_to_save`)
    model: nn.Module

    # Loading and detection
    @classmethod
    def can_load(cls, model_or_path: Any) -> bool:
        """Whether a model object or a folder / repo id is of this family (used by detection, cheap)."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, model_or_path: Any, config, **kwargs) -> ModelFamily:
        raise NotImplementedError

    def save_pretrained(self, model: nn.Module, save_directory: str | os.PathLike) -> None:
        """Writes `model` in the family's native format (safetensors) into an existing folder."""
        raise NotImplementedError

    def fresh_model(self, init: str = "config") -> nn.Module:
        """A new trainable module: re-initialised from the config, or loaded from `init` (a path or repo id)."""
        raise NotImplementedError

    # Data
    def prepare_split(self, split, config, needs_remain: bool = True):
        """Turns the user's split into one with `forget` / `remain` datasets (e.g. generates concept images).

        `needs_remain`: whether the run reads the remain set (a remaining loss or a saliency mask); the engine, which
        knows the method, says so, since a family knows no method."""
        return split

    def validate_split(self, split) -> None:
        """Raises `ValueError` naming the argument when the data cannot feed this model (before any weight change)."""

    def replay_split(self, split, config, device):
        """`split` with its remain set replaced by samples of the current model (generative replay), on `device`."""
        raise ValueError(
            f"Method '{config.method}' trains on samples the original model generates (generative replay), which the "
            f"{self.name} family cannot produce; use a diffusion model or another method."
        )

    def model_defaults(self) -> dict[str, Any]:
        """`UnlearnConfig` defaults that this loaded model needs beyond the family's (they win over the method's)."""
        return {}

    def make_dataloader(
        self, dataset, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False
    ) -> DataLoader:
        """A loader of dict batches; each batch has `labels` (class or condition ids) where the family has them."""
        raise NotImplementedError

    @property
    def num_classes(self) -> Optional[int]:
        return None

    # Losses: each returns one value per row, shape `(batch,)`, to be minimised for that row
    def per_sample_loss(self, model: nn.Module, batch: dict, *, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The family's training loss per row (cross-entropy, noise-prediction MSE), with optional replaced labels."""
        raise NotImplementedError

    def guided_per_sample_loss(self, model: nn.Module, batch: dict, scale: float) -> torch.Tensor:
        """The noise loss of the classifier-free-guided prediction per row (diffusion Fisher passes)."""
        raise NotImplementedError(f"The {self.name} family has no guided prediction; unset `saliency_guidance_scale`.")

    def remap_loss(self, model: nn.Module, batch: dict, target_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Pull the model's output for each row toward the output it gives for `target_labels` (or the batch's anchor).

        For classifiers this is cross-entropy to the new labels; for diffusion, MSE between ε(x_t, c) and a detached
        ε(x_t, c_target) at the same x_t and t.
        """
        raise NotImplementedError

    def remain_rows(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The per-row loss of a remain step (diffusion families add condition dropout here)."""
        return self.per_sample_loss(model, batch)

    def remain_loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The scalar loss of a remain step on one process: the mean of `remain_rows`."""
        return self.remain_rows(model, batch).mean()

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f"The {self.name} family has no class predictions.")

    def negative_guidance_loss(self, model: nn.Module, frozen: nn.Module, batch: dict, scale: float) -> torch.Tensor:
        raise NotImplementedError(f"The {self.name} family has no negative-guidance target.")

    def trainable_parameter_filter(self, name: str) -> bool:
        """Whether the parameter `name` of `self.model` is trained (all, unless `train_modules` narrows it)."""
        return True

    def batch_size_of(self, batch: dict) -> int:
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        raise ValueError("Empty batch.")


class LabelledImageBatches:
    """Batching shared by families whose rows are an image and a class label (`pixel_values` from the family)."""

    image_column: str
    label_column: str

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": self.pixel_values([row[self.image_column] for row in rows]),
            "labels": torch.tensor([int(row[self.label_column]) for row in rows], dtype=torch.long),
        }

    def make_dataloader(self, dataset, *, batch_size, shuffle, seed, drop_last=False) -> DataLoader:
        dataset = dataset.select_columns([self.image_column, self.label_column])
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            collate_fn=self.collate,
            **self.loader_options(),
        )
