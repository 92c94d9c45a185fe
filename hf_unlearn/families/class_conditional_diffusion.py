"""Family: class-conditional diffusion, a diffusers `UNet2DModel` with class embeddings or a `DiTTransformer2DModel`
(pixel space, or latent space with a frozen VAE), trained with the noise-prediction loss and classifier-free guidance.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import PIL.Image
import torch
from datasets import ClassLabel, Dataset, Features, Image
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from diffusers.models.embeddings import LabelEmbedding
from torch import nn

from ..data import ReplaySplit
from ..metrics.generation import generate
from ..pipelines import ClassConditionalPipeline, default_null_class_id, predict_noise
from .base import LabelledImageBatches, ModelFamily
from .detect import read_config_file
from .noise_losses import row_mse

_MODEL_CLASSES = {"UNet2DModel": UNet2DModel, "DiTTransformer2DModel": DiTTransformer2DModel}


class ClassConditionalDiffusionFamily(LabelledImageBatches, ModelFamily):
    r"""A class-conditional diffusion model: diffusers `UNet2DModel` (with `num_class_embeds`) or DiT.

    Every loss draws fresh noise and timesteps per row from the training `DDPMScheduler` (built from the model's own
    scheduler config). Forget-side losses never drop the condition; DiT's built-in label dropout is switched off for
    every forward pass, and condition dropout to the null class is applied explicitly by `remain_loss` only.

    Args:
        model ([`UNet2DModel`] or [`DiTTransformer2DModel`]): the trainable denoiser.
        scheduler ([`SchedulerMixin`]): the model's sampling scheduler (saved with the pipeline).
        config ([`UnlearnConfig`]): gives `null_class_id`, `condition_dropout`, columns and `resolution`.
        vae ([`AutoencoderKL`], *optional*): frozen encoder/decoder of a latent-space DiT.
    """

    name = "class_conditional_diffusion"
    # Faithful ascent on the noise loss is unstable; remapping to an anchor is the authors' own SD choice.
    default_method = "sfr_on_remap"
    default_config: dict[str, Any] = {
        "max_grad_norm": 1.0,
        "remain_steps_per_forget": 1,
        "learning_rate": 1e-4,
        "max_steps": 150,
    }

    def __init__(self, model: nn.Module, scheduler=None, config=None, vae: Optional[nn.Module] = None):
        if type(model).__name__ not in _MODEL_CLASSES:
            raise ValueError(f"`model` is a {type(model).__name__}; give a UNet2DModel or a DiTTransformer2DModel.")
        default_null_class_id(model)  # raises for a UNet without class embeddings
        self.model = model
        self.scheduler = scheduler if scheduler is not None else DDPMScheduler()
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.config_null = None if config is None else config.null_class_id
        self.condition_dropout = 0.1 if config is None else config.condition_dropout
        self.noise_loss_reduction = "mean" if config is None else config.noise_loss_reduction
        self.image_column = "image" if config is None else config.image_column
        self.label_column = "label" if config is None else config.label_column
        self.resolution = None if config is None else config.resolution
        self.data_num_classes: Optional[int] = None

    def model_defaults(self) -> dict[str, Any]:
        # The authors' DiT clips the forget step only (their DDPM both steps, the family's default).
        return {"remain_max_grad_norm": 0.0} if self.is_dit else {}

    @property
    def is_dit(self) -> bool:
        return isinstance(_unwrapped(self.model), DiTTransformer2DModel)

    @property
    def null_class_id(self) -> int:
        if self.config_null is not None:
            return int(self.config_null)
        return default_null_class_id(self.model)

    @property
    def num_classes(self) -> int:
        """The data classes (the null class excluded): set by `validate_split`, else the model's default."""
        if self.data_num_classes is not None:
            return self.data_num_classes
        return (
            int(self.model.config.num_embeds_ada_norm) if self.is_dit else int(self.model.config.num_class_embeds) - 1
        )

    # Loading and saving
    @classmethod
    def can_load(cls, model_or_path: Any) -> bool:
        if isinstance(model_or_path, nn.Module):
            return type(model_or_path).__name__ in _MODEL_CLASSES
        if hasattr(model_or_path, "components"):
            return "text_encoder" not in model_or_path.components
        index = read_config_file(model_or_path, "model_index.json")
        if index is not None:
            return "text_encoder" not in index and ("unet" in index or "transformer" in index)
        cfg = read_config_file(model_or_path, "config.json")
        return bool(cfg) and cfg.get("_class_name") in _MODEL_CLASSES

    @classmethod
    def from_pretrained(cls, model_or_path, config, *, scheduler=None, vae=None, **kwargs):
        """A model object, a pipeline object, a pipeline folder (model_index.json) or a model folder / repo id (a
        diffusers config `_class_name` UNet2DModel or DiTTransformer2DModel, with an optional `scheduler_config.json`
        beside it; a default `DDPMScheduler` otherwise)."""
        source = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else None
        if isinstance(model_or_path, nn.Module):
            family = cls(model_or_path, scheduler, config, vae=vae)
        elif hasattr(model_or_path, "components"):
            family = cls._from_pipeline(model_or_path, config)
        elif read_config_file(model_or_path, "model_index.json") is not None:
            family = cls._from_pipeline(ClassConditionalPipeline.from_pretrained(model_or_path), config)
        else:
            cfg = read_config_file(model_or_path, "config.json") or {}
            name = cfg.get("_class_name")
            if name not in _MODEL_CLASSES:
                raise ValueError(
                    f"`{model_or_path}` holds a {name} model; the class_conditional_diffusion family loads "
                    "UNet2DModel or DiTTransformer2DModel folders, or pipeline folders with model_index.json."
                )
            model = _MODEL_CLASSES[name].from_pretrained(model_or_path, use_safetensors=True)
            family = cls(model, scheduler or _scheduler_beside(model_or_path), config, vae=vae)
        if source is not None:
            family.source = str(source)
        return family

    @classmethod
    def _from_pipeline(cls, pipe, config):
        model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if model is None:
            raise ValueError(f"The pipeline {type(pipe).__name__} has neither `unet` nor `transformer`.")
        family = cls(model, pipe.scheduler, config, vae=getattr(pipe, "vae", None))
        pipe_null = getattr(pipe.config, "null_class_id", None)
        if family.config_null is None and pipe_null is not None:
            family.config_null = int(pipe_null)
        return family

    def pipeline(self, model: Optional[nn.Module] = None):
        """A [`ClassConditionalPipeline`] around `model` (default: `self.model`) with this family's scheduler."""
        model = self.model if model is None else model
        key = "transformer" if isinstance(_unwrapped(model), DiTTransformer2DModel) else "unet"
        pipe = ClassConditionalPipeline(
            scheduler=self.scheduler, vae=self.vae, null_class_id=self.config_null, **{key: model}
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_pretrained(self, model: nn.Module, save_directory: str | os.PathLike) -> None:
        self.pipeline(model).save_pretrained(save_directory, safe_serialization=True)

    @torch.no_grad()
    def replay_split(self, split, config, device):
        """Generative replay: one sample of the current model per remain row, with that row's label (DDIM,
        `replay_inference_steps`, guidance `replay_guidance_scale`, seeded by `seed`); the remain images are unused.
        Every process generates the same set."""
        labels = [int(label) for label in split.remain[self.label_column]]
        pipe = self.pipeline()
        pipe.scheduler = DDIMScheduler.from_config(self.scheduler.config)
        moved_from = next(self.model.parameters()).device
        pipe.to(device)
        samples = generate(
            pipe,
            labels,
            guidance_scale=config.replay_guidance_scale,
            num_inference_steps=config.replay_inference_steps,
            seed=config.seed,
            batch_size=max(config.per_device_train_batch_size, 64),
            desc="generative replay",
        )
        pipe.to(moved_from)
        images = pipe.numpy_to_pil(samples.permute(0, 2, 3, 1).numpy())
        features = Features({self.image_column: Image(), self.label_column: split.remain.features[self.label_column]})
        replay = Dataset.from_dict({self.image_column: images, self.label_column: labels}, features=features)
        return ReplaySplit(split, replay)

    def fresh_model(self, init: str = "config") -> nn.Module:
        if init == "config":
            return type(self.model).from_config(self.model.config)
        return type(self).from_pretrained(init, None).model

    # Data
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images fed to the model (or to its VAE)."""
        cfg = self.model.config
        size = cfg.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if self.vae is None:
            return int(cfg.in_channels), int(height), int(width)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.vae.config.in_channels), int(height) * factor, int(width) * factor

    def pixel_values(self, images: list) -> torch.Tensor:
        """Images (PIL or arrays) as a float tensor in [-1, 1] of the model's image shape."""
        channels, height, width = self.image_shape
        out = []
        for image in images:
            image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image))
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), PIL.Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 127.5 - 1.0
            out.append(torch.from_numpy(array).permute(2, 0, 1))
        return torch.stack(out)

    def validate_split(self, split) -> None:
        dataset = split.dataset
        for arg, column in [("image_column", self.image_column), ("label_column", self.label_column)]:
            if column not in dataset.column_names:
                raise ValueError(
                    f"`{arg}` is '{column}', but the dataset has columns {dataset.column_names}; pass "
                    f"{arg}=... in UnlearnConfig."
                )
        feature = dataset.features.get(self.label_column)
        labels = np.asarray(dataset[self.label_column])
        data_classes = feature.num_classes if isinstance(feature, ClassLabel) else int(labels.max()) + 1
        self._check_null_class(data_classes)
        channels, height, width = self.image_shape
        if self.resolution is not None and (height, width) != (self.resolution, self.resolution):
            raise ValueError(
                f"`resolution` is {self.resolution}, but the model generates {height}×{width} images; "
                f"drop `resolution` or set it to {height}."
            )
        self.data_num_classes = data_classes
        batch = self.collate([dataset[0]])
        try:
            with torch.no_grad():
                self.per_sample_loss(self.model, batch)
        except Exception as err:  # noqa: BLE001 (re-raised with the shape that caused it)
            raise ValueError(
                f"Images of column `{self.image_column}` become tensors of shape "
                f"{tuple(batch['pixel_values'].shape[1:])}, which the {type(self.model).__name__} cannot "
                f"take: {err}."
            ) from err

    def _check_null_class(self, data_classes: int) -> None:
        cfg = self.model.config
        rows = self._embedding_rows()
        null = self.null_class_id
        if self.config_null is None and not self.is_dit and null != data_classes:
            raise ValueError(
                f"The UNet2DModel has num_class_embeds={cfg.num_class_embeds}, so its default null class is {null}, "
                f"but the dataset has {data_classes} labels; the null class must be the one embedding after the data "
                f"labels. Use a model with num_class_embeds={data_classes + 1}, or set `null_class_id`."
            )
        if not data_classes <= null < rows:
            raise ValueError(
                f"`null_class_id` is {null}, but it must be an unused embedding row: at least the number of data "
                f"labels ({data_classes}) and below the model's {rows} class embeddings."
            )

    def _embedding_rows(self) -> int:
        if not self.is_dit:
            return int(self.model.config.num_class_embeds)
        tables = [m.embedding_table.num_embeddings for m in self.model.modules() if isinstance(m, LabelEmbedding)]
        return min(tables)

    # Losses
    def _latents(self, batch: dict) -> torch.Tensor:
        pixels = batch["pixel_values"]
        if self.vae is None:
            return pixels
        with torch.no_grad():
            self.vae.to(pixels.device)
            latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.sample()
        return latents * self.vae.config.scaling_factor

    def _noisy(self, batch: dict):
        """x_t, the noise and t for each row (fresh draws from the global RNG, seeded by the engine)."""
        x0 = self._latents(batch)
        noise = torch.randn_like(x0)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (x0.shape[0],), device=x0.device)
        return self.noise_scheduler.add_noise(x0, noise, t), noise, t

    def eps(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ε(x_t, c); DiT's label embedders are put in eval mode first so they never drop the given labels."""
        if self.is_dit:
            for module in model.modules():
                if isinstance(module, LabelEmbedding):
                    module.train(False)
        return predict_noise(model, x_t, t, labels.to(x_t.device))

    def per_sample_loss(self, model, batch, *, labels=None):
        labels = batch["labels"] if labels is None else labels
        x_t, noise, t = self._noisy(batch)
        return row_mse(self.eps(model, x_t, t, labels), noise, self.noise_loss_reduction)

    def guided_per_sample_loss(self, model, batch, scale: float):
        """Noise loss of the guided prediction ε(x,∅) + s·(ε(x,c) − ε(x,∅)) (the authors' DDPM Fisher, s = 1 + w)."""
        labels = batch["labels"]
        x_t, noise, t = self._noisy(batch)
        cond = self.eps(model, x_t, t, labels)
        uncond = self.eps(model, x_t, t, torch.full_like(labels, self.null_class_id))
        return row_mse(uncond + scale * (cond - uncond), noise, self.noise_loss_reduction)

    def remain_rows(self, model, batch):
        labels = batch["labels"]
        drop = torch.rand(labels.shape[0], device=labels.device) < self.condition_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_class_id), labels)
        return self.per_sample_loss(model, batch, labels=labels)

    def remap_loss(self, model, batch, target_labels):
        if target_labels is None:
            raise ValueError(
                "The class_conditional_diffusion family needs anchor labels for a remap; set `remap_anchor`."
            )
        x_t, _, t = self._noisy(batch)
        with torch.no_grad():
            target = self.eps(getattr(model, "module", model), x_t, t, target_labels)
        return row_mse(self.eps(model, x_t, t, batch["labels"]), target, self.noise_loss_reduction)

    def negative_guidance_loss(self, model, frozen, batch, scale):
        x_t, _, t = self._noisy(batch)
        labels = batch["labels"]
        with torch.no_grad():
            cond = self.eps(frozen, x_t, t, labels)
            uncond = self.eps(frozen, x_t, t, torch.full_like(labels, self.null_class_id))
            target = uncond - scale * (cond - uncond)
        return row_mse(self.eps(model, x_t, t, labels), target, self.noise_loss_reduction)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The diffusers model inside a DDP wrapper or a `peft.PeftModel` (LoRA)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _scheduler_beside(path):
    """The scheduler saved beside a model config (`scheduler_config.json`), or a default `DDPMScheduler`."""
    import diffusers  # noqa: PLC0415

    cfg = read_config_file(path, "scheduler_config.json")
    if cfg is None:  # diffusers' own default: 1000 linear steps, as in the DDPM paper
        return DDPMScheduler()
    scheduler_cls = getattr(diffusers, str(cfg.get("_class_name")), DDPMScheduler)
    return scheduler_cls.from_config(cfg)
