"""`ClassConditionalPipeline`: class-conditional DDPM/DDIM sampling with classifier-free guidance for a diffusers
`UNet2DModel` with class embeddings or a `DiTTransformer2DModel` (pixel space, or latent space with a VAE).

This file is the pipeline's code, self-contained (torch, numpy, PIL and diffusers only), so diffusers can also load it
as a custom pipeline without hf_unlearn:
`DiffusionPipeline.from_pretrained(folder, custom_pipeline="path/to/pipelines/class_conditional.py",
trust_remote_code=True)`.
`hf_unlearn.pipelines` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor


@dataclass
class ClassConditionalPipelineOutput(BaseOutput):
    r"""Output of [`ClassConditionalPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the samples, in [0, 1] for `"np"` and `"pt"`
            (`(batch, height, width, channels)` for numpy, `(batch, channels, height, width)` for torch).
        class_labels (`list[int]`): the class each sample was generated for, in the same order.
    """

    images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]
    class_labels: list[int]


def default_null_class_id(model) -> int:
    """The unconditional label of a model: `num_class_embeds - 1` (UNet2DModel) or `num_embeds_ada_norm` (DiT)."""
    config = model.config
    if getattr(config, "num_embeds_ada_norm", None) is not None and hasattr(config, "patch_size"):
        return int(config.num_embeds_ada_norm)
    embeds = getattr(config, "num_class_embeds", None)
    if embeds is None:
        raise ValueError(
            f"The {type(model).__name__} has no class embeddings (`num_class_embeds` is None), so it cannot be "
            "conditioned on a class; use a model built with `num_class_embeds=num_classes + 1`."
        )
    return int(embeds) - 1


def predict_noise(model, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
    """ε(x_t, c) of a UNet2DModel or DiT; DiT's learned-variance channels are dropped, as in diffusers' DiTPipeline."""
    inner = getattr(model, "module", model)
    out = model(sample, timesteps, class_labels=class_labels, return_dict=False)[0]
    if getattr(inner.config, "patch_size", None) is not None and out.shape[1] == 2 * sample.shape[1]:
        out = out[:, : sample.shape[1]]
    return out


class ClassConditionalPipeline(DiffusionPipeline):
    r"""Class-conditional sampler with classifier-free guidance for `UNet2DModel` or `DiTTransformer2DModel`.

    Unlike diffusers' `DiTPipeline` (whose unconditional label is ImageNet's 1000), the number of classes and the null
    class come from the model or from `null_class_id`. Any diffusers scheduler with `set_timesteps`/`step` works;
    swap DDPM for DDIM with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`.

    Args:
        scheduler ([`SchedulerMixin`]): the sampler, e.g. `DDPMScheduler` or `DDIMScheduler`.
        unet ([`UNet2DModel`], *optional*): a UNet with `num_class_embeds`; give it or `transformer`.
        transformer ([`DiTTransformer2DModel`], *optional*): a DiT; give it or `unet`.
        vae ([`AutoencoderKL`], *optional*): decodes latents of a latent-space model.
        null_class_id (`int`, *optional*): the unconditional label; defaults to `num_class_embeds - 1` for a UNet and
            `num_embeds_ada_norm` for a DiT.
    """

    model_cpu_offload_seq = "transformer->unet->vae"
    _optional_components = ["unet", "transformer", "vae"]

    def __init__(self, scheduler, unet=None, transformer=None, vae=None, null_class_id: Optional[int] = None):
        super().__init__()
        if (unet is None) == (transformer is None):
            raise ValueError("Pass exactly one of `unet` (a UNet2DModel) or `transformer` (a DiTTransformer2DModel).")
        self.register_modules(unet=unet, transformer=transformer, vae=vae, scheduler=scheduler)
        self.register_to_config(null_class_id=null_class_id)

    @property
    def denoiser(self):
        return self.unet if self.unet is not None else self.transformer

    @property
    def null_class_id(self) -> int:
        configured = self.config.null_class_id
        return default_null_class_id(self.denoiser) if configured is None else int(configured)

    @property
    def num_classes(self) -> int:
        """Labels a sample can be generated for: every embedding but the null one (DiT: `num_embeds_ada_norm`)."""
        config = self.denoiser.config
        if self.transformer is not None:
            return int(config.num_embeds_ada_norm)
        return int(config.num_class_embeds) - 1

    def _sample_shape(self, batch: int) -> tuple[int, ...]:
        config = self.denoiser.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (batch, config.in_channels, height, width)

    def _check_labels(self, class_labels) -> list[int]:
        labels = [class_labels] if isinstance(class_labels, int) else [int(c) for c in class_labels]
        bad = [c for c in labels if c < 0 or c > max(self.num_classes, self.null_class_id) or c == self.null_class_id]
        if not labels or bad:
            raise ValueError(
                f"`class_labels` holds {bad or 'nothing'}; give class ids in 0..{self.num_classes - 1} other than the "
                f"null class {self.null_class_id}."
            )
        return labels

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, list[int]],
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Union[ClassConditionalPipelineOutput, tuple]:
        r"""Generates one image per entry of `class_labels`.

        Args:
            class_labels (`int` or `list[int]`): the class of each sample.
            guidance_scale (`float`, *optional*, defaults to `1.0`): classifier-free guidance weight w in
                ε = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)); `1.0` is plain conditional sampling (one model pass per step).
            num_inference_steps (`int`, *optional*, defaults to `50`): denoising steps.
            generator (`torch.Generator`, *optional*): makes sampling deterministic.
            eta (`float`, *optional*, defaults to `0.0`): DDIM's η (ignored by schedulers without it).
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, *optional*, defaults to `True`): return a [`ClassConditionalPipelineOutput`].
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` is {output_type!r}; choose 'pil', 'np' or 'pt'.")
        labels = self._check_labels(class_labels)
        model = self.denoiser
        device = self._execution_device
        dtype = next(model.parameters()).dtype
        sample = randn_tensor(self._sample_shape(len(labels)), generator=generator, device=device, dtype=dtype)
        sample = sample * getattr(self.scheduler, "init_noise_sigma", 1.0)
        cond = torch.tensor(labels, device=device, dtype=torch.long)
        guided = guidance_scale != 1.0
        both = torch.cat([cond, torch.full_like(cond, self.null_class_id)]) if guided else cond
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs = {"eta": eta} if "eta" in _step_parameters(self.scheduler) else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([sample, sample]) if guided else sample
            model_input = self.scheduler.scale_model_input(model_input, t)
            timesteps = t.expand(model_input.shape[0]).to(device)
            eps = predict_noise(model, model_input, timesteps, both)
            if guided:
                eps_cond, eps_uncond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            sample = self.scheduler.step(eps, t, sample, generator=generator, **step_kwargs).prev_sample
        images = self._decode(sample)
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
        elif output_type == "pil":
            images = self.numpy_to_pil(images.permute(0, 2, 3, 1).float().cpu().numpy())
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, labels)
        return ClassConditionalPipelineOutput(images=images, class_labels=labels)

    def _decode(self, sample: torch.Tensor) -> torch.Tensor:
        if self.vae is not None:
            sample = self.vae.decode(sample / self.vae.config.scaling_factor, return_dict=False)[0]
        return (sample / 2 + 0.5).clamp(0, 1)


def _step_parameters(scheduler) -> set[str]:
    import inspect  # noqa: PLC0415

    return set(inspect.signature(scheduler.step).parameters)
