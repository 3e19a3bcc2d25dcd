"""TensorRT backend: the engines `linexport trt` built, device buffers allocated once, past/present
state pools that swap roles each step, and each decode step replayed as a CUDA graph.

All buffers are allocated at construction, sized by the engines' optimization profile (the
manifest records it): prefill binds slices of them for any batch and prompt length within the
profile, decode binds the state pools themselves. One CUDA graph per (rows decoded, ping-pong
parity): a graph bakes in buffer addresses, and the two parities bind the pools the other way
round. All work goes on one stream.

Needs a GPU and TensorRT (`tensorrt` for engines built with --target tensorrt, `tensorrt_rtx`
for --target rtx); neither exists on our CI machines, where its tests skip with that reason.
The generation logic above it is the same as for ONNX Runtime (runtime/generator.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.backends.base import Backend, checked_state
from linexport.tensorrt_flavours import import_tensorrt


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
        if shape is not None and not self.context.set_input_shape(name, tuple(shape)):
            raise LinexportError(f"TensorRT refused shape {tuple(shape)} for {name}: outside the "
                                 "engine's optimization profile; rebuild with larger --max-batch/--max-seq")
        if not self.context.set_tensor_address(name, ptr):
            raise LinexportError(f"TensorRT refused the buffer for {name}")

    def run(self, stream, what: str):
        if not self.context.execute_async_v3(stream):
            raise LinexportError(f"TensorRT {what} failed (see the TensorRT log above)")


class TrtBackend(Backend):
    def __init__(self, manifest, num_slots: int, device: str = "cuda"):
        if device != "cuda":
            raise LinexportError(f"the TensorRT backend runs on 'cuda' only, got device {device!r}")
        engines = manifest.engines
        if any(not isinstance(d, int) for s in manifest.states for d in s.shape[1:]):
            raise LinexportError(f"{manifest.root} is a KV-cache export ({manifest.arch}); the TensorRT "
                                 "backend runs fixed-size-state exports: use --backend ort for it")
        if manifest.data["full_logits"]:
            raise LinexportError(f"{manifest.root} was exported with --full-logits; the runtime decodes "
                                 "from last-token logits: re-export without it, then `linexport trt`")
        self.max_batch, self.max_seq = engines["profile"]["batch"][2], engines["profile"]["seq"][2]
        if not 1 <= num_slots <= self.max_batch:
            raise LinexportError(f"expected 1..{self.max_batch} state slots (the engines' --max-batch), got "
                                 f"{num_slots}; rebuild with `linexport trt --max-batch {num_slots}`")
        trt = import_tensorrt(engines["target"])
        from linexport.runtime.backends.cuda import CudaRuntime, DeviceArray

        self._cuda = CudaRuntime()
        if self._cuda.device_count() == 0:
            raise LinexportError("the TensorRT backend needs a CUDA GPU, and none is visible to this "
                                 "process (or its driver is older than the CUDA runtime): use --backend ort")
        if manifest.plugin_library is not None:
            from linexport.plugins import load_trt_plugins

            load_trt_plugins(trt.get_plugin_registry(), manifest.plugin_library)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self._prefill = _Engine(trt, runtime, manifest.engine_path("prefill"))
        self._decode = _Engine(trt, runtime, manifest.engine_path("decode"))
        self.num_slots = num_slots
        self.vocab_size = manifest.vocab_size
        self.state_names = [s.name for s in manifest.states]
        self._shapes = {s.name: tuple(s.shape[1:]) for s in manifest.states}
        self._stream = self._cuda.stream()

        def pool(rows, shape, dtype):
            return DeviceArray(self._cuda, (rows, *shape), dtype)

        d, p = self._decode.dtypes, self._prefill.dtypes
        # decode: two state pools (past / next), ids, positions, logits
        self._past = {n: pool(num_slots, self._shapes[n], d[f"past.{n}"]) for n in self.state_names}
        self._next = {n: pool(num_slots, self._shapes[n], d[f"past.{n}"]) for n in self.state_names}
        self._ids = pool(num_slots, (1,), np.int64)
        self._pos = pool(num_slots, (), np.int64)
        self._logits = pool(num_slots, (self.vocab_size,), d["logits"])
        self._host_ids = np.zeros((num_slots, 1), np.int64)
        self._host_pos = np.zeros((num_slots,), np.int64)
        # prefill: the profile's largest inputs and outputs; a call binds their leading part
        self._prefill_ids = pool(self.max_batch * self.max_seq, (), np.int64)
        self._prefill_lengths = pool(self.max_batch, (), np.int64)
        self._prefill_logits = pool(self.max_batch, (self.vocab_size,), p["logits"])
        self._prefill_states = {n: pool(self.max_batch, self._shapes[n], p[f"present.{n}"]) for n in self.state_names}
        self._graphs: dict[tuple[int, int], int] = {}
        self._parity = 0

    def prefill(self, input_ids, lengths, slots):
        from linexport.runtime.backends.cuda import D2D, H2D

        input_ids = np.ascontiguousarray(input_ids, np.int64)
        lengths = np.ascontiguousarray(lengths, np.int64)
        n, T = input_ids.shape
        if not (1 <= n <= self.max_batch and 1 <= T <= self.max_seq):
            raise LinexportError(f"expected a prefill of 1..{self.max_batch} prompts of 1..{self.max_seq} "
                                 f"tokens (the engines' profile), got {n} x {T}; rebuild with "
                                 "`linexport trt --max-batch/--max-seq`, or split the prompt")
        e = self._prefill
        self._cuda.memcpy(self._prefill_ids.ptr, input_ids.ctypes.data, input_ids.nbytes, H2D, self._stream)
        self._cuda.memcpy(self._prefill_lengths.ptr, lengths.ctypes.data, lengths.nbytes, H2D, self._stream)
        e.bind("input_ids", self._prefill_ids.ptr, (n, T))
        e.bind("lengths", self._prefill_lengths.ptr, (n,))
        e.bind("logits", self._prefill_logits.ptr)
        for name in self.state_names:
            e.bind(f"present.{name}", self._prefill_states[name].ptr)
        e.run(self._stream, "prefill")
        for row, slot in enumerate(slots):
            for name in self.state_names:
                pool, out = self._past[name], self._prefill_states[name]
                self._cuda.memcpy(pool.row_ptr(slot), out.row_ptr(row), pool.row_bytes, D2D, self._stream)
        self._cuda.sync(self._stream)
        return self._prefill_logits.read(rows=n).astype(np.float32, copy=False)

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
            self._decode.run(self._stream, "decode")
            self._cuda.sync(self._stream)
            # That run advanced the state into `_next`; the captured replay below recomputes the
            # same step from the same `_past`, so the result is as if it ran once.
            self._graphs[key] = self._cuda.capture(self._stream, lambda: self._decode.run(self._stream, "decode"))
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
            self._past[name].write_row(slot, checked_state(state, name, self._shapes[name]))

    def copy_slot(self, src, dst):
        from linexport.runtime.backends.cuda import D2D

        for name in self.state_names:
            pool = self._past[name]
            self._cuda.memcpy(pool.row_ptr(dst), pool.row_ptr(src), pool.row_bytes, D2D)

    def permute_slots(self, order: Sequence[int]):
        for name in self.state_names:
            self._past[name].gather_rows_into(self._next[name], list(order))
            self._past[name], self._next[name] = self._next[name], self._past[name]
        # The pools swapped names but not parity: graphs captured for this parity now bind the
        # wrong way round, so swap parity too.
        self._parity ^= 1
