"""Metrics of class-conditional generation: a judge classifier's verdict on generated samples (forget-class FA, class
histograms and their KL to RT's, per-class accuracy), FID with a configurable feature extractor, and sample grids.

FID uses torchmetrics' `FrechetInceptionDistance`. Its Inception weights download at first use; where they cannot
(offline), the judge's penultimate features stand in, and every report names the extractor it used (`fid_features`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils import atomic_save_image


class Judge(nn.Module):
    r"""An image classifier that scores generated images given in [0, 1], shape `(batch, channels, height, width)`.

    Args:
        model (`nn.Module`): any classifier; transformers models (`pixel_values=`, `.logits`) and plain modules work.
        image_size (`int`, *optional*): resize inputs to this square size first (e.g. 16 for the digits judges).
        mean (`float`, *optional*, defaults to `0.5`): normalisation mean, as in the judge's image processor.
        std (`float`, *optional*, defaults to `0.5`): normalisation std.
        channels (`int`, *optional*): repeat grayscale inputs to this many channels.
        head (`str`, *optional*, defaults to `"classifier"`): the submodule whose input is the penultimate feature.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: Optional[int] = None,
        mean: float = 0.5,
        std: float = 0.5,
        channels: Optional[int] = None,
        head: str = "classifier",
    ):
        super().__init__()
        self.model = model.eval()
        self.image_size, self.mean, self.std, self.channels, self.head = image_size, mean, std, channels, head

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if self.image_size is not None and images.shape[-1] != self.image_size:
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        if self.channels is not None and images.shape[1] != self.channels:
            images = images.repeat(1, self.channels // images.shape[1], 1, 1)
        return (images - self.mean) / self.std

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels) if hasattr(self.model, "config") else self.model(pixels)
        return getattr(out, "logits", out)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return torch.cat(
            [self._run(self.prepare(chunk.to(device))).float().cpu() for chunk in images.split(batch_size)]
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the input of the `head` submodule), flattened: FID's feature extractor."""
        captured = []
        head = self.model.get_submodule(self.head)
        handle = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        try:
            self._run(self.prepare(images.to(next(self.model.parameters()).device)))
        finally:
            handle.remove()
        return captured[0].flatten(1).float()


def predictions(judge: Judge, images: torch.Tensor) -> torch.Tensor:
    return judge.logits(images).argmax(-1)


def forget_accuracy(preds: torch.Tensor, forget_classes: Sequence[int]) -> float:
    """FA: the share of samples generated for the forgotten class(es) that the judge assigns to a forgotten class."""
    if len(preds) == 0:
        raise ValueError("`preds` is empty: generate at least one sample for the forgotten class.")
    return float(torch.isin(preds, torch.tensor(list(forget_classes))).float().mean())


def class_histogram(preds: torch.Tensor, num_classes: int) -> np.ndarray:
    """The judge's class counts over `preds` (length `num_classes`)."""
    return np.bincount(preds.cpu().numpy(), minlength=num_classes)[:num_classes].astype(np.float64)


def histogram_kl(reference_counts: np.ndarray, counts: np.ndarray, smoothing: float = 0.5) -> float:
    r"""KL(p_ref ‖ p) between two class histograms, each smoothed with `smoothing` pseudo-counts per class.

    The smoothing (Jeffreys' 0.5 by default) keeps the KL finite when a class is missing from one histogram.
    """
    ref = np.asarray(reference_counts, dtype=np.float64) + smoothing
    cur = np.asarray(counts, dtype=np.float64) + smoothing
    ref, cur = ref / ref.sum(), cur / cur.sum()
    return float(np.sum(ref * (np.log(ref) - np.log(cur))))


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, classes: Optional[Sequence[int]] = None) -> dict:
    """{class: share of samples generated for that class that the judge assigns to it}."""
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    return {int(c): float((preds[labels == c] == c).float().mean()) for c in classes if (labels == c).any()}


