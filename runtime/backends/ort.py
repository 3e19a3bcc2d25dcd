"""ONNX Runtime backend: CPU or CUDA execution provider, IOBinding, slot-addressed ping-pong pools.

Each state has two pools A and B of ``num_slots`` rows, and each slot a *parity*: which of the
two holds its current state (``_parity[s]``: 0 = A, 1 = B). ``decode(slots, ...)`` takes one
of two paths:

* **fast path (zero-copy)**: the named slots are one contiguous run ``start..start+n-1``, in
  that order, all of the same parity p. Rows ``start..start+n-1`` of pool p are bound as the
  graph's ``past.*`` inputs and the same rows of pool 1-p as its ``present.*`` outputs; the
  graph reads and writes them in place and those n slots flip parity. No state is copied, and
  rows outside the run are not bound at all, so every other slot keeps its state bit for bit.
* **gather path**: any other set of slots (a gap, another order, mixed parities). The named
  rows are copied into a staging pool (allocated on first use), the graph runs on staging
  rows 0..n-1 into a second staging pool, and the results are copied back into the named
  slots' rows of pool A (their parity becomes 0). Cost: 2n row copies, O(named rows), never
  O(bystanders). Writing back to A, rather than to each slot's other pool, makes the parities
  of a batch that went through this path uniform again, so that the next step over a
  contiguous run (the common case: every live sequence, no gaps) is back on the fast path.

``get_state`` reads a slot's row in the pool its parity names. A state written whole into a
slot (``prefill``, ``set_state``, ``copy_slot``'s destination) may go to either pool at the same
cost: it goes to the pool of the slot's lower neighbour (slot 0: its upper one), so that a
sequence joining beside running ones (the Generator fills the lowest free slot) extends their
same-parity run and the next step stays on the fast path. ``permute_slots`` writes slot i's
new state into the pool slot i's state is *not* in and flips its parity, which never
overwrites a row that is still to be read (the sources are rows (j, parity j), the
destinations rows (i, 1 - parity i)). Each touches only the slots it names.

On CUDA all pools live on the device; state leaves it only when asked for (snapshot) and
enters it when a sequence joins (prefill) or is restored. Logits come back as a fresh host
array [n, V] (fp32) in the order of ``slots``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.backends.base import (Backend, check_pool_size, checked_state, contiguous_run,
                                              last_token_logits)

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
    return (load_session(prefill_path, threads, providers, memory_pattern=False),
            load_session(decode_path, threads, providers))


def load_session(path: Path, threads: int = 0, providers=("CPUExecutionProvider",), memory_pattern: bool = True):
    """One ONNX Runtime session over the graph at ``path``, the one loader of the runtime and of
    `linexport verify`: every way loading can fail is one LinexportError.

    ``memory_pattern=False`` for the prefill session: ONNX Runtime's memory pattern plans one
    block per input shape from a run's allocations and allocates it *beside* the arena's blocks
    from that first run, so from the second chunk of a long prompt on the session held both —
    a 4,096-token chunk of the 4-layer d384 model peaked 440 MiB over its weights instead of
    235 MiB, at the same speed (within 3 %). The decode session's shapes are tiny and fixed:
    it keeps the pattern."""
    ort = _import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Warnings are expected noise here: for an fp16 graph ORT warns about every node it cannot
    # constant-fold or place, on every load. Errors still show.
    opts.log_severity_level = 3
    # A QDQ-quantized graph (export/quantize.py) is run as written: ONNX Runtime fuses each
    # DequantizeLinear + MatMul into MatMulNBits, by default with int8 activations (accuracy
    # level 4), which quantizes each prefill row differently from a decode step's; level 0
    # computes in the activations' precision, as the graph says (and TensorRT's weight-only GEMM).
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if threads:
        opts.intra_op_num_threads = threads
    opts.enable_mem_pattern = memory_pattern
    try:
        return ort.InferenceSession(str(path), opts, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types per failure kind
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LinexportError(f"ONNX Runtime could not load {path}: {detail}. The graph is damaged or not "
                             "what linexport wrote: re-export it") from None


_BINDINGS_KEPT = 64  # decode bindings an OrtBackend keeps (one per contiguous run of slots and parity)


class OrtBackend(Backend):
    def __init__(self, prefill_path: Path, decode_path: Path, num_slots: int, device: str = "cpu",
                 threads: int = 0):
        self._prefill, self._decode = open_sessions(prefill_path, decode_path, num_slots, device, threads)
        self.device = device

        outputs = {o.name: o for o in self._decode.get_outputs()}
        self._prefill_outputs = [o.name for o in self._prefill.get_outputs()]
        if "position" not in {i.name for i in self._prefill.get_inputs()}:
            raise LinexportError(f"{prefill_path}: the prefill graph takes no position/past inputs, so it "
                                 "cannot continue a sequence; re-export it with this linexport "
                                 "(`linexport onnx`)")
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

        state_bytes = sum(int(np.prod(shape)) * np.dtype(t).itemsize for shape, t in self._state_meta.values())
        # Pools A and B, and staging for the gather path: up to four copies of every slot.
        check_pool_size(num_slots, 4 * state_bytes, "state pools")
        self._io = _CudaBuffers() if device == "cuda" else _HostBuffers()
        # Pools A and B per state; slot s's current state is in self._pools[self._parity[s]].
        self._pools = tuple(self._new_pool() for _ in range(2))
        self._parity = np.zeros(num_slots, np.uint8)
        self._staging = None  # (past, present) pools for the gather path, made on first use
        self._logits = self._io.zeros((num_slots, self.vocab_size), self._logits_dtype)
        self._ids = np.zeros((num_slots, 1), np.int64)
        self._pos = np.zeros((num_slots,), np.int64)
        self._bindings: dict = {}  # (past pools, present pools, start, n) -> IOBinding, LRU order

    def _new_pool(self) -> dict:
        return {n: self._io.zeros((self.num_slots, *s), t) for n, (s, t) in self._state_meta.items()}

    # -- graphs ---------------------------------------------------------------------------
    def prefill(self, input_ids, lengths, slots, positions=None):
        ids, lengths, slots, positions = self._check_prefill_args(input_ids, lengths, slots, positions)
        feed = {"input_ids": ids, "lengths": lengths, "position": positions}
        # Each continuing row's state comes from its slot (a copy: O(state) per row, beside the
        # prefill's O(tokens)); a fresh row (position 0) starts from zeros.
        go_on = np.flatnonzero(positions > 0)
        for name in self.state_names:
            shape, dtype = self._state_meta[name]
            past = np.zeros((len(slots), *shape), dtype)
            for row in go_on:
                slot = int(slots[row])
                past[row] = self._io.read_row(self._row_pool(slot)[name], slot)
            feed[f"past.{name}"] = past
        outputs = self._prefill.run(None, feed)
        result = dict(zip(self._prefill_outputs, outputs))
        for row, slot in enumerate(slots):
            pool = self._place(int(slot))
            for name in self.state_names:
                self._io.write_row(pool[name], int(slot), result[f"present.{name}"][row])
        return last_token_logits(result["logits"], lengths)

    def decode(self, slots, input_ids, positions):
        slots, ids, pos = self._check_decode_args(slots, input_ids, positions)
        n = len(slots)
        self._ids[:n, 0] = ids
        self._pos[:n] = pos
        start = contiguous_run(slots)
        if start is not None and (self._parity[slots] == self._parity[start]).all():
            p = int(self._parity[start])
            self._run(self._pools[p], self._pools[1 - p], start, n)
            self._parity[start:start + n] ^= 1
        else:
            past, present = self._staging_pools()
            rows = np.arange(n)
            for name in self.state_names:
                for p in (0, 1):
                    mine = self._parity[slots] == p
                    if mine.any():
                        self._io.copy_rows(self._pools[p][name], slots[mine], past[name], rows[mine])
            self._run(past, present, 0, n)
            for name in self.state_names:
                self._io.copy_rows(present[name], rows, self._pools[0][name], slots)
            self._parity[slots] = 0
        return self._io.to_host(self._logits, n).astype(np.float32)

    def _run(self, past: dict, present: dict, start: int, n: int):
        """One decode step reading rows start..start+n-1 of ``past``, writing those of ``present``.

        The binding of each (pools, rows) is made once and kept (a few dozen at most): it holds
        only pointers into buffers that live as long as the backend — the pools, the staging
        pools, the id/position/logits arrays, whose contents change in place — so binding 2·S+3
        tensors anew each step buys nothing (it cost about 0.3 ms a step for GAU's 32 states,
        8 layers d384, against a 7 ms step)."""
        key = (id(past), id(present), start, n)
        b = self._bindings.pop(key, None)
        if b is None:
            b = self._decode.io_binding()
            b.bind_cpu_input("input_ids", self._ids[:n])
            b.bind_cpu_input("position", self._pos[:n])
            for name in self.state_names:
                shape, dtype = self._state_meta[name]
                self._io.bind(b, "input", f"past.{name}", past[name], start, n, shape, dtype)
                self._io.bind(b, "output", f"present.{name}", present[name], start, n, shape, dtype)
            self._io.bind(b, "output", "logits", self._logits, 0, n, (self.vocab_size,), self._logits_dtype)
            if len(self._bindings) >= _BINDINGS_KEPT:
                self._bindings.pop(next(iter(self._bindings)))  # the least recently used
        self._bindings[key] = b  # most recently used last
        self._decode.run_with_iobinding(b)

    def _staging_pools(self):
        if self._staging is None:
            self._staging = (self._new_pool(), self._new_pool())
        return self._staging

    # -- state ----------------------------------------------------------------------------
    def _row_pool(self, slot) -> dict:
        return self._pools[self._parity[slot]]

    def _place(self, slot: int) -> dict:
        """The pool a state written whole into ``slot`` goes to (prefill, restore, copy): the
        one its lower neighbour's state is in (for slot 0, its upper one's), recorded as the
        slot's parity. Either pool costs the same write, and a sequence that joins next to
        running ones (the lowest free slot) then continues the contiguous, zero-copy run."""
        q = int(self._parity[slot - 1 if slot > 0 else min(1, self.num_slots - 1)])
        self._parity[slot] = q
        return self._pools[q]

    def get_state(self, slot):
        slot = self._check_slot(slot)
        pool = self._row_pool(slot)
        return {n: self._io.read_row(pool[n], slot) for n in self.state_names}

    def set_state(self, slot, state):
        slot = self._check_slot(slot)
        values = {}
        for name in self.state_names:  # check all before writing any: no half-restored slot
            shape, dtype = self._state_meta[name]
            values[name] = checked_state(state, name, shape).astype(dtype, copy=False)
        pool = self._place(slot)
        for name, value in values.items():
            self._io.write_row(pool[name], slot, value)

    def copy_slot(self, src, dst):
        src, dst = self._check_slot(src, "src"), self._check_slot(dst, "dst")
        if src == dst:
            return
        source = self._row_pool(src)
        target = self._place(dst)  # row dst of either pool is dst's own: src's row is never overwritten
        for name in self.state_names:
            self._io.copy_rows(source[name], [src], target[name], [dst])

    def permute_slots(self, order: Sequence[int]):
        order = np.asarray(self._check_order(order), np.int64)
        k = len(order)
        dst = np.arange(k)
        src_parity, dst_parity = self._parity[order], 1 - self._parity[:k]
        for name in self.state_names:
            for ps in (0, 1):
                for pd in (0, 1):
                    sel = (src_parity == ps) & (dst_parity == pd)
                    if sel.any():
                        self._io.copy_rows(self._pools[ps][name], order[sel], self._pools[pd][name], dst[sel])
        self._parity[:k] ^= 1


class _HostBuffers:
    """State pools as numpy arrays, bound to ONNX Runtime by pointer (no copies)."""

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def bind(self, binding, kind, name, pool, start, n, shape, dtype):
        view = pool[start:start + n]
        ptr = view.__array_interface__["data"][0]
        getattr(binding, f"bind_{kind}")(name, "cpu", 0, dtype, [n, *shape], ptr)

    def to_host(self, pool, n):
        return pool[:n]

    def read_row(self, pool, slot):
        return pool[slot].copy()

    def write_row(self, pool, slot, value):
        pool[slot] = value

    def copy_rows(self, src, src_rows, dst, dst_rows):
        """dst[dst_rows[i]] = src[src_rows[i]]; the rows read are copied before any is written."""
        dst[np.asarray(dst_rows)] = src[np.asarray(src_rows)]


class _CudaBuffers:
    """State pools in device memory (cudaMalloc), bound to ONNX Runtime by pointer. Not
    exercised on our CPU-only CI machines."""

    def __init__(self):
        from linexport.runtime.backends.cuda import CudaRuntime

        self._cuda = CudaRuntime()

    def zeros(self, shape, dtype):
        from linexport.runtime.backends.cuda import DeviceArray

        return DeviceArray(self._cuda, shape, dtype)

    def bind(self, binding, kind, name, pool, start, n, shape, dtype):
        getattr(binding, f"bind_{kind}")(name, "cuda", 0, dtype, [n, *shape], pool.row_ptr(start))

    def to_host(self, pool, n):
        return pool.read(rows=n)

    def read_row(self, pool, slot):
        return pool.read(row=slot)

    def write_row(self, pool, slot, value):
        pool.write_row(slot, value)

    def copy_rows(self, src, src_rows, dst, dst_rows):
        # Callers never pass a row that is both read and written (see the module docstring),
        # so row-by-row device copies in any order are safe.
        src.copy_rows_to(dst, src_rows, dst_rows)
