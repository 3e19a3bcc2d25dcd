"""ONNX Runtime backend for KV-cache exports (the softmax baseline): per-slot cache pools.

Each state is a host pool ``[num_slots, ..., capacity, ...]`` (the cache axis where the manifest
says ``past_seq``) plus one length per slot: the tokens that slot has cached. A decode step over
``slots`` gathers ``pool[slots]`` cut to L = the largest position among the rows (a copy in any
case: the graph takes a dense ``[n, H, L, D]``, so there is no zero-copy path to keep), and from
each row's ``present`` writes back only the entry the step wrote, at that row's ``position``,
into that row's slot (contract/manifest.py: shorter rows are padding the graph masks out). Only
the named slots are read or written, so every other slot keeps its cache bit for bit, and a
step costs O(named rows x L), never O(bystanders). Pools double when a sequence outgrows them.
The cache stays in host memory on any device: a baseline to compare against, not a tuned KV
runtime. The fixed-state archs keep the zero-copy path of ``OrtBackend``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.backends.base import Backend, check_pool_size, checked_values, last_token_logits
from linexport.runtime.backends.ort import _NP_TYPES, open_sessions

INITIAL_CAPACITY = 64  # cached tokens per slot before the first doubling


class OrtKvCacheBackend(Backend):
    continues_prefill = False  # the KV prefill graph starts from an empty cache (contract/graph_io.py)

    def __init__(self, prefill_path: Path, decode_path: Path, num_slots: int, device: str = "cpu",
                 threads: int = 0):
        self._prefill, self._decode = open_sessions(prefill_path, decode_path, num_slots, device, threads)
        self.device = device
        self.num_slots = num_slots
        outputs = {o.name: o for o in self._decode.get_outputs()}
        self.vocab_size = int(outputs["logits"].shape[-1])
        self.state_names = [i.name[len("past."):] for i in self._decode.get_inputs() if i.name.startswith("past.")]
        self._axis, self._shape, self._dtype = {}, {}, {}
        for inp in self._decode.get_inputs():
            if not inp.name.startswith("past."):
                continue
            name, dims = inp.name[len("past."):], inp.shape[1:]
            dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
            if len(dynamic) != 1:
                raise LinexportError(f"state {inp.name} has dims {inp.shape}: expected a KV cache with "
                                     "exactly one dynamic dim after the batch (past_seq). An export "
                                     "with fixed-size states runs on OrtBackend.")
            self._axis[name] = 1 + dynamic[0]  # in the batch-first pool
            self._shape[name] = tuple(dims)
            self._dtype[name] = _NP_TYPES[inp.type]
        self._capacity = INITIAL_CAPACITY
        entry_bytes = sum(int(np.prod(self._pool_shape(n, 1)[1:])) * np.dtype(self._dtype[n]).itemsize
                          for n in self.state_names)
        check_pool_size(num_slots, INITIAL_CAPACITY * entry_bytes, "KV-cache pools")
        self._pools = {n: np.zeros(self._pool_shape(n, self._capacity), self._dtype[n]) for n in self.state_names}
        self._lengths = np.zeros(num_slots, np.int64)

    # -- graphs ---------------------------------------------------------------------------
    def prefill(self, input_ids, lengths, slots, positions=None):
        input_ids, lengths, slots, _ = self._check_prefill_args(input_ids, lengths, slots, positions)
        outputs = self._prefill.run(None, {"input_ids": input_ids, "lengths": lengths})
        result = dict(zip([o.name for o in self._prefill.get_outputs()], outputs))
        self._reserve(input_ids.shape[1])
        for row, slot in enumerate(slots):
            n = int(lengths[row])
            for name in self.state_names:
                cut = self._along(name, slice(0, n))
                self._pools[name][(slot, *cut)] = result[f"present.{name}"][(row, *cut)]
            self._lengths[slot] = n
        return last_token_logits(result["logits"], lengths)

    def decode(self, slots, input_ids, positions):
        slots, ids, positions = self._check_decode_args(slots, input_ids, positions)
        n = len(slots)
        cached = self._lengths[slots]
        bad = (positions < 0) | (positions > cached)
        if bad.any():
            raise LinexportError(f"expected each row's position in [0, its cached tokens "
                                 f"{cached.tolist()}], got {positions.tolist()}: a position "
                                 "past the cache would attend to entries that were never written")
        L = int(positions.max())
        feed = {"input_ids": ids.reshape(n, 1), "position": positions}
        for name in self.state_names:
            # pool[slots] gathers the named rows (a copy); the cut to L keeps it O(n x L).
            feed[f"past.{name}"] = np.ascontiguousarray(
                self._pools[name][(slots, *self._along(name, slice(0, L)))])
        outputs = dict(zip([o.name for o in self._decode.get_outputs()], self._decode.run(None, feed)))
        self._reserve(L + 1)
        rows = np.arange(n)
        for name in self.state_names:
            # The one entry each row's step wrote; the rest of present is that row's past.
            self._pools[name][self._entry(name, slots, positions)] = \
                outputs[f"present.{name}"][self._entry(name, rows, positions)]
        self._lengths[slots] = positions + 1
        return outputs["logits"].astype(np.float32, copy=False)

    # -- state ----------------------------------------------------------------------------
    def get_state(self, slot):
        slot = self._check_slot(slot)
        n = int(self._lengths[slot])
        return {name: self._pools[name][(slot, *self._along(name, slice(0, n)))].copy() for name in self.state_names}

    def set_state(self, slot, state):
        slot = self._check_slot(slot)
        lengths = set()
        for name in self.state_names:
            if name not in state:
                raise LinexportError(f"expected a state holding {name!r}, got keys {sorted(state)}")
            value = checked_values(state[name], name)
            axis = self._axis[name] - 1
            expected = tuple("past_seq" if i == axis else d for i, d in enumerate(self._shape[name]))
            if value.ndim != len(expected) or any(v != d for i, (v, d) in enumerate(zip(value.shape, expected))
                                                  if i != axis):
                raise LinexportError(f"state {name}: expected shape {expected}, got {value.shape}")
            lengths.add(value.shape[axis])
        if len(lengths) != 1:
            raise LinexportError(f"expected every state's cache to hold the same number of tokens, got "
                                 f"{sorted(lengths)}")
        n = lengths.pop()
        self._reserve(n)
        for name in self.state_names:
            self._pools[name][(slot, *self._along(name, slice(0, n)))] = state[name]
        self._lengths[slot] = n

    def copy_slot(self, src, dst):
        src, dst = self._check_slot(src, "src"), self._check_slot(dst, "dst")
        for pool in self._pools.values():
            pool[dst] = pool[src]
        self._lengths[dst] = self._lengths[src]

    def permute_slots(self, order: Sequence[int]):
        order = self._check_order(order)
        for pool in self._pools.values():
            pool[: len(order)] = pool[order]  # fancy indexing reads a copy first: safe in place
        self._lengths[: len(order)] = self._lengths[order]

    # -- pools ----------------------------------------------------------------------------
    def _pool_shape(self, name, capacity):
        return (self.num_slots, *(capacity if i == self._axis[name] - 1 else d
                                  for i, d in enumerate(self._shape[name])))

    def _along(self, name, index) -> tuple:
        """Index tuple (without the slot) that applies ``index`` on ``name``'s cache axis."""
        return (*(slice(None),) * (self._axis[name] - 1), index)

    def _entry(self, name, rows, positions) -> tuple:
        """Index of entry ``positions[i]`` of row ``rows[i]``: arrays [n, ...the other dims]."""
        return (rows, *self._along(name, positions))

    def _reserve(self, tokens: int):
        """Grows every pool (doubling) until it holds ``tokens`` per slot."""
        if tokens <= self._capacity:
            return
        capacity = max(tokens, 2 * self._capacity)
        for name, pool in self._pools.items():
            grown = np.zeros(self._pool_shape(name, capacity), pool.dtype)
            grown[(slice(None), *self._along(name, slice(0, self._capacity)))] = pool
            self._pools[name] = grown
        self._capacity = capacity
