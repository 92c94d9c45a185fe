"""Family: any `transformers` image classifier (`AutoModelForImageClassification`) with its image processor."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

from ..validation import check_labels, check_weights_files
from .base import LabelledImageBatches, ModelFamily
from .detect import read_config_file


class ImageClassifierFamily(LabelledImageBatches, ModelFamily):
    r"""A transformers image classifier (ViT, Swin, ResNet, ConvNeXt, ...).

    Args:
        model ([`~transformers.PreTrainedModel`]): a model whose class ends in `ForImageClassification`.
        config ([`UnlearnConfig`]): gives the image and label column names.
        image_processor (`BaseImageProcessor`, *optional*): turns a list of PIL images into `pixel_values`.
        transform (`Callable`, *optional*): alternatively, maps a list of images to a `pixel_values` tensor.
    """

    name = "image_classifier"
    # The methods' budgets are cycles tuned on digits (137 forget rows); at least one pass over the forget set keeps
    # them from stopping before a large forget set is even seen once (docs/budget.md, benchmarks/budget_unit.py).
    default_config: dict[str, Any] = {"max_grad_norm": 7.0, "num_forget_epochs": 1.0}
    # Lowest validation Avg.D on the digits benchmark after the SFR-on fix (docs/benchmarks.md); the published `sfr_on`
    # forgets the class too, but drives its rows to confident wrong classes, which the entropy attack (MIA) sees.
    default_method = "sfr_on_bound"
    lora_trains_head = True
    # Bytes of `pixel_values` the family keeps (for as long as it lives: an `Unlearner`'s runs and evaluations share
    # them) so that each row is decoded and preprocessed once instead of at every epoch (see `make_dataloader`); a
    # dataset whose tensors would not fit is read as before. 0 disables.
    preprocessed_cache_bytes: int = 256 * 2**20

    def __init__(self, model: PreTrainedModel, config, image_processor=None, transform: Optional[Callable] = None):
        if image_processor is None and transform is None:
            raise ValueError(
                "No image processor was found for this classifier: pass `image_processor=` (e.g. "
                "AutoImageProcessor.from_pretrained(...)) or `transform=` (a callable from a list of PIL images to a "
                "pixel_values tensor)."
            )
        self.model = model
        self.image_processor = image_processor
        self.transform = transform
        self.image_column = config.image_column
        self.label_column = config.label_column
        self._preprocessed: dict[str, dict[int, PreprocessedRow]] = {}  # by dataset fingerprint

    @classmethod
    def can_load(cls, model_or_path: Any) -> bool:
        if isinstance(model_or_path, nn.Module):
            return (
                type(model_or_path).__name__.endswith("ForImageClassification")
                or hasattr(getattr(model_or_path, "base_model", None), "config")
                and any(a.endswith("ForImageClassification") for a in (model_or_path.config.architectures or []))
            )
        cfg = read_config_file(model_or_path, "config.json")
        return bool(cfg) and any(str(a).endswith("ForImageClassification") for a in cfg.get("architectures") or [])

    @classmethod
    def from_pretrained(
        cls, model_or_path, config, *, image_processor=None, transform=None, trust_remote_code=False, **kwargs
    ):
        if isinstance(model_or_path, nn.Module):
            return cls(model_or_path, config, image_processor=image_processor, transform=transform)
        check_weights_files(model_or_path, "model_or_path")
        model = AutoModelForImageClassification.from_pretrained(
            model_or_path, trust_remote_code=trust_remote_code, use_safetensors=True
        )
        if image_processor is None and transform is None:
            try:
                image_processor = AutoImageProcessor.from_pretrained(
                    model_or_path, trust_remote_code=trust_remote_code
                )
            except (OSError, ValueError):
                image_processor = None
        family = cls(model, config, image_processor=image_processor, transform=transform)
        family.source = str(model_or_path)
        return family

    def save_pretrained(self, model: nn.Module, save_directory: str | os.PathLike) -> None:
        model.save_pretrained(save_directory, safe_serialization=True)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(save_directory)

    def fresh_model(self, init: str = "config") -> nn.Module:
        if init == "config":
            return AutoModelForImageClassification.from_config(self.model.config)
        check_weights_files(init, "retrain_init")
        return AutoModelForImageClassification.from_pretrained(init, use_safetensors=True)

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_labels)

    # Data
    def pixel_values(self, images: list) -> torch.Tensor:
        images = [img.convert("RGB") if self._wants_rgb(img) else img for img in images]
        if self.transform is not None:
            return self.transform(images)
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def collate(self, rows: list) -> dict[str, torch.Tensor]:
        if rows and isinstance(rows[0], PreprocessedRow):
            return {
                "pixel_values": torch.stack([row.pixel_values for row in rows]),
                "labels": torch.tensor([row.label for row in rows], dtype=torch.long),
            }
        return super().collate(rows)

    def make_dataloader(self, dataset, *, batch_size, shuffle, seed, drop_last=False) -> DataLoader:
        """A loader over `dataset` whose rows are preprocessed once and kept, when an image processor (not a
        `transform`, which may be random) makes them and their tensors fit in `preprocessed_cache_bytes`.

        Decoding and preprocessing were most of a small model's run (the digits profile: ~60%), repeated at every
        epoch of the step loaders and again by the saliency passes. An image processor is deterministic and handles
        each image on its own, so a kept row is the same tensor the batch would have held: batches, and weights, are
        bit-identical (`tests/test_engine.py`). Rows are kept per dataset fingerprint, so the saliency passes and the
        step loaders over one set share them.
        """
        dataset = dataset.select_columns([self.image_column, self.label_column])
        cache = self._row_cache(dataset)
        if cache is None:
            return super().make_dataloader(
                dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
            )
        return DataLoader(
            PreprocessedRows(dataset, self, cache),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed),
            drop_last=drop_last,
            collate_fn=self.collate,
            **self.loader_options(),
        )

    def _row_cache(self, dataset) -> Optional[dict[int, PreprocessedRow]]:
        fingerprint = getattr(dataset, "_fingerprint", None)
        if self.transform is not None or fingerprint is None or len(dataset) == 0:
            return None
        if fingerprint not in self._preprocessed:
            # A kept row also costs its tensor and tuple objects (~0.5 kB, measured on 16×16 digits rows).
            row_bytes = self.pixel_values([dataset[0][self.image_column]]).nbytes + 512
            kept = sum(len(rows) for rows in self._preprocessed.values()) * row_bytes
            if kept + len(dataset) * row_bytes > self.preprocessed_cache_bytes:
                return None
            self._preprocessed[fingerprint] = {}
        return self._preprocessed[fingerprint]

    def _wants_rgb(self, image) -> bool:
        # Grayscale images fed to a 3-channel model are the commonest mismatch; convert them instead of failing.
        return getattr(image, "mode", "RGB") != "RGB" and getattr(self.model.config, "num_channels", 3) == 3

    def validate_split(self, split) -> None:
        for name, ds in [("dataset", split.dataset), ("test_dataset", split.test_dataset)]:
            if ds is None:
                continue
            for arg, column in [("image_column", self.image_column), ("label_column", self.label_column)]:
                if column not in ds.column_names:
                    raise ValueError(
                        f"`{arg}` is '{column}', but `{name}` has columns {ds.column_names}; pass {arg}=... "
                        "in UnlearnConfig."
                    )
        feature = split.dataset.features.get(self.label_column)
        if isinstance(feature, ClassLabel):
            data_classes = feature.num_classes
        else:
            labels = split.dataset.select_columns([self.label_column]).with_format("numpy")[:][self.label_column]
            data_classes = int(np.max(labels)) + 1 if labels.dtype.kind in "iu" and labels.size else self.num_classes
        if data_classes != self.num_classes:
            raise ValueError(
                f"The model has num_labels={self.num_classes}, but the dataset has {data_classes} classes (labels "
                f"0..{data_classes - 1}); use a model trained on this label set."
            )
        for name, ds in [("dataset", split.dataset), ("test_dataset", split.test_dataset)]:
            if ds is not None:  # integer ids in 0..num_labels-1 (-1, strings, floats refused)
                check_labels(ds, self.label_column, self.num_classes, name)
        self._check_images(split.dataset)

    def _check_images(self, dataset) -> None:
        # In eval mode: a training-mode forward would update BatchNorm statistics before the run has started.
        training = self.model.training
        self.model.eval()
        try:
            batch = self.collate([dataset[0]])
            with torch.no_grad():
                self.logits(self.model, batch)
        except Exception as err:  # noqa: BLE001 (re-raised with what caused it)
            image = dataset[0][self.image_column]
            raise ValueError(
                f"Images of column `{self.image_column}` (mode {getattr(image, 'mode', '?')}, size "
                f"{getattr(image, 'size', '?')}) cannot feed the model ({type(self.model).__name__}, num_channels="
                f"{getattr(self.model.config, 'num_channels', '?')}): {err}. Pass an `image_processor` or `transform` "
                "that produces the model's input size and channel count (e.g. convert images to 'L' for a 1-channel "
                "model)."
            ) from err
        finally:
            self.model.train(training)

    # Losses
    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(pixel_values=batch["pixel_values"]).logits

    def per_sample_loss(self, model, batch, *, labels=None):
        labels = batch["labels"] if labels is None else labels
        return F.cross_entropy(self.logits(model, batch).float(), labels, reduction="none")

    def remap_loss(self, model, batch, target_labels):
        return self.per_sample_loss(model, batch, labels=target_labels)


class PreprocessedRow(NamedTuple):
    pixel_values: torch.Tensor
    label: int


class PreprocessedRows(torch.utils.data.Dataset):
    """The rows of `dataset` as `PreprocessedRow`s, each decoded and preprocessed on first access and kept in
    `cache` (a worker process keeps its own)."""

    def __init__(self, dataset, family: ImageClassifierFamily, cache: dict[int, PreprocessedRow]):
        self.dataset, self.family, self.cache = dataset, family, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index) -> PreprocessedRow:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list) -> list[PreprocessedRow]:
        """The rows of a batch (what `DataLoader` asks for); those not kept yet go through the image processor in
        one call, as the batch would have, since a call per image costs the processor's overhead per image."""
        indices = [int(i) for i in indices]
        missing = [i for i in dict.fromkeys(indices) if i not in self.cache]
        if missing:
            raw = self.dataset[missing]
            pixels = self.family.pixel_values(raw[self.family.image_column])
            for i, values, label in zip(missing, pixels, raw[self.family.label_column]):
                self.cache[i] = PreprocessedRow(values, int(label))
        return [self.cache[i] for i in indices]
