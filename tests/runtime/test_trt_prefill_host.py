"""TrtBackend.prefill's gather and scatter of state rows, run on the CPU.

The CUDA runtime is replaced by HostCudaLib, which keeps "device" buffers in host memory and
really performs the copies and memsets (in call order: one stream), and the prefill engine by
ToyPrefill, a made-up recurrence that continues from the ``past.*`` rows bound to it exactly as
a real engine would (``lengths`` 0: the row passes through; ``position``: tokens already in the
past). So these tests check the backend's side of a continued prefill -- which pool row each
slot's state comes from, zeros for fresh rows, where ``present.*`` rows land, that every row is
read before any slot is written, that slots not named keep their bytes, that everything goes
on the backend's stream -- but nothing TensorRT computes: that is test_trt_backend.py, on a GPU.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from linexport.errors import LinexportError
from linexport.runtime.backends.cuda import D2D, CudaRuntime
from linexport.runtime.backends.trt import TrtBackend

SHAPES = {"0.s": (2, 3), "1.s": (4,)}
VOCAB = 5


def _value(arg):
    obj = getattr(arg, "_obj", arg)  # ctypes.byref(x) -> x
    return obj.value if isinstance(obj, ctypes._SimpleCData) else obj


class HostCudaLib:
    """The CUDA runtime calls the backend makes, on host memory. Every call is recorded as
    (name, argument values); streams and graphs are made-up handles."""

    def __init__(self):
        self.calls, self._next, self._memory = [], 0x1000, {}

    def __getattr__(self, name):
        if not name.startswith("cuda"):
            raise AttributeError(name)
        impl = getattr(self, "_" + name, None)

        def call(*args):
            self.calls.append((name, tuple(_value(a) for a in args)))
            return impl(*args) if impl is not None else 0

        return call

    def _handle(self, out):
        self._next += 0x100
        out._obj.value = self._next
        return 0

    _cudaStreamCreate = _handle

    def _cudaMalloc(self, out, size):
        buf = ctypes.create_string_buffer(_value(size))
        self._memory[ctypes.addressof(buf)] = buf
        out._obj.value = ctypes.addressof(buf)
        return 0

    def _cudaFree(self, ptr):
        del self._memory[_value(ptr)]
        return 0

    def _cudaMemcpy(self, dst, src, nbytes, kind, stream=None):
        ctypes.memmove(_value(dst), _value(src), _value(nbytes))
        return 0

    _cudaMemcpyAsync = _cudaMemcpy

    def _cudaMemset(self, ptr, value, nbytes, stream=None):
        ctypes.memset(_value(ptr), _value(value), _value(nbytes))
        return 0

    _cudaMemsetAsync = _cudaMemset

    def named(self, name):
        return [args for n, args in self.calls if n == name]


def _view(ptr, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr), dtype).reshape(shape)


def toy_fold(state: dict, tokens, position: int) -> dict:
    """The toy model's state after ``tokens`` from ``state`` (holding ``position`` tokens):
    s <- s / 2 + (token + 1) * (index + 1) * weight, with a weight per state and element; every
    value stays a short binary fraction, so folding in any split is exact."""
    out = {}
    for k, (name, shape) in enumerate(SHAPES.items()):
        s = state[name].astype(np.float32).copy()
        weight = (np.arange(s.size, dtype=np.float32).reshape(shape) + 1) * (k + 1)
        for t, token in enumerate(tokens):
            s = s / 2 + np.float32((token + 1) * (position + t + 1)) * weight
        out[name] = s
    return out


def toy_logits(state: dict, position: int) -> np.ndarray:
    return np.float32(sum(float(s.sum()) for s in state.values()) + position) + np.arange(VOCAB, dtype=np.float32)


class ToyPrefill:
    """A prefill engine: reads what is bound to it, writes present.* and logits (toy_fold)."""

    def __init__(self, lib: HostCudaLib):
        self.lib, self.bound, self.runs = lib, {}, 0

    def bind(self, name, ptr, shape=None):
        self.bound[name] = (ptr, shape)

    def run(self, stream, what):
        self.lib.calls.append(("engine", (what, stream)))
        n, T = self.bound["input_ids"][1]
        assert self.bound["lengths"][1] == self.bound["position"][1] == (n,)
        ids = _view(self.bound["input_ids"][0], (n, T), np.int64)
        lengths = _view(self.bound["lengths"][0], (n,), np.int64)
        position = _view(self.bound["position"][0], (n,), np.int64)
        past = {name: _view(self.bound[f"past.{name}"][0], (n, *shape), np.float32) for name, shape in SHAPES.items()}
        for name, shape in SHAPES.items():
            assert self.bound[f"past.{name}"][1] == (n, *shape)
        present = {name: _view(self.bound[f"present.{name}"][0], (n, *shape), np.float32)
                   for name, shape in SHAPES.items()}
        logits = _view(self.bound["logits"][0], (n, VOCAB), np.float32)
        for b in range(n):
            state = toy_fold({name: past[name][b] for name in SHAPES}, ids[b, :lengths[b]], int(position[b]))
            for name in SHAPES:
                present[name][b] = state[name]
            logits[b] = toy_logits(state, int(position[b] + lengths[b]))
        self.runs += 1


@pytest.fixture
def backend():
    cuda = CudaRuntime.__new__(CudaRuntime)  # without loading libcudart
    cuda.lib = HostCudaLib()
    b = TrtBackend.__new__(TrtBackend)
    b._graphs, b._buffers, b._stream, b._closed = {}, [], None, False
    b._cuda, b._decode = cuda, None
    b.num_slots, b.max_batch, b.max_seq, b.vocab_size = 4, 4, 12, VOCAB
    b.state_names, b._shapes = list(SHAPES), dict(SHAPES)
    f32 = np.dtype(np.float32)
    b._allocate({"past.0.s": f32, "past.1.s": f32, "logits": f32},
                {"past.0.s": f32, "past.1.s": f32, "present.0.s": f32, "present.1.s": f32, "logits": f32})
    b._prefill = ToyPrefill(cuda.lib)
    yield b
    b.close()


def _padded(rows):
    ids = np.full((len(rows), max(max(map(len, rows)), 1)), VOCAB - 1, np.int64)  # padding: a real token
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, np.array([len(r) for r in rows], np.int64)


def _state(seed):
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(-8, 8, shape) / 4).astype(np.float32) for name, shape in SHAPES.items()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


ZERO = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
A, B, C = [1, 4, 2, 0, 3, 3, 1, 2, 4, 0, 1], [2, 2, 4, 1, 0], [3, 0, 0, 1, 4, 2, 1]


def test_continued_prefill_gathers_from_each_slots_pool_and_leaves_others_alone(backend):
    """Slot 1 a bystander; A's first 3 tokens into slot 3, all of B into slot 0; slot 0 moved to
    the other pool; junk in slot 2. Then one call over slots [3, 2, 0] (not a run, mixed
    parities): A continues at position 3, C starts fresh in slot 2 (its junk ignored), B adds
    no token (its state passes through). Each equals the toy model's one-shot fold."""
    b, lib = backend, backend._cuda.lib
    bystander = _state(1)
    b.set_state(1, bystander)
    ids, lengths = _padded([A[:3], B])
    logits = b.prefill(ids, lengths, [3, 0])
    np.testing.assert_array_equal(logits[1], toy_logits(toy_fold(ZERO, B, 0), len(B)))
    b.permute_slots([0])  # slot 0's state moves to the pool it was not in
    b.set_state(2, _state(2))
    assert b._parity[0] != b._parity[3], "the call below should gather from both pools"
    b_state = b.get_state(0)

    lib.calls.clear()
    ids, lengths = _padded([A[3:], C, []])
    logits = b.prefill(ids, lengths, [3, 2, 0], [3, 0, len(B)])

    assert _same(b.get_state(3), toy_fold(ZERO, A, 0))
    assert _same(b.get_state(2), toy_fold(ZERO, C, 0))
    assert _same(b.get_state(0), b_state), "a row of length 0 passes its state through bit for bit"
    assert _same(b.get_state(1), bystander), "a slot not named keeps its state"
    np.testing.assert_array_equal(logits[:2], [toy_logits(toy_fold(ZERO, A, 0), len(A)),
                                               toy_logits(toy_fold(ZERO, C, 0), len(C))])
    assert not lib.named("cudaMemcpy") and not lib.named("cudaMemset"), "all on the backend's stream"
    for name in ("cudaMemcpyAsync", "cudaMemsetAsync"):
        assert {args[-1] for args in lib.named(name)} == {b._stream}


