"""Pieces of the loop that are not the loop itself: optimizer, schedules, endless loaders, accelerator set-up."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.data_loader import SeedableRandomSampler
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DataLoaderConfiguration, DistributedType
from transformers import get_scheduler


def build_optimizer(params: list[torch.nn.Parameter], config) -> torch.optim.Optimizer:
    """One optimizer for forget and remain steps, so that momentum / Adam state is shared as SFR-on prescribes."""
    if config.optim == "sgd":
        return torch.optim.SGD(
            params, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optim == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def lr_schedule(kind: str, total: int, warmup: int = 0) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at each cycle: transformers' schedule (`get_scheduler`, the curves of
    `TrainingArguments.lr_scheduler_type`) over `total` cycles, the first `warmup` of them rising linearly from 0.

    The loop sets the rate once per cycle (every step of a cycle shares it), so the schedule is read from a
    `LambdaLR` built on a one-weight probe optimizer rather than stepped with the run's optimizer, whose steps per
    cycle vary with the geometry and which resumes from a checkpoint at any cycle.
    """
    if kind == "constant" and warmup:
        kind = "constant_with_warmup"  # transformers' "constant" has no warm-up
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return get_scheduler(kind, probe, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]


def alpha_at(step: int, total: int, alpha: float, schedule: str) -> float:
    """α_t: `alpha` decayed to 0 by cosine over the run, or constant."""
    if schedule == "constant":
        return alpha
    return alpha * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


def seed_sampler(loader, seed: int):
    """Gives the shuffling sampler of a prepared loader its own seed and returns the loader.

    accelerate's seedable sampler (`use_seedable_sampler=True`, which makes every process draw the same order) reseeds
    itself each epoch with `epoch + torch.initial_seed()`, ignoring the loader's generator: without this the forget
    and remain loaders would shuffle identically and their `seed`s would be dead.
    """
    sampler = loader  # DataLoaderShard → [BatchSamplerShard →] BatchSampler → the sampler (None: not shuffled)
    while sampler is not None and not isinstance(sampler, SeedableRandomSampler):
        sampler = getattr(sampler, "batch_sampler", None) or getattr(sampler, "sampler", None)
    if sampler is not None:
        sampler.initial_seed = seed
    return loader


class Endless:
    """Iterates a loader forever, one epoch after another, and counts the batches it handed out (for resume)."""

    def __init__(self, loader, start: int = 0):
        self.loader = loader
        self.consumed = 0
        self._epoch = 0
        self._iter = None
        self._position = -1
        for _ in range(start):
            next(self)

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._iter is None:
                if hasattr(self.loader, "set_epoch"):
                    self.loader.set_epoch(self._epoch)
                self._iter = iter(self.loader)
                self._position = -1
            try:
                batch = next(self._iter)
                self.consumed += 1
                self._position += 1
                return batch
            except StopIteration:
                self._iter = None
                self._epoch += 1

    def valid_rows(self, accelerator, batch_rows: int) -> Optional[torch.Tensor]:
        """Which rows of the last batch are real on this process (`None`: all of them).

        With several processes, accelerate completes the last global batch of an epoch with rows repeated from the
        start of the epoch; in the concatenation over processes the real rows come first (what `gather_for_metrics`
        relies on). One process never pads.
        """
        processes = accelerator.num_processes
        total_rows = getattr(self.loader, "total_dataset_length", None)
        if processes == 1 or total_rows is None or self._position != len(self.loader) - 1:
            return None
        per_device = self.loader.total_batch_size // processes
        remainder = total_rows - (len(self.loader) - 1) * self.loader.total_batch_size
        rows = torch.arange(batch_rows, device=accelerator.device) + accelerator.process_index * per_device
        return rows < remainder


def make_accelerator(config) -> Accelerator:
    """An `Accelerator` for this config; refuses half precision on a CPU instead of silently ignoring it."""
    if config.mixed_precision == "fp16" and not (torch.cuda.is_available() or _has_xpu_or_mps()):
        raise ValueError(
            "`mixed_precision` is 'fp16', but no GPU is available and accelerate would silently run in fp32 on a CPU; "
            "use mixed_precision='no' (or 'bf16') on CPU."
        )
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, config.mixed_precision):
        # One process serves several runs (tests, notebooks, benchmarks): a new precision needs a fresh state.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    cpu = partial_state().device.type == "cpu"
    return Accelerator(
        cpu=cpu,
        mixed_precision=config.mixed_precision,
        log_with=config.log_with,
        project_dir=config.output_dir if config.log_with else None,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
    )


