"""Runtime backends. Heavy dependencies (onnxruntime, TensorRT) are imported when a backend is
created, never when linexport.runtime is imported."""

from __future__ import annotations

from linexport.errors import LinexportError
from linexport.contract.manifest import PAST_SEQ  # pure JSON: no torch, no onnx
from linexport.runtime.backends.base import Backend

BACKENDS = ("ort", "trt")


def create_backend(name: str, manifest, num_slots: int, device: str = "cpu", threads: int = 0) -> Backend:
    """``threads``: ONNX Runtime's intra-op threads (0: its default); TensorRT takes none."""
    # A KV cache (the softmax baseline) grows per token: it needs the pools of OrtKvCacheBackend
    # instead of the fixed-size, zero-copy state rows of OrtBackend.
    kv_cache = any(PAST_SEQ in s.shape for s in manifest.states)
    if name == "ort" and kv_cache:
        from linexport.runtime.backends.ort_kv import OrtKvCacheBackend

        return OrtKvCacheBackend(manifest.graph_path("prefill"), manifest.graph_path("decode"), num_slots, device,
                                 threads)
    if name == "ort":
        from linexport.runtime.backends.ort import OrtBackend

        return OrtBackend(manifest.graph_path("prefill"), manifest.graph_path("decode"), num_slots, device, threads)
    if name == "trt" and kv_cache:
        raise LinexportError(f"the TensorRT backend runs fixed-size states only, but this {manifest.arch} "
                             "export carries a KV cache: use backend 'ort' (--backend ort)")
    if name == "trt":
        from linexport.runtime.backends.trt import TrtBackend

        return TrtBackend(manifest, num_slots, device)
    raise LinexportError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "create_backend"]