def test_every_row_is_read_before_any_slot_is_written(backend):
    """Device copies into the past staging rows all come before the engine runs; copies into
    the pools all after, and only into the named slots' rows."""
    b, lib = backend, backend._cuda.lib
    b.prefill(*_padded([A[:4], C[:2], B[:1]]), [0, 1, 2])
    b.permute_slots([1, 0])  # slots 0 and 1 swap: both in the other pool now
    lib.calls.clear()
    b.prefill(*_padded([A[4:], C[2:]]), [1, 0], [4, 2])

    def rows_of(buffers):
        return {(buf.row_ptr(r), r) for buf in buffers for r in range(buf.shape[0])}

    past = {ptr for ptr, _ in rows_of(b._prefill_past.values())}
    pools = {ptr: row for ptr, row in rows_of([p[n] for p in b._pools for n in b.state_names])}
    engine = next(i for i, (name, _) in enumerate(lib.calls) if name == "engine")
    copies = [(i, args) for i, (name, args) in enumerate(lib.calls) if name == "cudaMemcpyAsync" and args[3] == D2D]
    into_past = [i for i, args in copies if args[0] in past]
    into_pools = [pools[args[0]] for i, args in copies if args[0] in pools]
    assert len(into_past) == 2 * len(b.state_names) and max(into_past) < engine
    assert sorted(into_pools) == sorted([1, 0] * len(b.state_names))
    assert min(i for i, args in copies if args[0] in pools) > engine
    assert _same(b.get_state(1), toy_fold(ZERO, A, 0)) and _same(b.get_state(0), toy_fold(ZERO, C, 0))
    assert _same(b.get_state(2), toy_fold(ZERO, B[:1], 0))


