"""Lifetimes of the CUDA objects the GPU backends create, and which stream their copies use.

These tests drive runtime/backends/cuda.py and TrtBackend's buffer/graph bookkeeping through
a FAKE CUDA runtime library: an object that records every call and hands out made-up handles.
It runs no kernels and moves no data, so it checks bookkeeping only (which handles are kept,
which are destroyed, once, in what order; which stream a copy is queued on), never a result a
GPU would compute. TensorRT numerics are checked on a real GPU in test_trt_backend.py.
"""

import ctypes

import numpy as np
import pytest

from linexport.errors import LinexportError
from linexport.runtime.backends.cuda import D2D, CudaRuntime
from linexport.runtime.backends.trt import TrtBackend

_OUT_ARG = {"cudaMalloc": 0, "cudaStreamCreate": 0, "cudaGraphInstantiate": 0, "cudaStreamEndCapture": 1}


def _value(arg):
    obj = getattr(arg, "_obj", arg)  # ctypes.byref(x) -> x
    return obj.value if isinstance(obj, ctypes._SimpleCData) else obj


class FakeCudaLib:
    """Records (function name, argument values) per call; every call succeeds. Functions that
    return a handle through a pointer argument get a fresh fake one."""

    def __init__(self):
        self.calls, self._next = [], 0x1000

    def __getattr__(self, name):
        if not name.startswith("cuda"):
            raise AttributeError(name)

        def call(*args):
            if name in _OUT_ARG:
                self._next += 0x100
                args[_OUT_ARG[name]]._obj.value = self._next
            self.calls.append((name, tuple(_value(a) for a in args)))
            return 0

        return call

    def named(self, name):
        return [args for n, args in self.calls if n == name]


@pytest.fixture
def cuda():
    rt = CudaRuntime.__new__(CudaRuntime)  # without loading libcudart
    rt.lib = FakeCudaLib()
    return rt


def test_capture_keeps_the_graph_and_destroy_releases_both(cuda):
    stream = cuda.stream()
    graph = cuda.capture(stream, lambda: None)
    (_, captured), = cuda.lib.named("cudaStreamEndCapture")
    (exe, instantiated_from, _), = cuda.lib.named("cudaGraphInstantiate")
    assert (graph.graph, graph.exe) == (captured, exe) and instantiated_from == captured
    graph.destroy()
    assert cuda.lib.named("cudaGraphExecDestroy") == [(exe,)]
    assert cuda.lib.named("cudaGraphDestroy") == [(captured,)]
    graph.destroy()  # idempotent
    assert len(cuda.lib.named("cudaGraphExecDestroy")) == len(cuda.lib.named("cudaGraphDestroy")) == 1


def test_capture_ends_even_when_the_launch_fails(cuda):
    def launch():
        raise LinexportError("TensorRT decode failed")

    with pytest.raises(LinexportError, match="decode failed"):
        cuda.capture(cuda.stream(), launch)
    assert len(cuda.lib.named("cudaStreamEndCapture")) == 1  # the stream is not left capturing


def _backend(cuda, num_slots=3) -> TrtBackend:
    """A TrtBackend with its device side allocated through ``cuda``, without TensorRT engines."""
    b = TrtBackend.__new__(TrtBackend)
    b._graphs, b._buffers, b._stream, b._closed = {}, [], None, False
    b._cuda, b._prefill, b._decode = cuda, None, None
    b.num_slots, b.max_batch, b.max_seq, b.vocab_size = num_slots, num_slots, 8, 5
    b.state_names, b._shapes = ["0.s", "1.s"], {"0.s": (2, 3), "1.s": (4,)}
    f32 = np.dtype(np.float32)
    b._allocate({"past.0.s": f32, "past.1.s": f32, "logits": f32},
                {"past.0.s": f32, "past.1.s": f32, "present.0.s": f32, "present.1.s": f32, "logits": f32})
    return b


def test_close_destroys_graphs_frees_buffers_then_the_stream(cuda):
    b = _backend(cuda)
    b._staging_pools()
    for key in (("run", 0, 3, 0), ("run", 0, 3, 1), ("staged", 2)):
        b._graphs[key] = cuda.capture(b._stream, lambda: None)
    graphs = [(g.graph, g.exe) for g in b._graphs.values()]
    allocated = [args[0] for args in cuda.lib.named("cudaMalloc")]
    # pools, staging, decode io (ids, positions, logits), prefill io (ids, lengths, positions,
    # logits, past and present per state)
    assert len(allocated) == len(b._buffers) == 2 * 2 + 2 * 2 + 3 + 4 + 2 * 2
    stream = b._stream

    b.close()
    assert sorted(a[0] for a in cuda.lib.named("cudaGraphExecDestroy")) == sorted(e for _, e in graphs)
    assert sorted(a[0] for a in cuda.lib.named("cudaGraphDestroy")) == sorted(g for g, _ in graphs)
    assert sorted(a[0] for a in cuda.lib.named("cudaFree")) == sorted(allocated)
    assert cuda.lib.named("cudaStreamDestroy") == [(stream,)]
    names = [n for n, _ in cuda.lib.calls]
    assert names.index("cudaStreamSynchronize") < names.index("cudaGraphExecDestroy")
    assert names[-1] == "cudaStreamDestroy"  # after everything queued on it is gone

    before = len(cuda.lib.calls)
    b.close()
    b.__del__()
    assert len(cuda.lib.calls) == before, "a second close must release nothing twice"
    with pytest.raises(LinexportError, match="was closed"):
        b.decode([0], [1], [0])


