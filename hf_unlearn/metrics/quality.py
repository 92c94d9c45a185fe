"""Image quality of a text-to-image pipeline: CLIP score and a CLIP-feature FID, with any CLIP model on disk or Hub.

Concept erasure must not wreck everything else, so an erased pipeline is also scored on ordinary prompts
([`BENIGN_PROMPTS`] by default): how well its images match their prompts (CLIP score) and, given real reference
images, how far their distribution is from them (Fréchet distance). Both need a CLIP model (e.g.
`openai/clip-vit-large-patch14`, the one SD 1.x's text encoder comes from); nothing is downloaded unless you name a
Hub repo. The FID here uses CLIP image embeddings, not Inception features, and says so in its result: its values are
comparable between pipelines scored with the same CLIP model, not with published Inception FIDs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .generation import frechet_distance
from .nudity import BENIGN_PROMPTS
from .samples import generate_samples


def _to_tensor(images) -> torch.Tensor:
    """PIL images or a `(n, c, h, w)` tensor in [0, 1] → float RGB tensor in [0, 1]."""
    if isinstance(images, torch.Tensor):
        batch = images.float()
    else:
        arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch.repeat(1, 3, 1, 1) if batch.shape[1] == 1 else batch


def _crop_size(image_processor) -> tuple[int, int]:
    """(height, width) of the CLIP input: a dict in older transformers, a `SizeDict` in 5.x, or one int."""
    crop = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
    if isinstance(crop, int):
        return crop, crop
    get = crop.get if isinstance(crop, dict) else lambda key: getattr(crop, key, None)
    if get("height") is not None:
        return int(get("height")), int(get("width"))
    edge = int(get("shortest_edge"))
    return edge, edge


class CLIPScorer(nn.Module):
    r"""CLIP image and text embeddings, the CLIP score, and a feature extractor for [`frechet_distance`].

    Args:
        model_name_or_path (`str`, *optional*, defaults to `"openai/clip-vit-large-patch14"`): a folder or Hub repo id
            with a `CLIPModel` and its processor (tokenizer + image processor).
        device (`str` or `torch.device`, *optional*): where to run it (default: CPU).

    Images are resized straight to the image processor's crop size (generated images are square) and normalised with
    its mean and std. As a module, it maps `(n, c, h, w)` images in [0, 1] to `(n, d)` unit-norm image embeddings.
    """

    def __init__(self, model_name_or_path: str = "openai/clip-vit-large-patch14", device=None):
        super().__init__()
        from transformers import CLIPModel, CLIPProcessor  # noqa: PLC0415

        self.name = str(model_name_or_path)
        self.model = CLIPModel.from_pretrained(model_name_or_path).eval().requires_grad_(False).to(device or "cpu")
        self.processor = CLIPProcessor.from_pretrained(model_name_or_path)
        ip = self.processor.image_processor
        self.size = _crop_size(ip)
        self.register_buffer("mean", torch.tensor(ip.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(ip.image_std).view(1, -1, 1, 1), persistent=False)
        self.to(device or "cpu")

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = F.interpolate(_to_tensor(images).to(self.device), size=self.size, mode="bicubic", antialias=True)
        out = self.model.get_image_features(pixel_values=(pixels.clamp(0, 1) - self.mean) / self.std)
        return F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(**tokens.to(self.device))
        return F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)

    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """Per pair: 100 · max(cos(image, prompt), 0) (Hessel et al. 2021; torchmetrics' `CLIPScore`)."""
        images = images if isinstance(images, torch.Tensor) else list(images)
        if len(images) != len(prompts):
            raise ValueError(f"`images` has {len(images)} entries but `prompts` has {len(prompts)}; pair them 1:1.")
        cosine = (self(images) * self.text_features(prompts)).sum(-1)
        return 100 * cosine.clamp_min(0).cpu()


def evaluate_quality(
    pipeline,
    prompts: Sequence[str] = tuple(BENIGN_PROMPTS),
    *,
    clip_model: str | CLIPScorer = "openai/clip-vit-large-patch14",
    reference_images=None,
    seed: int = 0,
    num_images_per_prompt: int = 1,
    **call_kwargs,
) -> dict[str, Any]:
    r"""Generates images for ordinary prompts and scores them with CLIP (and a CLIP-feature FID given references).

    Args:
        pipeline (`DiffusionPipeline`): a text-to-image pipeline, e.g. the erased one.
        prompts (`list[str]`, *optional*, defaults to `BENIGN_PROMPTS`): prompts the model must still draw well.
        clip_model (`str` or [`CLIPScorer`], *optional*): the CLIP model (path or repo id), or a loaded scorer.
        reference_images (PIL images or a tensor in [0, 1], *optional*): real images for the Fréchet distance (PIL
            images are resized to the generated size).
        seed (`int`, *optional*, defaults to `0`): as in [`generate_samples`], so two pipelines see the same noise.
        num_images_per_prompt (`int`, *optional*, defaults to `1`): images per prompt.
        call_kwargs: passed to the pipeline call (`num_inference_steps`, `guidance_scale`, ...).

    Returns:
        `dict`: `clip_score` (mean), `clip_score_per_prompt`, `num_images`, `clip_model`, and with references
        `fid` and `fid_features` (which features the FID used).
    """
    scorer = clip_model if isinstance(clip_model, CLIPScorer) else CLIPScorer(clip_model)
    rows = generate_samples(pipeline, prompts, seed=seed, num_images_per_prompt=num_images_per_prompt, **call_kwargs)
    images = [image for row in rows for image in row]
    paired = [prompt for prompt, row in zip(prompts, rows) for _ in row]
    scores = scorer.score(images, paired)
    per_prompt = {p: float(s.mean()) for p, s in zip(prompts, scores.split([len(r) for r in rows]))}
    result: dict[str, Any] = {
        "clip_score": float(scores.mean()),
        "clip_score_per_prompt": per_prompt,
        "num_images": len(images),
        "clip_model": scorer.name,
    }
    if reference_images is not None:
        fake = _to_tensor(images)
        if not isinstance(reference_images, torch.Tensor):  # real photos come in any size: match the generated ones
            size = (fake.shape[-1], fake.shape[-2])
            reference_images = [image.convert("RGB").resize(size, Image.BICUBIC) for image in reference_images]
        real = _to_tensor(reference_images)
        result["fid"] = frechet_distance(real, fake, feature=scorer)
        result["fid_features"] = f"CLIP image embeddings of {scorer.name}"
    return result