def test_fresh_rows_start_from_zeros_whatever_the_slot_held(backend):
    """Position 0 starts from zeros, neither from the slot's state nor from what the staging
    rows held after the previous (continuing) call."""
    b = backend
    for slot in range(4):
        b.set_state(slot, _state(10 + slot))
    b.prefill(*_padded([[1], [2], [3], [0]]), [0, 1, 2, 3], [5, 5, 5, 5])
    assert _same(b.get_state(1), toy_fold(_state(11), [2], 5))
    kept = b.get_state(1)
    b.prefill(*_padded([C, A, B]), [2, 0, 3])
    for slot, row in ((2, C), (0, A), (3, B)):
        assert _same(b.get_state(slot), toy_fold(ZERO, row, 0)), slot
    assert _same(b.get_state(1), kept)


def test_chunked_ingestion_equals_one_prefill(backend):
    """runtime.ingest over the backend, 3 tokens a call: each call continues the slots from
    what the previous one left, and the result equals the one-shot fold."""
    from linexport.runtime.ingest import ingest

    b = backend
    seen = []
    prefill = b.prefill
    b.prefill = lambda ids, lengths, slots, positions=None: (seen.append(ids.shape[1]),
                                                             prefill(ids, lengths, slots, positions))[1]
    logits = ingest(b, [A, C], [3, 1], [0, 0], chunk=3)
    assert max(seen) == 3 and len(seen) == 4
    assert _same(b.get_state(3), toy_fold(ZERO, A, 0)) and _same(b.get_state(1), toy_fold(ZERO, C, 0))
    np.testing.assert_array_equal(logits, [toy_logits(toy_fold(ZERO, A, 0), len(A)),
                                           toy_logits(toy_fold(ZERO, C, 0), len(C))])


def test_a_prefill_past_the_profile_says_how_to_chunk(backend):
    ids = np.zeros((1, 13), np.int64)
    with pytest.raises(LinexportError, match="1..12 tokens.*chunks of at most 12 tokens"):
        backend.prefill(ids, [13], [0])
    with pytest.raises(LinexportError, match="positions >= 0"):
        backend.prefill(ids[:, :3], [3], [0], [-1])
    assert backend._prefill.runs == 0
