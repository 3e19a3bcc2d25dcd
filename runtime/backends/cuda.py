"""The few CUDA runtime calls the GPU backends need, through ctypes (no torch, no cupy).

libcudart comes with onnxruntime-gpu / TensorRT installs. Used only on machines with a GPU;
never imported at ``import linexport.runtime``.

Lifetimes: what this module creates is released explicitly, never left to process exit. A
``CudaGraph`` keeps both the captured graph and its executable instance and ``destroy()``s
both (cudaGraphExecDestroy, cudaGraphDestroy); a stream from ``stream()`` goes back through
``destroy_stream``; a ``DeviceArray`` ``free()``s its buffer (also on garbage collection).
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from linexport.errors import LinexportError

H2D, D2H, D2D = 1, 2, 3
_CAPTURE_THREAD_LOCAL = 1


class CudaRuntime:
    def __init__(self):
        self.lib = _load()

    def check(self, err: int, what: str):
        if err != 0:
            self.lib.cudaGetErrorString.restype = ctypes.c_char_p
            raise LinexportError(f"{what} failed: CUDA error {err} "
                                 f"({self.lib.cudaGetErrorString(err).decode()})")

    def device_count(self) -> int:
        """CUDA devices visible to this process (0 without a GPU or a driver that fits)."""
        count = ctypes.c_int(0)
        return count.value if self.lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return ptr.value

    def free(self, ptr: int):
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def memcpy(self, dst: int, src: int, nbytes: int, kind: int, stream: int | None = None):
        if stream is None:
            err = self.lib.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind)
        else:
            err = self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                           kind, ctypes.c_void_p(stream))
        self.check(err, "cudaMemcpy")

    def memset(self, ptr: int, nbytes: int, stream: int | None = None):
        """Zeros ``nbytes`` at ``ptr``; on ``stream`` (ordered after the work queued there) if given."""
        if stream is None:
            err = self.lib.cudaMemset(ctypes.c_void_p(ptr), 0, ctypes.c_size_t(nbytes))
        else:
            err = self.lib.cudaMemsetAsync(ctypes.c_void_p(ptr), 0, ctypes.c_size_t(nbytes), ctypes.c_void_p(stream))
        self.check(err, "cudaMemset")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value

    def destroy_stream(self, stream: int):
        self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")

    def sync(self, stream: int):
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def capture(self, stream: int, launch) -> CudaGraph:
        """Records what ``launch()`` enqueues on ``stream`` into an executable CUDA graph."""
        self.check(self.lib.cudaStreamBeginCapture(ctypes.c_void_p(stream), _CAPTURE_THREAD_LOCAL),
                   "cudaStreamBeginCapture")
        graph = ctypes.c_void_p()
        try:
            launch()
        finally:
            # End the capture even if launch() failed: a stream left capturing refuses all work.
            err = self.lib.cudaStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph))
        self.check(err, "cudaStreamEndCapture")
        exe = ctypes.c_void_p()
        err = self.lib.cudaGraphInstantiate(ctypes.byref(exe), graph, ctypes.c_ulonglong(0))
        if err != 0:
            self.lib.cudaGraphDestroy(graph)
            self.check(err, "cudaGraphInstantiate")
        return CudaGraph(self, graph.value, exe.value)

    def launch_graph(self, graph: CudaGraph, stream: int):
        self.check(self.lib.cudaGraphLaunch(ctypes.c_void_p(graph.exe), ctypes.c_void_p(stream)), "cudaGraphLaunch")


class CudaGraph:
    """A captured CUDA graph (``graph``) and its executable instance (``exe``), destroyed together."""

    def __init__(self, cuda: CudaRuntime, graph: int, exe: int):
        self.cuda, self.graph, self.exe = cuda, graph, exe

    def destroy(self):
        """Destroys the instance, then the graph it was made from; a second call does nothing."""
        exe, graph, self.exe, self.graph = self.exe, self.graph, None, None
        if exe is not None:
            self.cuda.check(self.cuda.lib.cudaGraphExecDestroy(ctypes.c_void_p(exe)), "cudaGraphExecDestroy")
        if graph is not None:
            self.cuda.check(self.cuda.lib.cudaGraphDestroy(ctypes.c_void_p(graph)), "cudaGraphDestroy")


class DeviceArray:
    """A device buffer with a numpy shape/dtype; rows are the leading dim."""

    def __init__(self, cuda: CudaRuntime, shape, dtype):
        self.cuda, self.shape, self.dtype = cuda, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.ptr = cuda.malloc(self.nbytes)
        cuda.memset(self.ptr, self.nbytes)

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0]

    def row_ptr(self, i: int) -> int:
        return self.ptr + i * self.row_bytes

    def read(self, rows: int | None = None, row: int | None = None, stream: int | None = None) -> np.ndarray:
        """Host copy of row ``row``, or of rows 0..rows-1 (all by default). On ``stream``, it
        is synchronized before returning (the host array is complete)."""
        if row is not None:
            out = np.empty(self.shape[1:], self.dtype)
            self.cuda.memcpy(out.ctypes.data, self.row_ptr(row), self.row_bytes, D2H, stream)
        else:
            rows = self.shape[0] if rows is None else rows
            out = np.empty((rows, *self.shape[1:]), self.dtype)
            self.cuda.memcpy(out.ctypes.data, self.ptr, out.nbytes, D2H, stream)
        if stream is not None:
            self.cuda.sync(stream)
        return out

    def write_row(self, row: int, value: np.ndarray, stream: int | None = None):
        """Row ``row`` = value (shape = one row). On ``stream``, synchronized before returning,
        so that ``value`` may be freed."""
        value = np.ascontiguousarray(value, dtype=self.dtype)
        if value.nbytes != self.row_bytes:
            raise LinexportError(f"expected a row of shape {self.shape[1:]} ({self.dtype}), got {value.shape}")
        self.cuda.memcpy(self.row_ptr(row), value.ctypes.data, self.row_bytes, H2D, stream)
        if stream is not None:
            self.cuda.sync(stream)

    def copy_rows_to(self, dst: DeviceArray, src_rows, dst_rows, stream: int | None = None):
        """dst row ``dst_rows[i]`` = self row ``src_rows[i]``, device to device; runs of rows
        consecutive on both sides go as one copy. No row may be both read and written."""
        pairs = [(int(a), int(b)) for a, b in zip(src_rows, dst_rows)]
        for (a, b), count in _runs(pairs):
            self.cuda.memcpy(dst.row_ptr(b), self.row_ptr(a), count * self.row_bytes, D2D, stream)

    def zero_rows(self, rows, stream: int | None = None):
        """Rows ``rows`` = zeros; runs of consecutive rows go as one memset."""
        for (r,), count in _runs([(int(r),) for r in sorted(rows)]):
            self.cuda.memset(self.row_ptr(r), count * self.row_bytes, stream)

    def free(self):
        """Frees the device buffer now; a second call (or the later __del__) does nothing."""
        ptr, self.ptr = self.ptr, None
        if ptr is not None:
            self.cuda.free(ptr)

    def __del__(self):
        try:
            self.free()
        except Exception:  # interpreter shutdown: the CUDA library may already be gone
            pass


def _load():
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", ctypes.util.find_library("cudart")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise LinexportError("no GPU here: could not load the CUDA runtime (libcudart), which the GPU "
                         "backends need (a CUDA install, e.g. pip install nvidia-cuda-runtime); use --backend ort")


def _runs(keys: list[tuple]) -> list[tuple[tuple, int]]:
    """(first key, length) of each run of ``keys`` in which every component steps by one."""
    runs, i = [], 0
    while i < len(keys):
        j = i + 1
        while j < len(keys) and keys[j] == tuple(k + 1 for k in keys[j - 1]):
            j += 1
        runs.append((keys[i], j - i))
        i = j
    return runs
