"""TensorRT backend: the engines `linexport trt` built, device buffers allocated once, past/present
state pools that swap roles each step, and each decode step replayed as a CUDA graph.

One CUDA graph per (rows decoded, ping-pong parity): the graph bakes in buffer addresses, and
the two parities bind the pools the other way round. All work goes on one stream. Needs a GPU
and TensorRT (`tensorrt` for engines built for TensorRT, `tensorrt_rtx` for TensorRT-RTX ones);
neither exists on our CI machines, where its tests skip with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.backends.base import Backend


def import_tensorrt(target: str = "tensorrt"):
    """The TensorRT flavour an engine needs, or a LinexportError naming the package to install."""
    names = {"tensorrt": ("tensorrt", "pip install tensorrt-cu13  (or linexport[trt])"),
             "rtx": ("tensorrt_rtx", "pip install tensorrt-rtx-cu13  (or linexport[rtx])")}
    if target not in names:
        raise LinexportError(f"unknown TensorRT target {target!r}: expected 'tensorrt' or 'rtx'")
    module, fix = names[target]
    try:
        return __import__(module)
    except ImportError:
        raise LinexportError(f"TensorRT ({module}) is not installed: {fix}") from None


class _Engine:
    def __init__(self, trt, runtime, path):
        try:
            data = path.read_bytes()
        except OSError as e:
            raise LinexportError(f"cannot read engine {path}: {e}") from None
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise LinexportError(f"TensorRT could not deserialize {path}: it was built for another "
                                 "TensorRT version or GPU, or its plugin library is not loaded. "
                                 "Rebuild it with `linexport trt` on this machine.")
        self.context = self.engine.create_execution_context()
        self.dtypes = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))

    def bind(self, name, ptr, shape=None):
        if shape is not None:
            self.context.set_input_shape(name, tuple(shape))
        self.context.set_tensor_address(name, ptr)


class TrtBackend(Backend):
    def __init__(self, manifest, num_slots: int, device: str = "cuda", max_prefill_tokens: int = 1 << 16):
        if device != "cuda":
            raise LinexportError(f"the TensorRT backend runs on 'cuda' only, got device {device!r}")
        target = (manifest.data.get("engines_target") or "tensorrt")
        trt = import_tensorrt(target)
        from linexport.runtime.backends.cuda import CudaRuntime, DeviceArray

        self._cuda = CudaRuntime()
        plugin = manifest.data.get("plugin_library")
        if plugin:
            from pathlib import Path

            lib = Path(plugin) if Path(plugin).is_absolute() else manifest.root / plugin
            if trt.get_plugin_registry().load_library(str(lib)) is None:
                raise LinexportError(f"TensorRT could not load the plugin library {lib}; rebuild it "
                                     "(see plugins/README.md) or set LINEXPORT_PLUGIN_LIB")
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self._prefill = _Engine(trt, runtime, manifest.engine_path("prefill"))
        self._decode = _Engine(trt, runtime, manifest.engine_path("decode"))
        self.num_slots = num_slots
        self.vocab_size = manifest.vocab_size
        self.state_names = [s.name for s in manifest.states]
        self._shapes = {s.name: tuple(s.shape[1:]) for s in manifest.states}
        self._stream = self._cuda.stream()
        d = self._decode.dtypes
        self._past = {n: DeviceArray(self._cuda, (num_slots, *self._shapes[n]), d[f"past.{n}"]) for n in self.state_names}
        self._next = {n: DeviceArray(self._cuda, (num_slots, *self._shapes[n]), d[f"past.{n}"]) for n in self.state_names}
        self._ids = DeviceArray(self._cuda, (num_slots, 1), np.int64)
        self._pos = DeviceArray(self._cuda, (num_slots,), np.int64)
        self._logits = DeviceArray(self._cuda, (num_slots, self.vocab_size), d["logits"])
        self._host_ids = np.zeros((num_slots, 1), np.int64)
        self._host_pos = np.zeros((num_slots,), np.int64)
        self._graphs: dict[tuple[int, int], int] = {}
        self._parity = 0
        self._max_prefill_tokens = max_prefill_tokens
        self._DeviceArray = DeviceArray

    def prefill(self, input_ids, lengths, slots):
        from linexport.runtime.backends.cuda import D2D, H2D

        input_ids = np.ascontiguousarray(input_ids, np.int64)
        lengths = np.ascontiguousarray(lengths, np.int64)
        n, T = input_ids.shape
        e = self._prefill
        ids = self._DeviceArray(self._cuda, (n, T), np.int64)
        lens = self._DeviceArray(self._cuda, (n,), np.int64)
        self._cuda.memcpy(ids.ptr, input_ids.ctypes.data, ids.nbytes, H2D)
        self._cuda.memcpy(lens.ptr, lengths.ctypes.data, lens.nbytes, H2D)
        e.bind("input_ids", ids.ptr, (n, T))
        e.bind("lengths", lens.ptr, (n,))
        logits = self._DeviceArray(self._cuda, (n, self.vocab_size), e.dtypes["logits"])
        e.bind("logits", logits.ptr)
        outs = {}
        for name in self.state_names:
            outs[name] = self._DeviceArray(self._cuda, (n, *self._shapes[name]), e.dtypes[f"present.{name}"])
            e.bind(f"present.{name}", outs[name].ptr)
        if not e.context.execute_async_v3(self._stream):
            raise LinexportError("TensorRT prefill failed (see the TensorRT log above)")
        for row, slot in enumerate(slots):
            for name in self.state_names:
                pool = self._past[name]
                self._cuda.memcpy(pool.row_ptr(slot), outs[name].row_ptr(row), pool.row_bytes, D2D, self._stream)
        self._cuda.sync(self._stream)
        return logits.read().astype(np.float32, copy=False)

    def decode(self, input_ids, positions):
        from linexport.runtime.backends.cuda import H2D

        n = len(input_ids)
        if not 1 <= n <= self.num_slots:
            raise LinexportError(f"expected 1..{self.num_slots} rows to decode, got {n}")
        self._host_ids[:n, 0] = input_ids
        self._host_pos[:n] = positions
        self._cuda.memcpy(self._ids.ptr, self._host_ids.ctypes.data, n * 8, H2D, self._stream)
        self._cuda.memcpy(self._pos.ptr, self._host_pos.ctypes.data, n * 8, H2D, self._stream)
        key = (n, self._parity)
        if key not in self._graphs:
            self._bind_decode(n)
            # Run once outside capture: TensorRT may allocate or tune on a new shape.
            if not self._decode.context.execute_async_v3(self._stream):
                raise LinexportError("TensorRT decode failed (see the TensorRT log above)")
            self._cuda.sync(self._stream)
            self._graphs[key] = self._cuda.capture(
                self._stream, lambda: self._decode.context.execute_async_v3(self._stream))
        else:
            self._cuda.launch_graph(self._graphs[key], self._stream)
        self._cuda.sync(self._stream)
        self._past, self._next = self._next, self._past
        self._parity ^= 1
        return self._logits.read(rows=n).astype(np.float32, copy=False)

    def _bind_decode(self, n):
        e = self._decode
        e.bind("input_ids", self._ids.ptr, (n, 1))
        e.bind("position", self._pos.ptr, (n,))
        for name in self.state_names:
            e.bind(f"past.{name}", self._past[name].ptr, (n, *self._shapes[name]))
            e.bind(f"present.{name}", self._next[name].ptr)
        e.bind("logits", self._logits.ptr)

    def get_state(self, slot):
        return {n: self._past[n].read(row=slot) for n in self.state_names}

    def set_state(self, slot, state):
        for name in self.state_names:
            value = np.asarray(state[name])
            if value.shape != self._shapes[name]:
                raise LinexportError(f"state {name}: expected shape {self._shapes[name]}, got {value.shape}")
            self._past[name].write_row(slot, value)

    def copy_slot(self, src, dst):
        from linexport.runtime.backends.cuda import D2D

        for name in self.state_names:
            pool = self._past[name]
            self._cuda.memcpy(pool.row_ptr(dst), pool.row_ptr(src), pool.row_bytes, D2D)

    def permute_slots(self, order: Sequence[int]):
        from linexport.runtime.backends.cuda import D2D

        order = list(order)
        for name in self.state_names:
            src, dst = self._past[name], self._next[name]
            for i, j in enumerate(order):
                self._cuda.memcpy(dst.row_ptr(i), src.row_ptr(j), src.row_bytes, D2D)
            rest = src.shape[0] - len(order)
            if rest:
                self._cuda.memcpy(dst.row_ptr(len(order)), src.row_ptr(len(order)), rest * src.row_bytes, D2D)
            self._past[name], self._next[name] = dst, src
        # The pools swapped names but not parity: graphs captured for this parity now bind the
        # wrong way round, so swap parity too.
        self._parity ^= 1