def frechet_distance(
    real: torch.Tensor, fake: torch.Tensor, feature: nn.Module | int = 2048, batch_size: int = 512
) -> float:
    r"""FID between two image sets in [0, 1] with torchmetrics' `FrechetInceptionDistance`.

    Args:
        real (`torch.Tensor`): reference images, `(n, channels, height, width)`, in [0, 1].
        fake (`torch.Tensor`): generated images, same layout.
        feature (`nn.Module` or `int`, *optional*, defaults to `2048`): a feature extractor mapping [0, 1] images to
            `(n, d)` features (e.g. a [`Judge`]), or an Inception layer (64, 192, 768, 2048; needs torch-fidelity and
            the Inception weights, which download at first use; 3-channel inputs are made from grayscale).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance  # noqa: PLC0415

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 images per set; got {len(real)} real and {len(fake)} generated.")
    inception = isinstance(feature, int)
    metric = FrechetInceptionDistance(feature=feature, normalize=True, input_img_size=tuple(real.shape[1:]))
    for images, is_real in ((real, True), (fake, False)):
        for chunk in images.split(batch_size):
            chunk = chunk.float()
            if inception and chunk.shape[1] == 1:
                chunk = chunk.repeat(1, 3, 1, 1)
            metric.update(chunk, real=is_real)
    return float(metric.compute())


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    nrow: Optional[int] = None,
    scale: int = 4,
    row_labels: Optional[Sequence[str]] = None,
) -> None:
    """Saves images in [0, 1] as one PNG grid (rows of `nrow`, upscaled `scale`×), written atomically.

    Images are separated by mid-grey lines (visible on white strokes and black backgrounds alike); `row_labels`, one
    per row, are written in a column on the left."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    n, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((channels, rows * (height + 1) + 1, nrow * (width + 1) + 1), 0.5)
    for i, image in enumerate(images.float().cpu()):
        r, c = divmod(i, nrow)
        grid[
            :, 1 + r * (height + 1) : 1 + r * (height + 1) + height, 1 + c * (width + 1) : 1 + c * (width + 1) + width
        ] = image
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if channels == 1 else array).convert("RGB")
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if row_labels is not None:
        if len(row_labels) != rows:
            raise ValueError(f"`row_labels` has {len(row_labels)} entries for {rows} rows of images.")
        draw = ImageDraw.Draw(picture)
        column = int(max(draw.textlength(str(label)) for label in row_labels)) + 8
        labelled = Image.new("RGB", (picture.width + column, picture.height), "white")
        labelled.paste(picture, (column, 0))
        draw = ImageDraw.Draw(labelled)
        for r, label in enumerate(row_labels):
            draw.text((4, r * (height + 1) * scale + (height * scale) // 2 - 5), str(label), fill="black")
        picture = labelled
    atomic_save_image(picture, path)


@torch.no_grad()
def generate(
    pipe,
    class_labels: Sequence[int],
    *,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 25,
    seed: int = 0,
    batch_size: int = 500,
    desc: Optional[str] = None,
) -> torch.Tensor:
    """Samples in [0, 1] for `class_labels` from a [`ClassConditionalPipeline`], in batches, reproducibly (one CPU
    generator seeded `seed` across the batches); with `desc`, a progress bar on the local main process."""
    from accelerate import PartialState  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415

    generator = torch.Generator().manual_seed(seed)
    labels = list(class_labels)
    starts = range(0, len(labels), batch_size)
    chunks = [
        pipe(
            labels[i : i + batch_size],
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type="pt",
        ).images.cpu()
        for i in tqdm(starts, desc=desc, disable=desc is None or not PartialState().is_local_main_process)
    ]
    return torch.cat(chunks)


def generation_metrics(
    pipe,
    judge: Judge,
    forget_classes: Sequence[int],
    real_remain: torch.Tensor,
    *,
    num_classes: int,
    samples_per_class: int = 50,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 25,
    seed: int = 0,
    feature: Optional[nn.Module | int] = None,
    grid_path: Optional[str] = None,
    reference_histogram: Optional[np.ndarray] = None,
    on_samples: Optional[Callable] = None,
) -> dict:
    r"""Scores a class-conditional model: FA, the forget-class histogram (and its KL to `reference_histogram`, e.g.
    RT's), per-class judge accuracy, the mean over kept classes (`remain_acc`), and FID of kept-class samples.

    Args:
        pipe ([`ClassConditionalPipeline`]): the model to score.
        judge ([`Judge`]): the classifier that names the generated digits.
        forget_classes (`list[int]`): the forgotten classes.
        real_remain (`torch.Tensor`): real images of the kept classes in [0, 1], FID's reference.
        num_classes (`int`): number of data classes.
        samples_per_class (`int`, *optional*, defaults to `50`): samples generated per class.
        feature (`nn.Module` or `int`, *optional*): FID's feature extractor; defaults to the judge's penultimate layer.
        grid_path (`str`, *optional*): where to save a PNG grid (one row per class, up to 10 samples each).
        reference_histogram (`np.ndarray`, *optional*): the forget-class histogram of RT, for `hist_kl`.
    """
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    images = generate(
        pipe, labels.tolist(), guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, seed=seed
    )
    preds = predictions(judge, images)
    forget = torch.isin(labels, torch.tensor(list(forget_classes)))
    accuracy = per_class_accuracy(preds, labels)
    kept = [c for c in range(num_classes) if c not in set(forget_classes)]
    histogram = class_histogram(preds[forget], num_classes)
    feature = judge if feature is None else feature
    metrics = {
        "FA": forget_accuracy(preds[forget], forget_classes),
        "remain_acc": float(np.mean([accuracy[c] for c in kept])),
        "per_class_acc": accuracy,
        "forget_histogram": histogram.tolist(),
        "FID": frechet_distance(real_remain, images[~forget], feature),
        "fid_features": "inception" if isinstance(feature, int) else f"judge:{type(judge.model).__name__}",
        "samples_per_class": samples_per_class,
    }
    if reference_histogram is not None:
        metrics["hist_kl"] = histogram_kl(reference_histogram, histogram)
    if grid_path is not None:
        shown = min(samples_per_class, 10)
        picks = torch.cat(
            [torch.arange(c * samples_per_class, c * samples_per_class + shown) for c in range(num_classes)]
        )
        names = [f"class {c}" + (" (forgotten)" if c in set(forget_classes) else "") for c in range(num_classes)]
        save_grid(images[picks], grid_path, nrow=shown, row_labels=names)
    if on_samples is not None:
        on_samples(images, labels, preds)
    return metrics
