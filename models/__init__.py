"""PyTorch reference models: the source of every export.

models/registry.py lists the architectures; checkpoints name their arch. Importing this package
is cheap (no torch): the model classes load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from linexport.models.registry import ARCHS

if TYPE_CHECKING:
    from linexport.models.base import CausalLM

ARCH_NAMES = tuple(ARCHS)


def model_class(arch: str) -> type[CausalLM]:
    from linexport.errors import LinexportError

    if arch not in ARCHS:
        raise LinexportError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCH_NAMES)}")
    entry = ARCHS[arch]
    return getattr(importlib.import_module(entry.module), entry.class_name)


def build_model(arch: str, config: dict) -> CausalLM:
    """Builds an uninitialised-weights model of ``arch`` from a plain config dict."""
    from linexport.models.config import config_from_dict

    cls = model_class(arch)
    return cls(config_from_dict(cls.config_class, config))


def __getattr__(name):
    # CausalLM and StateSpec import torch: only when asked for.
    if name in ("CausalLM", "StateSpec"):
        from linexport.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCH_NAMES", "CausalLM", "StateSpec", "build_model", "model_class"]
