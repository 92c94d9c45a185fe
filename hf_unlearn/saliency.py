"""Saliency masks over parameters: SFR-on's forget/remain Fisher ratio and SalUn's top-k gradient magnitude."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

Mask = dict[str, torch.Tensor]


def global_batches(
    num_rows: int, per_device: int, num_processes: int, process_index: int, seed: int, max_batches: Optional[int]
) -> list[tuple[list[int], int]]:
    """This process's rows of every global batch of one seeded pass over `num_rows` rows, with each batch's size.

    The global batches are the same whatever the number of processes (one permutation, cut into batches of
    `per_device × num_processes` rows); process `p` takes the `p`-th contiguous share of each, possibly fewer rows or
    none in the last one. Nothing is padded, so every row counts exactly once.
    """
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed)).tolist()
    size = per_device * num_processes
    batches = []
    for start in range(0, num_rows, size):
        chunk = order[start : start + size]
        batches.append((chunk[process_index * per_device : (process_index + 1) * per_device], len(chunk)))
    return batches[:max_batches]


def gradient_statistic(
    named_params: list[tuple[str, torch.nn.Parameter]],
    batches: Iterable[tuple[Optional[dict], int]],
    row_losses: Callable[[dict], torch.Tensor],
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    square: bool = True,
    clip_norm: Optional[float] = None,
) -> dict[str, torch.Tensor]:
    """Mean over global batches of the (squared) gradient of the batch-mean loss: the authors' Fisher estimator.

    `batches` yields this process's rows of each global batch (`None` when it has none) and the global batch size;
    `row_losses` returns one loss per row. Each process differentiates the *sum* of its rows' losses; `reduce_sum`
    adds the gradients over processes and the division by the global batch size gives the batch-mean gradient a
    single process computes, before it is clipped (`clip_norm`, as the authors' DDPM passes) and squared.
    """
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named_params}
    count = 0
    for batch, total in batches:
        for _, p in named_params:
            p.grad = None
        if batch is not None:
            row_losses(batch).sum().backward()
        grads = [
            reduce_sum(p.grad.detach().float() if p.grad is not None else torch.zeros_like(sums[n])) / total
            for n, p in named_params
        ]
        if clip_norm:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            scale = (clip_norm / (norm + 1e-6)).clamp(max=1.0)
            grads = [g * scale for g in grads]
        for (name, _), g in zip(named_params, grads):
            sums[name] += g * g if square else g
        count += 1
    for _, p in named_params:
        p.grad = None
    if count == 0:
        raise ValueError("Saliency needs at least one batch from each set; the set was empty.")
    return {name: total / count for name, total in sums.items()}


def fisher_ratio_mask(fisher_forget: dict, fisher_remain: dict, threshold: float = 1.0, eps: float = 1e-12) -> Mask:
    r"""M_k = 1 where (F_f[k] + ε) / (F_r[k] + ε) ≥ γ; parameters whose two Fishers are both zero are never selected.

    Args:
        fisher_forget (`dict[str, torch.Tensor]`): F_f, the mean squared forget-set gradient per parameter.
        fisher_remain (`dict[str, torch.Tensor]`): F_r, the same on the remain set.
        threshold (`float`, *optional*, defaults to `1.0`): γ.
        eps (`float`, *optional*, defaults to `1e-12`): ε, keeps the ratio finite where F_r is 0.
    """
    mask = {}
    for name, f_forget in fisher_forget.items():
        f_remain = fisher_remain[name]
        ratio = (f_forget + eps) / (f_remain + eps)
        mask[name] = (ratio >= threshold) & ((f_forget != 0) | (f_remain != 0))
    return mask


def topk_mask(scores: dict[str, torch.Tensor], sparsity: float) -> Mask:
    """SalUn: keep the `sparsity` fraction of parameters with the largest |score| (one global threshold)."""
    flat = torch.cat([s.abs().flatten() for s in scores.values()])
    keep = max(1, int(round(sparsity * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    return {name: s.abs() >= threshold for name, s in scores.items()}


def mask_fraction(mask: Mask) -> float:
    total = sum(m.numel() for m in mask.values())
    return float(sum(int(m.sum()) for m in mask.values()) / max(total, 1))


def save_mask(mask: Mask, path: str | os.PathLike) -> None:
    """Saves a mask as safetensors (uint8) into a temporary file beside `path`, then renames it over `path`."""
    path = os.fspath(path)
    tensors = {name: m.to(torch.uint8).contiguous().cpu() for name, m in mask.items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "hf_unlearn_mask"})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_mask(path: str | os.PathLike, named_params: list[tuple[str, torch.nn.Parameter]]) -> Mask:
    """Loads a mask and checks that it covers exactly the trainable parameters with the same shapes."""
    try:
        tensors = load_file(os.fspath(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"`mask_path` {path} is not a readable safetensors file ({err}); recompute the mask."
        ) from err
    shapes = {name: tuple(p.shape) for name, p in named_params}
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    wrong = [n for n in shapes if n in tensors and tuple(tensors[n].shape) != shapes[n]]
    if missing or extra or wrong:
        raise ValueError(
            f"`mask_path` {path} does not match the model's trainable parameters: missing {missing[:3]}, unexpected "
            f"{extra[:3]}, wrong shapes {wrong[:3]}. Recompute the mask for this model (drop mask_path)."
        )
    device = named_params[0][1].device
    return {name: tensors[name].bool().to(device) for name in shapes}
