"""Fills an [`UnlearnConfig`]'s unset fields from the method's, the family's and library-wide defaults.

The engine side of the configuration: `config.py` is plain data and imports no registry; this module reads the method
and family registries and returns a new config, which is what the run uses and saves.
"""

from __future__ import annotations

from typing import Any, Optional

from .config import UnlearnConfig
from .families import get_family_class
from .methods import get_method

# Values used when neither the user, the method nor the family sets a field that defaults to `None`.
GLOBAL_DEFAULTS: dict[str, Any] = {
    "stop_rule": "none",
    "learning_rate": 1e-3,
    "max_steps": 100,
    "max_grad_norm": 7.0,
    "remain_max_grad_norm": 0.0,
    "forget_alpha": 1.0,
    "forget_alpha_schedule": "cosine",
    "temperature": 0.5,
    "remain_steps_per_forget": 1,
    "per_device_train_batch_size": 64,
    "divergence_guard": "copy",
    "train_modules": "all",
}
_BUDGET_FIELDS = ("max_steps", "num_forget_epochs")
DEFAULT_METHOD = "sfr_on"  # when no family is known; each family names its own recommended variant


def resolve_config(
    config: UnlearnConfig, family: Optional[str] = None, model_defaults: Optional[dict] = None
) -> UnlearnConfig:
    """Returns a copy of `config` whose `None` fields are filled from `model_defaults` (what one model of the family
    needs, e.g. a DiT's clipping: [`ModelFamily.model_defaults`]), then the method, the family and library defaults.

    Raises `ValueError` naming `method` when the method is not registered or does not support the family.
    """
    family = family or config.family
    name = config.method or (get_family_class(family).default_method if family else DEFAULT_METHOD)
    method = get_method(name, family)
    layers = [model_defaults or {}, method.defaults_for(family)]
    if family is not None:
        layers.append(get_family_class(family).default_config)
    layers.append(GLOBAL_DEFAULTS)
    values = config.to_dict()
    default_budget = values["max_steps"] is None and values["num_forget_epochs"] is None
    if values["stop_rule"] is None and not default_budget:
        values["stop_rule"] = "none"  # a budget the user gives runs as given: no rule stops or extends it
    if default_budget:
        # A budget the user gives is used as given; the default one is a number of cycles raised to a number of
        # passes over the forget set, so a large forget set is not cut short by a budget tuned on a small one.
        for key in _BUDGET_FIELDS:
            values[key] = next((d[key] for d in layers if d.get(key) is not None), None)
        if method.forget_loss is None:  # retraining, fine-tuning: no forget set to pass over
            values["num_forget_epochs"] = None
    for key, value in values.items():
        if value is None and key not in _BUDGET_FIELDS:
            for layer in layers:
                if layer.get(key) is not None:
                    values[key] = layer[key]
                    break
    values["family"] = family
    values["method"] = name
    return UnlearnConfig(**values)
