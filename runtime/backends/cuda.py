"""The few CUDA runtime calls the GPU backends need, through ctypes (no torch, no cupy).

libcudart comes with onnxruntime-gpu / TensorRT installs. Used only on machines with a GPU;
never imported at ``import linexport.runtime``.
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

    def memset(self, ptr: int, nbytes: int):
        self.check(self.lib.cudaMemset(ctypes.c_void_p(ptr), 0, ctypes.c_size_t(nbytes)), "cudaMemset")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value

    def sync(self, stream: int):
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def capture(self, stream: int, launch) -> int:
        """Records what ``launch()`` enqueues on ``stream`` into an executable CUDA graph."""
        self.check(self.lib.cudaStreamBeginCapture(ctypes.c_void_p(stream), _CAPTURE_THREAD_LOCAL),
                   "cudaStreamBeginCapture")
        launch()
        graph = ctypes.c_void_p()
        self.check(self.lib.cudaStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph)),
                   "cudaStreamEndCapture")
        exe = ctypes.c_void_p()
        self.check(self.lib.cudaGraphInstantiate(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)),
                   "cudaGraphInstantiate")
        return exe.value

    def launch_graph(self, exe: int, stream: int):
        self.check(self.lib.cudaGraphLaunch(ctypes.c_void_p(exe), ctypes.c_void_p(stream)), "cudaGraphLaunch")


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

    def read(self, rows: int | None = None, row: int | None = None) -> np.ndarray:
        if row is not None:
            out = np.empty(self.shape[1:], self.dtype)
            self.cuda.memcpy(out.ctypes.data, self.row_ptr(row), self.row_bytes, D2H)
            return out
        rows = self.shape[0] if rows is None else rows
        out = np.empty((rows, *self.shape[1:]), self.dtype)
        self.cuda.memcpy(out.ctypes.data, self.ptr, out.nbytes, D2H)
        return out

    def write_row(self, row: int, value: np.ndarray):
        value = np.ascontiguousarray(value, dtype=self.dtype)
        self.cuda.memcpy(self.row_ptr(row), value.ctypes.data, self.row_bytes, H2D)

    def gather_rows_into(self, dst: DeviceArray, order, stream: int | None = None):
        """dst row i = self row ``order[i]``; rows past len(order) are copied unchanged."""
        for i, j in enumerate(order):
            self.cuda.memcpy(dst.row_ptr(i), self.row_ptr(j), self.row_bytes, D2D, stream)
        rest = self.shape[0] - len(order)
        if rest:
            self.cuda.memcpy(dst.row_ptr(len(order)), self.row_ptr(len(order)), rest * self.row_bytes, D2D, stream)

    def __del__(self):
        try:
            self.cuda.free(self.ptr)
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
    raise LinexportError("could not load the CUDA runtime (libcudart): the GPU backends need a CUDA "
                         "install (pip install onnxruntime-gpu[cuda] or nvidia-cuda-runtime)")
