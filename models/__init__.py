"""PyTorch reference models: the source of every export.

``ARCHS`` maps an architecture name to its model class; checkpoints name their arch.
"""

from __future__ import annotations

import importlib

from linexport.models.base import CausalLM, StateSpec

_ARCH_CLASSES = {
    "linear": ("linexport.models.linear", "LinearLM"),
    "flash": ("linexport.models.flash", "FlashLM"),
    "softmax": ("linexport.models.softmax", "SoftmaxLM"),
    "reformer": ("linexport.models.reformer", "ReformerLM"),
}
ARCH_NAMES = tuple(_ARCH_CLASSES)


def model_class(arch: str) -> type[CausalLM]:
    from linexport.errors import LinexportError

    if arch not in _ARCH_CLASSES:
        raise LinexportError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCH_NAMES)}")
    module, name = _ARCH_CLASSES[arch]
    return getattr(importlib.import_module(module), name)


def build_model(arch: str, config: dict) -> CausalLM:
    """Builds an uninitialised-weights model of ``arch`` from a plain config dict."""
    from linexport.models.config import config_from_dict

    cls = model_class(arch)
    return cls(config_from_dict(cls.config_class, config))


__all__ = ["ARCH_NAMES", "CausalLM", "StateSpec", "build_model", "model_class"]
