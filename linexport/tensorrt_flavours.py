"""The two TensorRT flavours linexport builds for, imported lazily with a clear message.

* ``tensorrt``: TensorRT >= 10 (datacenter and Jetson GPUs); runs our plugin library.
* ``rtx``: TensorRT for RTX (``tensorrt_rtx``; RTX desktops and laptops). Its networks are
  always strongly typed, it takes no custom plugins, and its builder works without a GPU.

Nothing here imports TensorRT at import time.
"""

from __future__ import annotations

from linexport.errors import LinexportError

TARGETS = ("tensorrt", "rtx")
_MODULES = {
    "tensorrt": ("tensorrt", "pip install tensorrt-cu13  (or pip install linexport[trt])"),
    "rtx": ("tensorrt_rtx", "pip install tensorrt-rtx-cu13  (or pip install linexport[rtx])"),
}


def import_tensorrt(target: str = "tensorrt"):
    """The module of TensorRT flavour ``target``, or a LinexportError naming the package."""
    if target not in _MODULES:
        raise LinexportError(f"unknown TensorRT target {target!r}: expected one of {', '.join(TARGETS)}")
    module, fix = _MODULES[target]
    try:
        return __import__(module)
    except ImportError as e:
        # A wheel whose native libraries fail to load raises ImportError too: show its reason.
        why = "" if e.name == module else f" ({e})"
        raise LinexportError(f"TensorRT for target {target!r} ({module}) is not installed{why}: {fix}") from None


def is_installed(target: str) -> bool:
    try:
        import_tensorrt(target)
    except LinexportError:
        return False
    return True
