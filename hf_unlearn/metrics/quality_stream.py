"""CLIP score and CLIP-feature FID a batch at a time, for image sets too large to hold in memory (COCO-30k).

[`CLIPScorer`] embeds a chunk of images at a time and only the embeddings are kept; [`frechet_from_features`] then
computes the Fréchet distance from them with the formula of torchmetrics' FID, which [`frechet_distance`] applies to
whole image tensors (the tests check both agree). [`fid_sample_check`] says when a sample is too small for an FID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def reference_files(folder) -> list[Path]:
    """The image files of a folder of real images (sorted by name; other files are skipped), at least two."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Reference images: {str(folder)!r} is not a folder of images.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"Reference images: {str(folder)!r} holds {len(files)} images; an FID needs at least 2.")
    return files


def fid_sample_check(num_real: int, num_generated: int, feature_dim: int) -> tuple[bool, Optional[str]]:
    """Whether a Fréchet distance on these sample sizes is trustworthy, and why not.

    With `n <= d` samples of `d`-dimensional features the covariance estimate is singular (its rank is at most
    `n - 1`), and the distance is dominated by that estimation error, so such a value is flagged, not compared.
    """
    smallest = min(num_real, num_generated)
    if smallest > feature_dim:
        return True, None
    return False, (
        f"FID on {num_real} real and {num_generated} generated images with {feature_dim}-dimensional features: "
        f"fewer samples than feature dimensions, so both covariances are singular and the FID is unreliable "
        f"(published FIDs use 10k-30k images); use more than {feature_dim} of each."
    )


def _tensor(images, size) -> torch.Tensor:
    """`(n, 3, h, w)` floats in [0, 1], all resized to `size` (CLIP resizes anyway; one size lets them stack)."""
    arrays = [np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) / 255 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def frechet_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two `(n, d)` feature sets, in float64, by the formula of torchmetrics' FID (which
    [`frechet_distance`] runs on whole image tensors): features can then be gathered a batch at a time."""
    stats = []
    for feats in (real.double(), fake.double()):
        stats.append((feats.mean(0), torch.cov(feats.T)))
    (mu1, sigma1), (mu2, sigma2) = stats
    sqrt_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * sqrt_trace)


def clip_pass(scorer, pairs, with_features: bool, size=None, chunk: int = 32):
    r"""CLIP scores and image embeddings of `(prompt, image)` pairs, `chunk` at a time, so that neither 30k generated
    images nor a reference set is ever held in memory.

    Args:
        scorer ([`CLIPScorer`]): the CLIP model.
        pairs (`Iterable[tuple[str | None, PIL.Image.Image]]`): e.g. a generator that draws the images as it goes;
            pairs whose prompt is `None` (real images) get no score.
        with_features (`bool`): whether to keep the image embeddings (for an FID).
        size (`tuple[int, int]`, *optional*): every image is resized to it first; default: the first image's size.
        chunk (`int`, *optional*, defaults to `32`): images per CLIP forward pass.

    Returns:
        `(scores, features, size)`: `(n,)` CLIP scores or `None`, `(n, d)` embeddings or `None`, the size used.
    """
    scores, features, buffer, target = [], [], [], [size]

    def flush():
        target[0] = target[0] or buffer[0][1].size
        batch = _tensor([image for _, image in buffer], target[0])
        if buffer[0][0] is not None:
            scores.append(scorer.score(batch, [prompt for prompt, _ in buffer]))
        if with_features:
            features.append(scorer(batch).cpu())
        buffer.clear()

    for pair in pairs:
        buffer.append(pair)
        if len(buffer) == chunk:
            flush()
    if buffer:
        flush()
    return (torch.cat(scores) if scores else None), (torch.cat(features) if features else None), target[0]
