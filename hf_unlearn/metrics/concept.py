"""`concept_metrics`: how far a text-to-image model still tells a concept from its anchor, from the model alone.

No extra model (NudeNet, CLIP) and no sampling: both numbers come from the UNet's noise predictions on the split's own
images at fixed noise and timesteps, so the values before and after unlearning are comparable and cost a few
forward passes. For the published evaluations (NudeNet detections, CLIP score, FID) see `evaluate_nudity` and
`evaluate_quality`.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def concept_metrics(family, split, *, max_images: int = 32, batch_size: int = 8, seed: int = 0) -> dict:
    r"""`concept_gap` and `remain_noise_loss` of a text-to-image family's current UNet on a prepared `ConceptSplit`.

    Args:
        family ([`TextToImageFamily`]): the model; its mode is restored afterwards and no weight changes.
        split ([`ConceptSplit`]): with its images generated or given (`Unlearner.unlearn` or `materialize` did that).
        max_images (`int`, *optional*, defaults to `32`): images used per set (the first ones).
        batch_size (`int`, *optional*, defaults to `8`): images per forward pass.
        seed (`int`, *optional*, defaults to `0`): seed of the noise and timesteps, the same for every call.

    Returns:
        `dict`: `concept_gap`, the mean over forget images of the per-pixel squared distance between the noise
        prediction for the forget prompt and for its anchor prompt at the same noisy latents and timestep (lower: the
        concept is drawn like its anchor); `remain_noise_loss`, the mean noise-prediction loss on the remain images
        with their own captions (`None` without a remain set); `concept_images`, the number of forget images used.
    """
    model = family.model
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            gap, count = _mean(
                family, split.forget, max_images, batch_size, device, lambda b: family.remap_loss(model, b, None)
            )
            torch.manual_seed(seed + 1)
            rows = lambda b: family.per_sample_loss(model, b)  # noqa: E731
            loss = _mean(family, split.remain, max_images, batch_size, device, rows)[0] if len(split.remain) else None
    finally:
        model.train(training)
    return {"concept_gap": gap, "remain_noise_loss": loss, "concept_images": count}


def _mean(family, dataset, max_images, batch_size, device, per_row):
    """The mean of `per_row` over the first `max_images` rows of `dataset`, and how many rows that was."""
    rows = dataset.select(range(min(max_images, len(dataset))))
    loader = family.make_dataloader(rows, batch_size=batch_size, shuffle=False, seed=0)
    total, count = 0.0, 0
    for batch in loader:
        values = per_row({k: v.to(device) for k, v in batch.items()})
        total += float(values.sum())
        count += len(values)
    return total / max(count, 1), count
