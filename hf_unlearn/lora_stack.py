"""Adapters of several deletion requests, stacked: the earlier adapter is merged into the base for training, and the
saved adapter is the earlier one and the new one side by side (one peft adapter of rank r₁ + r₂).

Why: at the default settings on the demo's ResNet, a second request that trains the first adapter on keeps less than a
fresh stacked adapter (TA 99.16 against 99.44, both forgetting fully; in a short large-step setting the two trade
forgetting against remain accuracy; docs/lora.md, `benchmarks/sequential_requests.py`). Merging gives the next request
the model the folder describes and a fresh adapter to train. A peft adapter folder does not hold its base, so the two
adapters are saved as one: for each layer, ΔW = s₁B₁A₁ + s₂B₂A₂ = [s₁B₁, s₂B₂]·[A₁; A₂], which is again a LoRA
update, of rank r₁ + r₂ with scaling 1. Plain `PeftModel.from_pretrained(base, folder)` then loads both erasures on
the original base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .utils import atomic_write_json

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class EarlierAdapter:
    """The adapter of an input folder, as saved: its `adapter_config.json` values and its tensors."""

    config: dict
    state: dict[str, torch.Tensor]


def read_adapter(path) -> EarlierAdapter:
    from safetensors.torch import load_file  # noqa: PLC0415

    config = json.loads(Path(path, ADAPTER_CONFIG_NAME).read_text())
    unsupported = [k for k in ("use_dora", "lora_bias") if config.get(k)]
    if unsupported or config.get("peft_type", "LORA") != "LORA":
        raise ValueError(
            f"`{path}` holds a {config.get('peft_type')} adapter with {unsupported or 'another type'}: only plain "
            "LoRA adapters stack across deletion requests. Merge it into the base and pass the merged model instead."
        )
    return EarlierAdapter(config, load_file(str(Path(path, ADAPTER_WEIGHTS_NAME))))


def merge_adapter_folder(model: nn.Module, path) -> tuple[nn.Module, EarlierAdapter]:
    """`model` with the adapter of `path` merged into its weights (and its trained head in place), and that adapter."""
    from peft import PeftModel  # noqa: PLC0415

    earlier = read_adapter(path)
    merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return merged, earlier


def _scaling(config: dict, module: str, rank: int) -> float:
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module.endswith(pattern):
            alpha = value
    return alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank


def _pad(tensor: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    missing = rank - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


def _factors(adapter: EarlierAdapter, module: str):
    a, b = adapter.state.get(module + _A), adapter.state.get(module + _B)
    if a is None or b is None:
        return None
    return a.float(), b.float() * _scaling(adapter.config, module, a.shape[0])


def stack(earlier: EarlierAdapter, new: EarlierAdapter) -> EarlierAdapter:
    """One adapter whose update is the sum of `earlier`'s and `new`'s; other tensors (a trained head): `new`'s."""
    modules = sorted({k[: -len(_A)] for k in (*earlier.state, *new.state) if k.endswith(_A)})
    r1 = max((earlier.state[m + _A].shape[0] for m in modules if m + _A in earlier.state), default=0)
    r2 = max((new.state[m + _A].shape[0] for m in modules if m + _A in new.state), default=0)
    # A trained head (`modules_to_save`): the new one, which was trained from the earlier one.
    state = {k: v for a in (earlier, new) for k, v in a.state.items() if not k.endswith((_A, _B))}
    dtype = next(iter(new.state.values())).dtype
    for module in modules:
        parts = [_factors(earlier, module), _factors(new, module)]
        like = next(p for p in parts if p is not None)
        a_parts, b_parts = [], []
        for part, rank in zip(parts, (r1, r2)):
            a, b = part if part is not None else (like[0][:0], like[1][:, :0])  # a layer one adapter does not have
            a_parts.append(_pad(a, rank, 0))
            b_parts.append(_pad(b, rank, 1))
        state[module + _A] = torch.cat(a_parts, 0).to(dtype).contiguous()
        state[module + _B] = torch.cat(b_parts, 1).to(dtype).contiguous()
    config = dict(new.config)
    targets = [c.get("target_modules") for c in (earlier.config, new.config)]
    if all(isinstance(t, (list, tuple, set)) for t in targets):
        config["target_modules"] = sorted({*targets[0], *targets[1]})
    elif targets[0] != targets[1]:
        raise ValueError(
            f"The earlier adapter targets {targets[0]!r} and this one {targets[1]!r}; give `lora_target_modules` as "
            "a list of layer names (or leave it unset) so that the two stack."
        )
    config |= {"r": r1 + r2, "lora_alpha": r1 + r2, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}}
    return EarlierAdapter(config, state)


def stack_saved_adapter(directory, earlier: EarlierAdapter) -> None:
    """Rewrites the adapter just saved in `directory` (the new request's) as the stack of `earlier` and it."""
    from safetensors.torch import save_file  # noqa: PLC0415

    stacked = stack(earlier, read_adapter(directory))
    save_file(stacked.state, str(Path(directory, ADAPTER_WEIGHTS_NAME)), metadata={"format": "pt"})
    atomic_write_json(Path(directory, ADAPTER_CONFIG_NAME), stacked.config)
