"""`UnlearnMethod`: a named composition of saliency, forgetting loss, remaining loss and geometry; the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..parts import ForgetLoss, Geometry, RemainLoss, Saliency, get_geometry, get_saliency


@dataclass(frozen=True)
class UnlearnMethod:
    r"""One gradient unlearning method: θ ← θ − η·G⁻¹·M ⊙ (α_t·∇L_forget + ∇L_remain).

    Args:
        name (`str`): registry name.
        forget_loss ([`ForgetLoss`], *optional*): the forgetting part; `None` for FT and retrain.
        remain_loss ([`RemainLoss`], *optional*): the remaining part; `None` for plain gradient ascent.
        saliency (`str` or [`~parts.Saliency`], *optional*): `None` (no mask), `"fisher_ratio"` (SFR-on), `"topk"`
            (SalUn), another registered name ([`~parts.register_saliency`]) or a `Saliency` object.
        geometry (`str` or [`~parts.Geometry`], *optional*, defaults to `"euclidean"`): `"euclidean"` (one joint
            step), `"fast_slow"` (SFR-on: a forget step then K remain steps, one optimizer), `"ewc"` (a Fisher penalty
            at θ0 on the joint step), another registered name ([`~parts.register_geometry`]) or a `Geometry` object.
        mask_scope (`str`, *optional*, defaults to `"forget"`): the mask restricts the forget gradient only, or
            `"all"` of it (SalUn masks the whole update).
        reinit (`bool`, *optional*, defaults to `False`): start from a fresh model (retrain).
        families (`tuple[str]`, *optional*): the families it supports (derived from its parts if unset).
        defaults (`dict`, *optional*): config defaults, `{"*": {...}, "<family>": {...}}`.
    """

    name: str
    forget_loss: Optional[ForgetLoss] = None
    remain_loss: Optional[RemainLoss] = None
    saliency: Union[str, Saliency, None] = None
    geometry: Union[str, Geometry] = "euclidean"
    mask_scope: str = "forget"
    reinit: bool = False
    families: Optional[tuple[str, ...]] = None
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        # Names resolve to the registered part objects once, here (frozen dataclass: set through object).
        object.__setattr__(self, "saliency", get_saliency(self.saliency))
        object.__setattr__(self, "geometry", get_geometry(self.geometry))
        if self.mask_scope not in ("forget", "all"):
            raise ValueError(f"`mask_scope` is {self.mask_scope!r}; choose 'forget' or 'all'.")
        if self.forget_loss is None and self.remain_loss is None:
            raise ValueError(f"Method '{self.name}' needs a forget_loss, a remain_loss or both.")
        if self.geometry.name == "fast_slow" and (self.forget_loss is None or self.remain_loss is None):
            raise ValueError(f"Method '{self.name}': the fast-slow geometry needs both a forget and a remain loss.")

    @property
    def supported_families(self) -> Optional[tuple[str, ...]]:
        allowed = None if self.families is None else set(self.families)
        for part in (self.forget_loss, self.remain_loss):
            if part is not None and part.families is not None:
                allowed = set(part.families) if allowed is None else allowed & set(part.families)
        return None if allowed is None else tuple(sorted(allowed))

    def supports(self, family: Optional[str]) -> bool:
        families = self.supported_families
        return family is None or families is None or family in families

    def defaults_for(self, family: Optional[str]) -> dict[str, Any]:
        merged = dict(self.defaults.get("*", {}))
        if family is not None:
            merged.update(self.defaults.get(family, {}))
        return merged

    @property
    def remain_source(self) -> str:
        """`"replay"` when the remaining part trains on generated samples of the original, else `"data"`."""
        return getattr(self.remain_loss, "source", "data")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "saliency": None if self.saliency is None else self.saliency.name,
            "forget_loss": repr(self.forget_loss),
            "remain_loss": repr(self.remain_loss),
            "geometry": self.geometry.name,
            "mask_scope": self.mask_scope,
            "reinit": self.reinit,
        }


_REGISTRY: dict[str, UnlearnMethod] = {}


def register_method(method: UnlearnMethod, *, overwrite: bool = False) -> UnlearnMethod:
    """Adds a method to the registry, so that `UnlearnConfig(method=name)` and the CLI can use it."""
    if method.name in _REGISTRY and not overwrite:
        raise ValueError(f"A method named '{method.name}' is already registered; pass overwrite=True to replace it.")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str, family: Optional[str] = None) -> UnlearnMethod:
    """The registered method `name`; with `family`, an error if the method does not support it."""
    if name not in _REGISTRY:
        raise ValueError(
            f"`method` is '{name}', which is not registered; valid names: {', '.join(sorted(_REGISTRY))}."
        )
    method = _REGISTRY[name]
    if not method.supports(family):
        raise ValueError(
            f"Method '{name}' does not support the {family} family; it supports {method.supported_families}. "
            f"Methods for {family}: {', '.join(list_methods(family))}."
        )
    return method


def list_methods(family: Optional[str] = None) -> list[str]:
    """Registered method names, optionally only those that support `family`."""
    return sorted(name for name, m in _REGISTRY.items() if m.supports(family))
