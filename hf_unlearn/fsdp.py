"""FSDP2 for the engine: the trained model sharded with `torch.distributed.fsdp.fully_shard`, checkpointed per rank,
and gathered back into a plain model at the end of the run.

Why `fully_shard` directly and not accelerate's FSDP2 path: accelerate (1.16, pinned) turns an FSDP launch on CPUs into
plain data parallelism (`AcceleratorState` sets `DistributedType.FSDP` only for GPU-like devices; on CPU it reports
`MULTI_CPU`), so its path cannot run, nor be tested, without GPUs; and its `save_state` writes a sharded model through
`torch.distributed.checkpoint`, whose metadata is a pickle, while the engine's checkpoints hold no pickle. Sharding
here is the same on every device: under an FSDP launch the engine never hands the model or the optimizer to
`accelerator.prepare` (which would wrap the module in DDP on CPU, or shard it a second time on GPUs); the data loaders,
RNG states, autocast and gradient clipping (`Accelerator.clip_grad_norm_` is DTensor-aware) go through accelerate.

What is sharded: every module whose class the model lists in `_no_split_modules` (transformers' and diffusers' own
"one block" list, which accelerate's FSDP auto-wrap policy reads too), else every child of the root (the items of a
child `ModuleList`/`ModuleDict`), then the root. The FSDP plugin's other options (wrap policy, CPU offload,
`reshard_after_forward`) are not read. The saliency part computes and applies masks on the shards
(`hf_unlearn/parts/sharded.py`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .parts.sharded import full_mask, is_sharded, local, shard_like
from .training import requested_sharding
from .utils import get_logger

logger = get_logger(__name__)

SHARD_FILE = "fsdp_rank_{rank}.safetensors"
SHARD_FORMAT = "hf_unlearn/fsdp2-shard-v1"


def fsdp_requested(accelerator) -> bool:
    """Whether this run shards with FSDP2: the launch asks for FSDP (`distributed_type: FSDP` in the accelerate config,
    which `accelerate launch` turns into `ACCELERATE_USE_FSDP`) and runs several processes."""
    asked = accelerator.distributed_type == DistributedType.FSDP or requested_sharding() == DistributedType.FSDP
    return asked and accelerator.num_processes > 1


def gathered_mask(mask: Optional[dict]) -> Optional[dict]:
    """The whole mask (call on every rank: one all-gather per sharded tensor); `None` and plain masks pass through."""
    return None if mask is None else full_mask(mask)


def mask_like(mask: Optional[dict], named) -> Optional[dict]:
    """A saved (whole) mask cut like the parameters' shards; `None` and unsharded parameters pass through."""
    return None if mask is None else shard_like(mask, named)


