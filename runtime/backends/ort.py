"""ONNX Runtime backend: CPU or CUDA execution provider, IOBinding, ping-pong state pools.

Per decode step nothing is allocated and no state is copied: the pool of past states is bound
as the graph's ``past.*`` inputs and a second pool as its ``present.*`` outputs, and the two
swap roles after the step. On CUDA both pools live on the device; state leaves it only when
asked for (snapshot) and enters it when a sequence joins (prefill) or is restored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.backends.base import Backend, checked_state

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise LinexportError("the ONNX Runtime backend needs onnxruntime: pip install onnxruntime "
                             "(or onnxruntime-gpu for CUDA)") from None
    return ort


def open_sessions(prefill_path: Path, decode_path: Path, num_slots: int, device: str, threads: int):
    """The (prefill, decode) ONNX Runtime sessions of an export, after checking the options."""
    ort = _import_ort()
    if num_slots < 1:
        raise LinexportError(f"expected at least one state slot, got {num_slots}")
    if device not in ("cpu", "cuda"):
        raise LinexportError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise LinexportError(
            "device 'cuda' needs ONNX Runtime's CUDAExecutionProvider, but this onnxruntime "
            f"offers {available}: pip uninstall onnxruntime && pip install onnxruntime-gpu")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return (ort.InferenceSession(str(prefill_path), opts, providers=providers),
                ort.InferenceSession(str(decode_path), opts, providers=providers))
    except Exception as e:  # onnxruntime raises its own exception types per failure kind
        raise LinexportError(f"ONNX Runtime could not load the graphs: {str(e).splitlines()[0]}") from None


class OrtBackend(Backend):
    def __init__(self, prefill_path: Path, decode_path: Path, num_slots: int, device: str = "cpu",
                 threads: int = 0):
        self._prefill, self._decode = open_sessions(prefill_path, decode_path, num_slots, device, threads)
        self.device = device

        outputs = {o.name: o for o in self._decode.get_outputs()}
        self.state_names = [n[len("present."):] for n in outputs if n.startswith("present.")]
        self.num_slots = num_slots
        self._logits_dtype = _NP_TYPES[outputs["logits"].type]
        self.vocab_size = int(outputs["logits"].shape[-1])
        self._state_meta = {}
        for name in self.state_names:
            info = outputs[f"present.{name}"]
            shape = tuple(info.shape[1:])
            if not all(isinstance(d, int) for d in shape):
                raise LinexportError(f"state present.{name} has non-static dims {info.shape}: expected "
                                     "only the batch dim to be dynamic. A KV-cache export runs on "
                                     "OrtKvCacheBackend (linexport.runtime.Model picks it from the manifest).")
            self._state_meta[name] = (shape, _NP_TYPES[info.type])

        self._io = _CudaBuffers() if device == "cuda" else _HostBuffers()
        # Two pools per state: `_past` is read by the next step, `_next` is written by it.
        self._past = {n: self._io.zeros((num_slots, *s), t) for n, (s, t) in self._state_meta.items()}
        self._next = {n: self._io.zeros((num_slots, *s), t) for n, (s, t) in self._state_meta.items()}
        self._logits = self._io.zeros((num_slots, self.vocab_size), self._logits_dtype)
        self._ids = np.zeros((num_slots, 1), np.int64)
        self._pos = np.zeros((num_slots,), np.int64)
        self._binding = self._decode.io_binding()

    # -- graphs ---------------------------------------------------------------------------
    def prefill(self, input_ids, lengths, slots):
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        outputs = self._prefill.run(None, {"input_ids": input_ids, "lengths": lengths})
        names = [o.name for o in self._prefill.get_outputs()]
        result = dict(zip(names, outputs))
        for row, slot in enumerate(slots):
            for name in self.state_names:
                self._io.write_row(self._past[name], slot, result[f"present.{name}"][row])
        return result["logits"].astype(np.float32, copy=False)

    def decode(self, input_ids, positions):
        n = len(input_ids)
        if not 1 <= n <= self.num_slots:
            raise LinexportError(f"expected 1..{self.num_slots} rows to decode, got {n}")
        self._ids[:n, 0] = input_ids
        self._pos[:n] = positions
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        b.bind_cpu_input("input_ids", self._ids[:n])
        b.bind_cpu_input("position", self._pos[:n])
        for name in self.state_names:
            shape, dtype = self._state_meta[name]
            self._io.bind(b, "input", f"past.{name}", self._past[name], n, shape, dtype)
            self._io.bind(b, "output", f"present.{name}", self._next[name], n, shape, dtype)
        self._io.bind(b, "output", "logits", self._logits, n, (self.vocab_size,), self._logits_dtype)
        self._decode.run_with_iobinding(b)
        # Rows n.. of the new pool were not written: they belong to free slots (see Backend).
        self._past, self._next = self._next, self._past
        return self._io.to_host(self._logits, n).astype(np.float32, copy=False)

    # -- state ----------------------------------------------------------------------------
    def get_state(self, slot):
        return {n: self._io.read_row(self._past[n], slot) for n in self.state_names}

    def set_state(self, slot, state):
        for name in self.state_names:
            shape, dtype = self._state_meta[name]
            self._io.write_row(self._past[name], slot, checked_state(state, name, shape).astype(dtype, copy=False))

    def copy_slot(self, src, dst):
        for name in self.state_names:
            self._io.write_row(self._past[name], dst, self._io.read_row(self._past[name], src))

    def permute_slots(self, order: Sequence[int]):
        order = list(order)
        for name in self.state_names:
            self._io.gather_rows(self._past[name], self._next[name], order)
            self._past[name], self._next[name] = self._next[name], self._past[name]


class _HostBuffers:
    """State pools as numpy arrays, bound to ONNX Runtime by pointer (no copies)."""

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def bind(self, binding, kind, name, pool, n, shape, dtype):
        view = pool[:n]
        ptr = view.__array_interface__["data"][0]
        getattr(binding, f"bind_{kind}")(name, "cpu", 0, dtype, [n, *shape], ptr)

    def to_host(self, pool, n):
        return pool[:n]

    def read_row(self, pool, slot):
        return pool[slot].copy()

    def write_row(self, pool, slot, value):
        pool[slot] = value

    def gather_rows(self, src, dst, order):
        dst[: len(order)] = src[order]
        if len(order) < len(src):
            dst[len(order):] = src[len(order):]


class _CudaBuffers:
    """State pools in device memory (cudaMalloc), bound to ONNX Runtime by pointer. Not
    exercised on our CPU-only CI machines."""

    def __init__(self):
        from linexport.runtime.backends.cuda import CudaRuntime

        self._cuda = CudaRuntime()

    def zeros(self, shape, dtype):
        from linexport.runtime.backends.cuda import DeviceArray

        return DeviceArray(self._cuda, shape, dtype)

    def bind(self, binding, kind, name, pool, n, shape, dtype):
        getattr(binding, f"bind_{kind}")(name, "cuda", 0, dtype, [n, *shape], pool.ptr)

    def to_host(self, pool, n):
        return pool.read(rows=n)

    def read_row(self, pool, slot):
        return pool.read(row=slot)

    def write_row(self, pool, slot, value):
        pool.write_row(slot, value)

    def gather_rows(self, src, dst, order):
        src.gather_rows_into(dst, order)
