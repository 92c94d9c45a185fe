"""Saliency statistics and masks on parameters sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`).

FSDP2 turns each parameter, and its gradient after `backward`, into a `DTensor` whose rank-local shard is a slice
along dimension 0. Element-wise work (Fisher sums, the ratio test, applying the mask) runs on the shards as it is;
what needs the whole tensor is done here with collectives on the local shards, so that every rank gets the decision
a single process makes: the largest Fisher value (the noise floor), a gradient norm (clipping), SalUn's global top-k
threshold, the masked fraction, and the full mask for saving. Plain tensors pass through unchanged (bitwise), so
the unsharded paths are untouched.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_sharded(tensor) -> bool:
    """Whether `tensor` is a `DTensor` (an FSDP2 parameter, gradient or a statistic made from one)."""
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    return isinstance(tensor, DTensor)


def local(tensor) -> torch.Tensor:
    """The rank-local shard of a `DTensor`; a plain tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def _all_reduce(value: torch.Tensor, op) -> torch.Tensor:
    dist.all_reduce(value, op=op)
    return value


def global_max(tensors) -> float:
    """The largest entry over all tensors (over all ranks' shards when sharded)."""
    tensors = list(tensors)
    if not any(is_sharded(t) for t in tensors):
        return max(float(t.max()) for t in tensors)
    peaks = [local(t).max() if local(t).numel() else torch.tensor(float("-inf")) for t in tensors]
    return float(_all_reduce(torch.stack(peaks).max().float().reshape(1), dist.ReduceOp.MAX))


def global_norm(tensors) -> torch.Tensor:
    """The 2-norm of all tensors together, as `vector_norm(stack([vector_norm(t) ...]))` gives it unsharded."""
    tensors = list(tensors)
    if not any(is_sharded(t) for t in tensors):
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))
    squares = torch.stack([local(t).float().pow(2).sum() for t in tensors]).sum().reshape(1)
    return _all_reduce(squares, dist.ReduceOp.SUM).sqrt()[0]


def gradient_sum_factor(tensor) -> float:
    """What turns a gradient into the sum over ranks of each rank's gradient: FSDP2's reduce-scatter averages over the
    ranks (a sharded gradient is that mean: × world size), DDP or a single process leaves the sum to the caller."""
    return float(dist.get_world_size()) if is_sharded(tensor) else 1.0


def topk_threshold(scores: list[torch.Tensor], keep: int) -> torch.Tensor:
    """The `keep`-th largest |score| over all tensors and ranks, exactly: every entry of the global top `keep` is in
    its rank's local top `keep`, so the top `keep` of the gathered local tops is the global one."""
    flat = torch.cat([local(s).abs().flatten().float() for s in scores])
    tops = torch.topk(flat, min(keep, flat.numel()), sorted=True).values
    padded = torch.full((keep,), float("-inf"))
    padded[: len(tops)] = tops
    gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, padded)
    return torch.topk(torch.cat(gathered), keep, sorted=True).values[-1]


def count_true(mask: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(selected entries, all entries) of a mask, over all ranks' shards when sharded."""
    values = list(mask.values())
    selected = sum(int(local(m).sum()) for m in values)
    total = sum(m.numel() for m in values)  # a DTensor's numel is the full tensor's
    if any(is_sharded(m) for m in values):
        selected = int(_all_reduce(torch.tensor([selected], dtype=torch.float64), dist.ReduceOp.SUM)[0])
    return selected, total


def full_mask(mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole mask on every rank (an all-gather per sharded entry: call it on every rank)."""
    return {name: m.full_tensor() if is_sharded(m) else m for name, m in mask.items()}


def shard_like(mask: dict[str, torch.Tensor], named_params) -> dict[str, torch.Tensor]:
    """A full mask cut like the parameters: each rank keeps the slice its shard of the parameter holds."""
    from torch.distributed.tensor import distribute_tensor  # noqa: PLC0415

    out = {}
    for name, param in named_params:
        m = mask[name]
        if is_sharded(param) and not is_sharded(m):
            # Every rank holds the whole mask already: cut locally, without sending it (`src_data_rank=None`).
            m = distribute_tensor(m.to(local(param).device), param.device_mesh, param.placements, src_data_rank=None)
        out[name] = m
    return out


__all__ = [
    "count_true",
    "full_mask",
    "global_max",
    "global_norm",
    "gradient_sum_factor",
    "is_sharded",
    "local",
    "shard_like",
    "topk_threshold",
]
