"""Config dataclasses <-> plain dicts, with errors a user can act on."""

from __future__ import annotations

import dataclasses
import typing

from linexport.errors import LinexportError


def config_from_dict(cls, data: dict):
    """Rebuilds config dataclass ``cls`` from ``data``; unknown keys, missing keys and wrong
    types are errors (a checkpoint from another version must not load silently wrong)."""
    if not isinstance(data, dict):
        raise LinexportError(f"expected the model config to be a dict, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LinexportError(f"config for {cls.__name__} has unknown keys {unknown}; expected keys "
                             f"from {sorted(fields)}. Was it written by another linexport version?")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(cls.__name__, name, hints[name], value)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise LinexportError(f"config for {cls.__name__} is missing required keys {missing}")
    return cls(**kwargs)


def _coerce(owner: str, name: str, hint, value):
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise LinexportError(f"config {owner}.{name}: expected one of {list(typing.get_args(hint))}, "
                                 f"got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise LinexportError(f"config {owner}.{name}: expected a bool, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LinexportError(f"config {owner}.{name}: expected an int, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LinexportError(f"config {owner}.{name}: expected a number, got {value!r}")
        return float(value)
    return value


def require(cond: bool, message: str):
    """Config validation: raise a LinexportError with ``message`` unless ``cond``."""
    if not cond:
        raise LinexportError(message)
