"""The saliency part of the unified view: which weights a method may move.

`Saliency` objects compute a mask from gradient statistics at θ0 (SFR-on's forget/remain Fisher ratio, SalUn's top-k
gradient magnitude); the statistics come from `pass_statistic`, one seeded pass over a set cut into global batches, so
one process and many give the same mask. A new criterion is a subclass with a `name` and `compute`, then
`register_saliency`: the loop needs no edit."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from accelerate.utils import send_to_device
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .sharded import (
    count_true,
    global_max,
    global_norm,
    gradient_sum_factor,
    is_sharded,
    local,
    shard_like,
    topk_threshold,
)

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
    sharded = any(is_sharded(p) for _, p in named_params)
    count, seen = 0, None
    for batch, total in batches:
        for _, p in named_params:
            p.grad = None
        if batch is not None:
            row_losses(batch).sum().backward()
            seen = batch
        elif sharded:
            # FSDP2 gathers and reduces in every forward and backward: a rank with no rows in this global batch still
            # runs one, with a zero loss, so that the other ranks' collectives complete.
            # Its random draws (a diffusion loss's noise) are undone, so that later batches draw as unsharded.
            if seen is None:
                raise ValueError("A rank has no rows in the first saliency batch; use fewer processes or more rows.")
            device = local(named_params[0][1]).device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                (row_losses(seen).sum() * 0.0).backward()
        grads = [
            reduce_sum(p.grad.detach().float() if p.grad is not None else torch.zeros_like(sums[n])) / total
            for n, p in named_params
        ]
        if clip_norm:
            norm = global_norm(grads)
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


def pass_statistic(
    family,
    config,
    accelerator,
    named_params: list[tuple[str, torch.nn.Parameter]],
    dataset,
    row_losses: Callable[[dict], torch.Tensor],
    clip_norm: Optional[float] = None,
    square: bool = True,
    on_batch: Callable[[], None] = lambda: None,
) -> dict[str, torch.Tensor]:
    """`gradient_statistic` over one seeded pass of `dataset` (seed `config.seed`, at most
    `config.saliency_max_batches` batches of `config.per_device_train_batch_size` rows per process), cut into global
    batches that every process count shares, so one process and many give the same statistic. `on_batch` is called
    once per batch (the engine counts passes with it)."""
    device = accelerator.device
    base = family.make_dataloader(dataset, batch_size=config.per_device_train_batch_size, shuffle=False, seed=0)
    plan = global_batches(
        len(dataset),
        config.per_device_train_batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        config.seed,
        config.saliency_max_batches,
    )

    # The plan's batches through a loader over the same rows and collate, so the family's worker processes
    # (`dataloader_num_workers`) prepare them ahead as they do the steps' batches; the rows are those of the plan.
    loader = DataLoader(
        base.dataset,
        batch_sampler=[indices for indices, _ in plan if indices],
        collate_fn=base.collate_fn,
        # Its own generator: iterating a loader draws a base seed, which from the global generator would shift the
        # noise and timesteps that the diffusion families' statistic draws.
        generator=torch.Generator(),
        **family.loader_options(),
    )

    def batches():
        shown = accelerator.is_local_main_process
        fetched = iter(loader)
        for indices, total in tqdm(plan, desc=f"saliency pass ({len(dataset)} rows)", disable=not shown):
            on_batch()
            batch = next(fetched) if indices else None
            yield (None if batch is None else send_to_device(batch, device)), total

    def reduce_sum(t):
        if is_sharded(t):  # FSDP2 has reduced it over the ranks already (their mean)
            return t * gradient_sum_factor(t)
        return accelerator.reduce(t, reduction="sum") if accelerator.num_processes > 1 else t

    return gradient_statistic(named_params, batches(), row_losses, reduce_sum, square=square, clip_norm=clip_norm)


@dataclass
class SaliencyInputs:
    """What a `Saliency` (and a `Geometry`'s setup) may look at: θ0 in eval mode, the sets and the pass statistic.

    `statistic(dataset, row_losses, clip_norm=None, square=True)` runs [`pass_statistic`] with the run's family,
    config, accelerator and trainable parameters.
    """

    family: Any
    config: Any
    module: torch.nn.Module
    named_params: list[tuple[str, torch.nn.Parameter]]
    split: Any
    statistic: Callable[..., dict[str, torch.Tensor]]


class Saliency:
    """A saliency criterion: `compute` returns a boolean mask per trainable parameter (True: the weight may move)."""

    name = "saliency"

    def compute(self, inputs: SaliencyInputs) -> Mask:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class FisherRatio(Saliency):
    """SFR-on: M_k = [(F_f,k + ε) / (F_r,k + ε) ≥ γ], F the squared batch-mean gradient of the task loss (guided for
    diffusion when `saliency_guidance_scale` is set, clipped before squaring with `saliency_clip_norm`)."""

    name = "fisher_ratio"

    def compute(self, inputs: SaliencyInputs) -> Mask:
        cfg, family, module = inputs.config, inputs.family, inputs.module
        if cfg.saliency_guidance_scale is None:
            rows = lambda batch: family.per_sample_loss(module, batch)  # noqa: E731
        else:
            rows = lambda batch: family.guided_per_sample_loss(module, batch, cfg.saliency_guidance_scale)  # noqa: E731
        f_forget = inputs.statistic(inputs.split.forget, rows, cfg.saliency_clip_norm)
        f_remain = inputs.statistic(inputs.split.remain, rows, cfg.saliency_clip_norm)
        return fisher_ratio_mask(
            f_forget, f_remain, cfg.mask_threshold, cfg.mask_eps, cfg.mask_zero_fisher, cfg.mask_noise_floor
        )


class TopK(Saliency):
    """SalUn: the `salun_sparsity` share of weights with the largest |gradient| of the true-label forget loss (its
    magnitude is the same for ascent or descent)."""

    name = "topk"

    def compute(self, inputs: SaliencyInputs) -> Mask:
        family, module = inputs.family, inputs.module
        rows = lambda batch: family.per_sample_loss(module, batch)  # noqa: E731
        grads = inputs.statistic(inputs.split.forget, rows, None, square=False)
        return topk_mask(grads, inputs.config.salun_sparsity)


_SALIENCY: dict[str, Saliency] = {}


def register_saliency(saliency: Saliency, *, overwrite: bool = False) -> Saliency:
    """Makes `saliency` usable by name in `UnlearnMethod(saliency="<name>")`."""
    if saliency.name in _SALIENCY and not overwrite:
        raise ValueError(
            f"A saliency named '{saliency.name}' is already registered; pass overwrite=True to replace it."
        )
    _SALIENCY[saliency.name] = saliency
    return saliency


def get_saliency(name_or_saliency) -> Optional[Saliency]:
    """The registered saliency `name` (a `Saliency` passes through; `None` means no mask)."""
    if name_or_saliency is None or isinstance(name_or_saliency, Saliency):
        return name_or_saliency
    if name_or_saliency not in _SALIENCY:
        raise ValueError(f"`saliency` is {name_or_saliency!r}; choose None or one of {sorted(_SALIENCY)}.")
    return _SALIENCY[name_or_saliency]


register_saliency(FisherRatio())
register_saliency(TopK())


def fisher_ratio_mask(
    fisher_forget: dict,
    fisher_remain: dict,
    threshold: float = 1.0,
    eps: float = 1e-15,
    zero_fisher: str = "select",
    noise_floor: float = 0.0,
) -> Mask:
    r"""M_k = 1 where (F_f[k] + ε) / (F_r[k] + ε) ≥ γ.

    Args:
        fisher_forget (`dict[str, torch.Tensor]`): F_f, the mean squared forget-set gradient per parameter.
        fisher_remain (`dict[str, torch.Tensor]`): F_r, the same on the remain set.
        threshold (`float`, *optional*, defaults to `1.0`): γ.
        eps (`float`, *optional*, defaults to `1e-15`): ε, keeps the ratio finite where F_r is 0 (the authors').
        zero_fisher (`str`, *optional*, defaults to `"select"`): entries whose two Fishers are both exactly 0 have
            ratio 1; `"select"` keeps the rule as it is (selected for γ ≤ 1, as the authors), `"skip"` never selects
            them. Such entries are common in BatchNorm nets (units dead in the eval-mode passes), and the train-mode
            steps do give them a forget gradient (tests/test_authors_update.py).
        noise_floor (`float`, *optional*, defaults to `0.0`): Fisher values below this fraction of the largest one
            over both sets are set to exactly 0 first, so that entries whose gradient is float noise (below float32
            resolution) get the same decision whatever the summation order or the number of processes.
    """
    floor = 0.0
    if noise_floor:
        floor = noise_floor * global_max([*fisher_forget.values(), *fisher_remain.values()])
    mask = {}
    for name, f_forget in fisher_forget.items():
        f_remain = fisher_remain[name]
        if floor:
            f_forget = torch.where(f_forget < floor, torch.zeros_like(f_forget), f_forget)
            f_remain = torch.where(f_remain < floor, torch.zeros_like(f_remain), f_remain)
        mask[name] = (f_forget + eps) / (f_remain + eps) >= threshold
        if zero_fisher == "skip":
            mask[name] &= (f_forget != 0) | (f_remain != 0)
    return mask


def topk_mask(scores: dict[str, torch.Tensor], sparsity: float) -> Mask:
    """SalUn: keep the `sparsity` fraction of parameters with the largest |score| (one global threshold, over all
    ranks' shards for FSDP2 parameters)."""
    if any(is_sharded(s) for s in scores.values()):
        keep = max(1, int(round(sparsity * sum(s.numel() for s in scores.values()))))
        threshold = topk_threshold(list(scores.values()), keep)
        return {name: s.abs() >= threshold.item() for name, s in scores.items()}
    flat = torch.cat([s.abs().flatten() for s in scores.values()])
    keep = max(1, int(round(sparsity * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    return {name: s.abs() >= threshold for name, s in scores.items()}


def mask_fraction(mask: Mask) -> float:
    selected, total = count_true(mask)
    return float(selected / max(total, 1))


def save_mask(mask: Mask, path: str | os.PathLike) -> None:
    """Saves a mask as safetensors (uint8) into a temporary file beside `path`, then renames it over `path`."""
    path = os.fspath(path)
    if any(is_sharded(m) for m in mask.values()):
        raise ValueError(
            "The mask is sharded (FSDP2): gather it with `sharded.full_mask` on every rank, then save it."
        )
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
    device = local(named_params[0][1]).device
    return shard_like({name: tensors[name].bool().to(device) for name in shapes}, named_params)