def test_with_block_closes(cuda):
    with _backend(cuda) as b:
        stream = b._stream
    assert cuda.lib.named("cudaStreamDestroy") == [(stream,)]


def test_copy_slot_runs_on_the_backend_stream(cuda):
    b = _backend(cuda)
    b._parity[:] = [1, 0, 0]  # slot 0's state in pool B
    cuda.lib.calls.clear()
    b.copy_slot(0, 2)
    assert cuda.lib.named("cudaMemcpy") == [], "nothing on the legacy default stream"
    copies = cuda.lib.named("cudaMemcpyAsync")
    assert len(copies) == len(b.state_names)
    for (dst, src, nbytes, kind, stream), name in zip(copies, b.state_names):
        src_pool, dst_pool = b._pools[1][name], b._pools[b._parity[2]][name]
        assert (dst, src, nbytes, kind, stream) == (dst_pool.row_ptr(2), src_pool.row_ptr(0),
                                                    src_pool.row_bytes, D2D, b._stream)


def test_device_array_free_is_idempotent(cuda):
    from linexport.runtime.backends.cuda import DeviceArray

    a = DeviceArray(cuda, (2, 3), np.float32)
    ptr = a.ptr
    a.free()
    a.free()
    del a
    assert cuda.lib.named("cudaFree") == [(ptr,)]


class FakeEngine:
    """Stands in for a TensorRT execution context: records the addresses and shapes bound and
    each enqueue. Computes nothing (see the module docstring)."""

    def __init__(self):
        self.binds, self.runs = {}, []

    def bind(self, name, ptr, shape=None):
        self.binds[name] = (ptr, shape)

    def run(self, stream, what):
        self.runs.append(dict(self.binds))


def test_decode_binds_only_the_named_rows_and_keys_graphs_by_binding(cuda):
    """Bookkeeping of TrtBackend.decode: which rows of which pool each CUDA graph binds, one
    graph per (start, n, parity) or staged n, replayed without recapture, parities flipped or
    reset; the gather path's copies on the backend stream. No data moves here."""
    b = _backend(cuda, num_slots=4)
    b._decode = FakeEngine()
    A, B = b._pools
    name = "0.s"

    def launches():
        return [args[0] for args in cuda.lib.named("cudaGraphLaunch")]

    b.decode([0, 1, 2], [1, 1, 1], [0, 0, 0])
    assert list(b._graphs) == [("run", 0, 3, 0)]
    assert b._decode.binds[f"past.{name}"] == (A[name].row_ptr(0), (3, 2, 3))
    assert b._decode.binds[f"present.{name}"][0] == B[name].row_ptr(0)
    assert b._parity.tolist() == [1, 1, 1, 0]
    b.decode([0, 1, 2], [1, 1, 1], [1, 1, 1])  # the other parity: the pools the other way round
    assert b._decode.binds[f"past.{name}"][0] == B[name].row_ptr(0)
    assert b._decode.binds[f"present.{name}"][0] == A[name].row_ptr(0)
    assert b._parity.tolist() == [0, 0, 0, 0]
    runs = len(b._decode.runs)
    b.decode([0, 1, 2], [1, 1, 1], [2, 2, 2])  # a known binding: replayed, not captured again
    assert len(b._decode.runs) == runs and len(b._graphs) == 2
    assert launches()[-1] == b._graphs[("run", 0, 3, 0)].exe
    assert b._decode.binds[f"past.{name}"][0] == A[name].row_ptr(0)  # context rebound to match it

    b.decode([1], [1], [3])  # a run that starts past slot 0
    assert ("run", 1, 1, 1) in b._graphs
    assert b._decode.binds[f"past.{name}"] == (B[name].row_ptr(1), (1, 2, 3))
    assert b._parity.tolist() == [1, 0, 1, 0]

    cuda.lib.calls.clear()
    b.decode([1, 2], [1, 1], [4, 3])  # mixed parities: the staged graph
    past, present = b._staging
    assert ("staged", 2) in b._graphs
    assert b._decode.binds[f"past.{name}"] == (past[name].row_ptr(0), (2, 2, 3))
    assert b._decode.binds[f"present.{name}"][0] == present[name].row_ptr(0)
    rows = A[name].row_bytes
    d2d = [(dst, src, n) for dst, src, n, kind, stream in cuda.lib.named("cudaMemcpyAsync")
           if kind == D2D and stream == b._stream and n == rows]
    assert (past[name].row_ptr(1), B[name].row_ptr(2), rows) in d2d  # gather: slot 2 (pool B) -> row 1
    assert (past[name].row_ptr(0), A[name].row_ptr(1), rows) in d2d  # slot 1 (pool A) -> row 0
    assert (A[name].row_ptr(1), present[name].row_ptr(0), 2 * rows) in [
        (dst, src, n) for dst, src, n, kind, stream in cuda.lib.named("cudaMemcpyAsync") if kind == D2D]
    assert b._parity.tolist() == [1, 0, 0, 0]
    assert cuda.lib.named("cudaMemcpy") == []
