"""Type checks of `UnlearnConfig` at construction: a field must hold a value of its declared type.

`UnlearnConfig(max_steps=2.5, seed="abc", output_dir=123)` used to construct and fail much later, naming no field.
`check_field_types` reads each field's annotation (`int`, `float`, `str`, `bool`, `list[str]`, optionally `None`) and
raises [`ConfigTypeError`] (a `TypeError` and a `ValueError`) naming the field. An `int` is a float's valid value;
a whole-number float is not an int's (2.0 steps would hide a mistake as easily as 2.5).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, get_args, get_origin, get_type_hints

# Larger budgets are mistakes (1e308 passes over the forget set overflowed deep in `resolve_budget`).
MAX_CYCLES = 10**9
MAX_FORGET_EPOCHS = 10**6


class ConfigTypeError(TypeError, ValueError):
    """A config field holds a value of the wrong type; a `ValueError` too, so `except ValueError` still catches it."""


def _accepts(kind, value: Any) -> bool:
    if kind is Any:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    origin = get_origin(kind)
    if origin is list:
        (item,) = get_args(kind) or (Any,)
        return isinstance(value, (list, tuple)) and all(_accepts(item, v) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: left to the field's own checks


def _describe(kind) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if get_origin(kind) is list:
        return f"a list of {_describe(get_args(kind)[0]).replace('a ', '', 1)}s"
    return names.get(kind, str(kind))


def check_field_types(config) -> None:
    """Raises [`ConfigTypeError`] naming the first field whose value does not have its declared type."""
    hints = get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value, kind = getattr(config, f.name), hints[f.name]
        optional = get_origin(kind) is typing.Union and type(None) in get_args(kind)
        if optional:
            if value is None:
                continue
            kind = next(a for a in get_args(kind) if a is not type(None))
        if not _accepts(kind, value):
            raise ConfigTypeError(
                f"`{f.name}` is {value!r} ({type(value).__name__}); give {_describe(kind)}"
                f"{' or leave it unset' if optional else ''}."
            )
    if config.max_steps is not None and config.max_steps > MAX_CYCLES:
        raise ValueError(f"`max_steps` is {config.max_steps}; give at most {MAX_CYCLES} cycles.")
    if config.num_forget_epochs is not None and config.num_forget_epochs > MAX_FORGET_EPOCHS:
        raise ValueError(
            f"`num_forget_epochs` is {config.num_forget_epochs}; give at most {MAX_FORGET_EPOCHS} passes over the "
            "forget set."
        )


__all__ = ["ConfigTypeError", "check_field_types"]