# What `accelerate launch` sets in every process for an FSDP or DeepSpeed config (`distributed_type: FSDP`, ...).
_SHARDING_FLAGS = {DistributedType.FSDP: "ACCELERATE_USE_FSDP", DistributedType.DEEPSPEED: "ACCELERATE_USE_DEEPSPEED"}


def requested_sharding() -> Optional[DistributedType]:
    """The sharding the launch asks for, read from the environment `accelerate launch` gives each process; `None`."""
    for kind, flag in _SHARDING_FLAGS.items():
        if os.environ.get(flag, "false").lower() in ("1", "true", "yes"):
            return kind
    return None


def check_sharding(distributed_type, method, config) -> None:
    """Refuses, before any work, what cannot run sharded: a saliency mask under DeepSpeed, whose ZeRO stages keep the
    gradients in partitioned buffers rather than `param.grad`, so the mask would silently not apply; and, under an
    FSDP launch of several processes, the options the engine's FSDP2 sharding (hf_unlearn/fsdp.py) was not built for.

    FSDP itself runs every method, masked ones included: the engine shards the model with FSDP2 and the mask applies
    to each rank's shard. `distributed_type` is the accelerator's, or `None` before there is one; the launch's request
    (`ACCELERATE_USE_DEEPSPEED` / `ACCELERATE_USE_FSDP`) counts too, so the same launch is refused on every machine
    (accelerate fails on a missing DeepSpeed install before any check of ours, and turns FSDP on CPUs into DDP).
    """
    if requested_sharding() == DistributedType.FSDP and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _check_fsdp2(method, config)
    if method.saliency is None:
        return
    source = "the accelerator runs it"
    if distributed_type != DistributedType.DEEPSPEED:
        if os.environ.get(_SHARDING_FLAGS[DistributedType.DEEPSPEED], "false").lower() not in ("1", "true", "yes"):
            return
        source = "the launch set ACCELERATE_USE_DEEPSPEED, e.g. from an accelerate config with `distributed_type`"
    raise ValueError(
        f"Method '{method.name}' uses a saliency mask, which cannot apply under DeepSpeed ({source}; ZeRO keeps "
        "gradients out of `param.grad`, so the mask would silently not apply). Shard with FSDP instead (an accelerate "
        "config with `distributed_type: FSDP`, e.g. configs/accelerate/fsdp2_cpu.yaml), or launch with DDP "
        "(configs/accelerate/multi_gpu_ddp.yaml) and add `lora=True` if memory is short, or pick a method without a "
        "mask (finetune, gradient_ascent, random_label, bad_teacher, scrub, esd)."
    )


def _check_fsdp2(method, config) -> None:
    # Not built, or not tested, on FSDP2 shards: refused rather than run unchecked.
    unsupported = {
        "lora": "LoRA adapters are small: launch with DDP (configs/accelerate/multi_gpu_ddp.yaml) instead",
        "gradient_checkpointing": "set gradient_checkpointing=False",
    }
    for name, fix in unsupported.items():
        if getattr(config, name):
            raise ValueError(f"`{name}=True` is not supported under an FSDP launch (FSDP2 shards); {fix}.")
    if method.geometry.name == "ewc":
        raise ValueError(
            f"Method '{method.name}' keeps an EWC anchor, which is not supported under an FSDP launch (FSDP2 shards); "
            "launch it with DDP (configs/accelerate/multi_gpu_ddp.yaml)."
        )


def partial_state() -> PartialState:
    """The process's `PartialState`; under torchrun / `accelerate launch` on a machine without GPUs, the gloo group.

    accelerate only forms a CPU process group (`MULTI_CPU`) when asked for `cpu=True`; a bare `PartialState()` under
    torchrun on CPUs would leave every rank alone, each training on its own copy.
    """
    if PartialState._shared_state:
        return PartialState()
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    no_device = not (torch.cuda.is_available() or _has_xpu_or_mps())
    env_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=env_cpu or (launched and no_device))


def _has_xpu_or_mps() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())
