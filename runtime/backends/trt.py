"""TensorRT backend: the engines `linexport trt` built, device buffers allocated once, two state
pools per state with a per-slot parity, and each decode step replayed as a CUDA graph.

All buffers are allocated at construction, sized by the engines' optimization profile (the
manifest records it): prefill binds slices of them for any batch and prompt length within the
profile. Prefill continues each named slot from its state: the rows of slots with a position
> 0 are gathered (device to device, from the pool each slot's parity names) into a staging
buffer bound as ``past.*``, the rows of fresh sequences (position 0) there are zeroed, and
``present.*`` rows are written into the slots after the engine ran, so every row is read before
any slot is written (cost O(named rows) beside the prefill itself). Ingestion never asks for
more tokens per call than the profile holds: ``default_prefill_chunk`` is the profile's largest
sequence (at most 4096).

Decode addresses slots as ``OrtBackend`` does (see runtime/backends/ort.py for the whole
scheme): slot s's state is in pool ``_parity[s]``; when the named slots are one contiguous run
``start..start+n-1`` of one parity p, rows ``start..`` of pool p are bound as ``past.*`` and
the same rows of pool 1-p as ``present.*`` (zero-copy) and those slots flip parity; otherwise
the named rows are gathered (device to device) into a staging pool, the step runs there, and
the results are scattered back into pool 0 (cost O(named rows)). Slots not named are never
bound, so their state stays bit for bit.

A CUDA graph bakes in the addresses it was captured with, so there is one graph per binding:
``("run", start, n, p)`` for the fast path (which rows of which pool are past and present) and
``("staged", n)`` for the gather path (the staging pools never move). ids, positions and logits
always bind rows 0..n-1 of their fixed buffers. At most num_slots * (num_slots + 1) + num_slots
graphs exist; in steady continuous batching only a few are used. All work (copies included)
goes on the backend's own stream. ``close()`` (also on garbage collection, or at the end of a
``with`` block) destroys the CUDA graphs (instances and graphs), frees the buffers and destroys
the stream.

Needs a GPU and TensorRT (`tensorrt` for engines built with --target tensorrt, `tensorrt_rtx`
for --target rtx); neither exists on our CI machines, where its tests skip with that reason.
The generation logic above it is the same as for ONNX Runtime (runtime/generator.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.backends.base import Backend, checked_state, contiguous_run
from linexport.runtime.ingest import DEFAULT_PREFILL_CHUNK
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
        # Set first: close() (and __del__) must work on a backend whose construction failed.
        self._graphs, self._buffers, self._stream, self._closed = {}, [], None, False
        if device != "cuda":
            raise LinexportError(f"the TensorRT backend runs on 'cuda' only, got device {device!r}")
        engines = manifest.engines
        if any(not isinstance(d, int) for s in manifest.states for d in s.shape[1:]):
            raise LinexportError(f"{manifest.root} is a KV-cache export ({manifest.arch}); the TensorRT "
                                 "backend runs fixed-size-state exports: use --backend ort for it")
        if manifest.data["full_logits"]:
            raise LinexportError(f"{manifest.root} was exported with --full-logits; the runtime decodes "
                                 "from last-token logits: re-export without it, then `linexport trt`")
        # No GPU is the first thing to say where there is none: any other complaint (the profile,
        # TensorRT's version) would send the user rebuilding engines that cannot run here anyway.
        from linexport.runtime.backends.cuda import CudaRuntime

        self._cuda = CudaRuntime()
        if self._cuda.device_count() == 0:
            raise LinexportError("the TensorRT backend needs a CUDA GPU, and none is visible to this "
                                 "process (or its driver is older than the CUDA runtime): use --backend ort")
        self.max_batch, self.max_seq = engines["profile"]["batch"][2], engines["profile"]["seq"][2]
        self.default_prefill_chunk = min(DEFAULT_PREFILL_CHUNK, self.max_seq)  # ingestion stays in the profile
        if not 1 <= num_slots <= self.max_batch:
            raise LinexportError(f"expected 1..{self.max_batch} state slots (the engines' --max-batch), got "
                                 f"{num_slots}; rebuild with `linexport trt --max-batch {num_slots}`")
        trt = import_tensorrt(engines["target"])
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
        self._allocate(self._decode.dtypes, self._prefill.dtypes)

    def _allocate(self, d: dict, p: dict):
        """The stream and every device buffer. ``d``/``p``: tensor name -> numpy dtype of the
        decode / prefill engine. Needs num_slots, max_batch, max_seq, vocab_size, state_names,
        _shapes and _cuda."""
        self._stream = self._cuda.stream()
        # decode: pools A and B per state (slot s's state is in self._pools[self._parity[s]]),
        # ids, positions, logits; the gather path's staging pools come on first use.
        self._pools = tuple({n: self._pool(self.num_slots, self._shapes[n], d[f"past.{n}"])
                             for n in self.state_names} for _ in range(2))
        self._parity = np.zeros(self.num_slots, np.uint8)
        self._staging = None
        self._bound = None  # the key of the binding the decode context holds now
        self._state_dtypes = {n: d[f"past.{n}"] for n in self.state_names}
        self._ids = self._pool(self.num_slots, (1,), np.int64)
        self._pos = self._pool(self.num_slots, (), np.int64)
        self._logits = self._pool(self.num_slots, (self.vocab_size,), d["logits"])
        self._host_ids = np.zeros((self.num_slots, 1), np.int64)
        self._host_pos = np.zeros((self.num_slots,), np.int64)
        # prefill: the profile's largest inputs and outputs; a call binds their leading part.
        # past.* is staged: a call's rows come from scattered slots of either parity, or are zeros.
        self._prefill_ids = self._pool(self.max_batch * self.max_seq, (), np.int64)
        self._prefill_lengths = self._pool(self.max_batch, (), np.int64)
        self._prefill_pos = self._pool(self.max_batch, (), np.int64)
        self._prefill_past = {n: self._pool(self.max_batch, self._shapes[n], p[f"past.{n}"])
                              for n in self.state_names}
        self._prefill_logits = self._pool(self.max_batch, (self.vocab_size,), p["logits"])
        self._prefill_states = {n: self._pool(self.max_batch, self._shapes[n], p[f"present.{n}"])
                                for n in self.state_names}

    def _pool(self, rows, shape, dtype):
        from linexport.runtime.backends.cuda import DeviceArray

        buf = DeviceArray(self._cuda, (rows, *shape), dtype)
        self._buffers.append(buf)  # close() frees them all
        return buf

    # -- lifetime -------------------------------------------------------------------------
    def close(self):
        """Destroys every CUDA graph (instance and graph), frees every device buffer, then
        destroys the stream. Idempotent; the backend refuses work afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            try:  # let queued work finish before its buffers go; a failed step must not block cleanup
                self._cuda.sync(self._stream)
            except LinexportError:
                pass
        graphs, self._graphs = list(self._graphs.values()), {}
        for graph in graphs:
            graph.destroy()
        # The execution contexts hold the buffers' addresses: drop them before the buffers.
        self._prefill = self._decode = None
        buffers, self._buffers = self._buffers, []
        for buf in buffers:
            buf.free()
        stream, self._stream = self._stream, None
        if stream is not None:
            self._cuda.destroy_stream(stream)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA library may already be gone
            pass

    def _require_open(self):
        if self._closed:
            raise LinexportError("this TensorRT backend was closed: open the Model again to keep decoding")

    # -- graphs ---------------------------------------------------------------------------
    def prefill(self, input_ids, lengths, slots, positions=None):
        from linexport.runtime.backends.cuda import H2D

        self._require_open()
        ids, lengths, slots, positions = self._check_prefill_args(input_ids, lengths, slots, positions)
        n, T = ids.shape
        if not (1 <= n <= self.max_batch and 1 <= T <= self.max_seq):
            raise LinexportError(f"expected a prefill of 1..{self.max_batch} prompts of 1..{self.max_seq} "
                                 f"tokens (the engines' profile), got {n} x {T}; rebuild with "
                                 "`linexport trt --max-batch/--max-seq`, or ingest in chunks of at most "
                                 f"{self.max_seq} tokens (prefill_chunk)")
        e = self._prefill
        for buf, host in ((self._prefill_ids, ids), (self._prefill_lengths, lengths), (self._prefill_pos, positions)):
            self._cuda.memcpy(buf.ptr, host.ctypes.data, host.nbytes, H2D, self._stream)
        # past.*: row i is slots[i]'s state where it continues (from the pool its parity names),
        # zeros where it starts fresh. All on the stream before the engine: nothing is written
        # into a slot until every row has been read.
        rows, go_on = np.arange(n), positions > 0
        for name in self.state_names:
            past = self._prefill_past[name]
            for q in (0, 1):
                mine = go_on & (self._parity[slots] == q)
                if mine.any():
                    self._pools[q][name].copy_rows_to(past, slots[mine], rows[mine], self._stream)
            past.zero_rows(rows[~go_on], self._stream)
        e.bind("input_ids", self._prefill_ids.ptr, (n, T))
        e.bind("lengths", self._prefill_lengths.ptr, (n,))
        e.bind("position", self._prefill_pos.ptr, (n,))
        e.bind("logits", self._prefill_logits.ptr)
        for name in self.state_names:
            e.bind(f"past.{name}", self._prefill_past[name].ptr, (n, *self._shapes[name]))
            e.bind(f"present.{name}", self._prefill_states[name].ptr)
        e.run(self._stream, "prefill")
        for row, slot in enumerate(slots):
            pool = self._place(int(slot))
            for name in self.state_names:
                self._prefill_states[name].copy_rows_to(pool[name], [row], [slot], self._stream)
        return self._prefill_logits.read(rows=n, stream=self._stream).astype(np.float32, copy=False)

    def decode(self, slots, input_ids, positions):
        from linexport.runtime.backends.cuda import H2D

        self._require_open()
        slots, ids, pos = self._check_decode_args(slots, input_ids, positions)
        n = len(slots)
        self._host_ids[:n, 0] = ids
        self._host_pos[:n] = pos
        self._cuda.memcpy(self._ids.ptr, self._host_ids.ctypes.data, n * 8, H2D, self._stream)
        self._cuda.memcpy(self._pos.ptr, self._host_pos.ctypes.data, n * 8, H2D, self._stream)
        start = contiguous_run(slots)
        if start is not None and (self._parity[slots] == self._parity[start]).all():
            p = int(self._parity[start])
            self._launch(("run", start, n, p), self._pools[p], self._pools[1 - p], start, n)
            self._parity[start:start + n] ^= 1
        else:
            past, present = self._staging_pools()
            rows = np.arange(n)
            for name in self.state_names:
                for q in (0, 1):
                    mine = self._parity[slots] == q
                    if mine.any():
                        self._pools[q][name].copy_rows_to(past[name], slots[mine], rows[mine], self._stream)
            self._launch(("staged", n), past, present, 0, n)
            for name in self.state_names:
                present[name].copy_rows_to(self._pools[0][name], rows, slots, self._stream)
            self._parity[slots] = 0
        return self._logits.read(rows=n, stream=self._stream).astype(np.float32)

    def _launch(self, key, past: dict, present: dict, start: int, n: int):
        """Replays the CUDA graph of binding ``key`` (rows start..start+n-1 of past/present),
        capturing it first if this binding is new."""
        if self._bound != key:
            # The graph has the addresses baked in, but the context's shapes and addresses are
            # put back to the ones it was captured with too: what TensorRT keeps per context
            # then always matches the graph being replayed.
            e = self._decode
            e.bind("input_ids", self._ids.ptr, (n, 1))
            e.bind("position", self._pos.ptr, (n,))
            for name in self.state_names:
                e.bind(f"past.{name}", past[name].row_ptr(start), (n, *self._shapes[name]))
                e.bind(f"present.{name}", present[name].row_ptr(start))
            e.bind("logits", self._logits.ptr)
            self._bound = key
        graph = self._graphs.get(key)
        if graph is None:
            e = self._decode
            # Run once outside capture: TensorRT may allocate or tune on a new shape. It writes
            # only the present rows of the named slots (not their current state), and the replay
            # below recomputes the same step from the same past, so the step happens once.
            e.run(self._stream, "decode")
            self._cuda.sync(self._stream)
            graph = self._graphs[key] = self._cuda.capture(self._stream, lambda: e.run(self._stream, "decode"))
        self._cuda.launch_graph(graph, self._stream)

    def _staging_pools(self):
        if self._staging is None:
            self._staging = tuple({n: self._pool(self.num_slots, self._shapes[n], self._state_dtypes[n])
                                   for n in self.state_names} for _ in range(2))
        return self._staging

    # -- state ----------------------------------------------------------------------------
    def _place(self, slot: int) -> dict:
        """The pool a state written whole into ``slot`` goes to (prefill, restore, copy): its
        lower neighbour's (slot 0: its upper one's), recorded as its parity, so that a sequence
        joining next to running ones continues their contiguous, zero-copy run."""
        q = int(self._parity[slot - 1 if slot > 0 else min(1, self.num_slots - 1)])
        self._parity[slot] = q
        return self._pools[q]

    def get_state(self, slot):
        self._require_open()
        slot = self._check_slot(slot)
        pool = self._pools[self._parity[slot]]
        return {n: pool[n].read(row=slot, stream=self._stream) for n in self.state_names}

    def set_state(self, slot, state):
        self._require_open()
        slot = self._check_slot(slot)
        values = {n: checked_state(state, n, self._shapes[n]) for n in self.state_names}
        pool = self._place(slot)
        for name, value in values.items():
            pool[name].write_row(slot, value, stream=self._stream)

    def copy_slot(self, src, dst):
        self._require_open()
        src, dst = self._check_slot(src, "src"), self._check_slot(dst, "dst")
        if src == dst:
            return
        # On the backend's stream, ordered after any queued step (the legacy default stream
        # would order it by implicit synchronization only).
        source = self._pools[self._parity[src]]
        target = self._place(dst)  # row dst of either pool is dst's own: src's row is never overwritten
        for name in self.state_names:
            source[name].copy_rows_to(target[name], [src], [dst], self._stream)

    def permute_slots(self, order: Sequence[int]):
        self._require_open()
        order = np.asarray(self._check_order(order), np.int64)
        k = len(order)
        dst = np.arange(k)
        # Into the pool each destination slot's state is *not* in: no row read is overwritten.
        src_parity, dst_parity = self._parity[order], 1 - self._parity[:k]
        for name in self.state_names:
            for ps in (0, 1):
                for pd in (0, 1):
                    sel = (src_parity == ps) & (dst_parity == pd)
                    if sel.any():
                        self._pools[ps][name].copy_rows_to(self._pools[pd][name], order[sel], dst[sel], self._stream)
        self._parity[:k] ^= 1
