"""Runtime backends. Heavy dependencies (onnxruntime, TensorRT) are imported when a backend is
created, never when linexport.runtime is imported."""

from __future__ import annotations

from linexport.errors import LinexportError
from linexport.runtime.backends.base import Backend

BACKENDS = ("ort", "trt")


def create_backend(name: str, manifest, num_slots: int, device: str = "cpu") -> Backend:
    if name == "ort":
        from linexport.runtime.backends.ort import OrtBackend

        return OrtBackend(manifest.graph_path("prefill"), manifest.graph_path("decode"), num_slots, device)
    if name == "trt":
        from linexport.runtime.backends.trt import TrtBackend

        return TrtBackend(manifest, num_slots, device)
    raise LinexportError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "create_backend"]