class Fsdp2:
    r"""The run's FSDP2 sharding of `model` (in place), and what the engine needs around it.

    Args:
        model (`torch.nn.Module`): the model to train; sharded in place by [`shard`].
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self._skeleton: Optional[nn.Module] = None

    def shard(self, names: list[str]) -> list[tuple[str, nn.Parameter]]:
        """Shards the model and returns its trainable `(name, parameter)` pairs for `names` (the sharded parameters
        replace the originals, so lists made before are stale)."""
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

        model = self.model  # `fully_shard` moves each unit to the mesh's device as it shards it, not all at once
        # A copy of the module tree on the meta device (no memory): at the end the gathered weights fill it, so the
        # result is a plain model that saves, evaluates and loads like the unsharded run's.
        memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
        self._skeleton = copy.deepcopy(model, memo)
        units = _units(model)
        for unit in units:
            fully_shard(unit)
        fully_shard(model)
        logger.info(f"FSDP2: the model is sharded over {torch.distributed.get_world_size()} ranks in "
                    f"{len(units) + 1} units (fully_shard).")  # fmt: skip
        params = dict(model.named_parameters())
        return [(name, params[name]) for name in names]

    def _reshard(self) -> None:
        # The root keeps its gathered parameters after a forward; the weights to read or write are the shards.
        from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def gather(self) -> nn.Module:
        """The model as a plain module with the full weights, on every rank (call on every rank: all-gathers)."""
        self._reshard()
        sharded, plain = self.model, self._skeleton
        made: dict[int, nn.Parameter] = {}
        with torch.no_grad():
            for module_name, module in plain.named_modules():
                source = sharded.get_submodule(module_name)
                for name, meta in list(module._parameters.items()):
                    if meta is None:
                        continue
                    param = source._parameters[name]
                    if id(param) not in made:  # a tied parameter is gathered once and stays tied
                        full = param.full_tensor() if is_sharded(param) else param.detach()
                        made[id(param)] = nn.Parameter(full.detach().clone(), requires_grad=meta.requires_grad)
                    module._parameters[name] = made[id(param)]
                for name, buffer in source._buffers.items():  # BatchNorm statistics moved during the run
                    if buffer is not None:
                        module._buffers[name] = buffer.detach().clone()
        return plain

    def save(self, folder: str | os.PathLike) -> None:
        """Writes this rank's shards of the weights and of the optimizer state into `folder` (safetensors; no
        collective, nothing gathered: each rank writes only what it holds)."""
        self._reshard()
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        tensors = {f"param.{n}": local(p).detach() for n, p in self.model.named_parameters()}
        tensors |= {f"buffer.{n}": b.detach() for n, b in self.model.named_buffers()}
        state = self.optimizer.state_dict()
        for index, entries in state["state"].items():
            for key, value in entries.items():
                tensors[f"optim.{index}.{key}"] = local(value).detach()
        meta = {"format": SHARD_FORMAT, "world_size": str(world), "param_groups": json.dumps(state["param_groups"])}
        save_file(
            {k: v.contiguous().cpu() for k, v in tensors.items()},
            Path(folder) / SHARD_FILE.format(rank=rank),
            metadata=meta,
        )

    def load(self, folder: str | os.PathLike) -> None:
        """Puts this rank's saved shards back into the weights and the optimizer (see [`save`])."""
        self._reshard()
        file = Path(folder) / SHARD_FILE.format(rank=torch.distributed.get_rank())
        tensors = load_file(file)
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                local(param).copy_(tensors[f"param.{name}"])
            for name, buffer in self.model.named_buffers():
                buffer.copy_(tensors[f"buffer.{name}"])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                index, entry = key[len("optim.") :].split(".", 1)
                param = params[int(index)]
                if is_sharded(param) and entry != "step" and value.shape == local(param).shape:
                    value = _like(value, param)
                state.setdefault(int(index), {})[entry] = value
        groups = json.loads(_metadata(file)["param_groups"])
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})


def _like(value: torch.Tensor, param) -> torch.Tensor:
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    value = value.to(local(param).device)
    return DTensor.from_local(
        value, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def _metadata(file: Path) -> dict:
    with safe_open(file, "pt") as fh:
        return fh.metadata() or {}


def check_layout(folder: str | os.PathLike, world: Optional[int]) -> None:
    """Refuses, before anything is loaded, to resume a checkpoint written under another sharding: `world` is the
    number of ranks this run shards over (`None`: not sharded)."""
    saved = len(list(Path(folder).glob(SHARD_FILE.format(rank="*"))))
    if saved == (world or 0):
        return
    wrote = f"an FSDP2 run on {saved} processes" if saved else "a run that was not sharded"
    now = f"shards over {world} processes" if world else "is not sharded"
    raise ValueError(
        f"`resume_from_checkpoint` {folder} was written by {wrote}, and this run {now}; resume it under the launch "
        "that wrote it (the same accelerate config and process count), or start a fresh run (another output_dir)."
    )


def _units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as one unit each (see the module docstring), innermost first."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    units = [m for m in model.modules() if m is not model and type(m).__name__ in names]
    if units:
        return _innermost_first(units)
    units = []
    for child in model.children():
        group = child.children() if isinstance(child, (nn.ModuleList, nn.ModuleDict)) else [child]
        units += [unit for unit in group if any(True for _ in unit.parameters())]
    return units


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _innermost_first(units: list[nn.Module]) -> list[nn.Module]:
    # fully_shard must be called bottom-up: a unit inside another is sharded before it.
    depth = {id(u): sum(_contains(o, u) for o in units if o is not u) for u in units}
    return sorted(units, key=lambda u: -depth[id(u)])


__all__ = ["Fsdp2", "check_layout", "fsdp_requested", "gathered_mask", "mask_like"]
