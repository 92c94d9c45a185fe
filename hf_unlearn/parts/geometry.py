"""The geometry part of the unified view: how a cycle turns the forget and remain gradients into optimizer steps.

A `Geometry` plans the steps of one cycle (`steps`), may build per-run state before the first step (`setup`, e.g.
EWC's Fisher at θ0) and may add a penalty to the remain loss (`penalty`). `Euclidean` is one joint step on
α·∇L_forget + ∇L_remain; `FastSlow` is SFR-on's forget (slow) step followed by K remain (fast) steps through one
optimizer; `EWC` is the joint step with a Fisher-weighted pull toward θ0. A new geometry is a subclass and
`register_geometry`: the loop needs no edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .saliency import SaliencyInputs


@dataclass(frozen=True)
class Step:
    """One optimizer step of a cycle: which losses it takes a gradient of and its clipping norm (0/None: none)."""

    forget: bool
    remain: bool
    clip: Optional[float]


class Geometry:
    """The plan of a cycle. Subclasses override `steps`, and `setup`/`penalty` when they keep state."""

    name = "geometry"

    def check(self, family, config) -> None:
        """Raises `ValueError` naming the argument when this geometry cannot run on `family` with `config`; called
        with the run's other checks, before any weight changes."""

    def setup(self, inputs: SaliencyInputs) -> Any:
        """Per-run state computed at θ0 (model in eval mode), before the first step; saved in checkpoints."""
        return None

    def steps(self, config, forget_on: bool, has_remain: bool) -> list[Step]:
        raise NotImplementedError

    def penalty(self, state: Any, named_params, config) -> Optional[torch.Tensor]:
        """A term added to the remain loss of every remain step (`None`: nothing)."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}()"


class Euclidean(Geometry):
    """One joint step per cycle on α·∇L_forget + ∇L_remain, clipped by `max_grad_norm`."""

    name = "euclidean"

    def steps(self, config, forget_on, has_remain):
        return [Step(forget=forget_on, remain=has_remain, clip=config.max_grad_norm)]


class FastSlow(Geometry):
    """SFR-on: a forget (slow) step clipped by `max_grad_norm`, then `remain_steps_per_forget` plain remain (fast)
    steps clipped by `remain_max_grad_norm` (the authors clip the forget step only for classifiers)."""

    name = "fast_slow"

    def steps(self, config, forget_on, has_remain):
        plan = [Step(forget=True, remain=False, clip=config.max_grad_norm)] if forget_on else []
        fast = Step(forget=False, remain=True, clip=config.remain_max_grad_norm)
        return plan + [fast] * config.remain_steps_per_forget


class EWC(Euclidean):
    """The joint step plus `ewc_lambda` · Σ_k F_k (θ_k − θ0_k)², F the remain-set Fisher at θ0 (the mask's
    estimator, eval mode, every remain row once) scaled so its largest entry is 1: `ewc_lambda` means the same for
    any model."""

    name = "ewc"

    def setup(self, inputs: SaliencyInputs):
        family, module = inputs.family, inputs.module
        rows = lambda batch: family.per_sample_loss(module, batch)  # noqa: E731
        fisher = inputs.statistic(inputs.split.remain, rows, None)
        peak = max(float(f.max()) for f in fisher.values()) or 1.0
        return [(fisher[n] / peak, p.detach().clone()) for n, p in inputs.named_params]

    def penalty(self, state, named_params, config):
        return config.ewc_lambda * sum((f * (p - p0) ** 2).sum() for (_, p), (f, p0) in zip(named_params, state))


_GEOMETRY: dict[str, Geometry] = {}


def register_geometry(geometry: Geometry, *, overwrite: bool = False) -> Geometry:
    """Makes `geometry` usable by name in `UnlearnMethod(geometry="<name>")`."""
    if geometry.name in _GEOMETRY and not overwrite:
        raise ValueError(
            f"A geometry named '{geometry.name}' is already registered; pass overwrite=True to replace it."
        )
    _GEOMETRY[geometry.name] = geometry
    return geometry


def get_geometry(name_or_geometry) -> Geometry:
    """The registered geometry `name` (a `Geometry` passes through)."""
    if isinstance(name_or_geometry, Geometry):
        return name_or_geometry
    if name_or_geometry not in _GEOMETRY:
        raise ValueError(f"`geometry` is {name_or_geometry!r}; choose one of {sorted(_GEOMETRY)}.")
    return _GEOMETRY[name_or_geometry]


for _geometry in (Euclidean(), FastSlow(), EWC()):
    register_geometry(_geometry)
