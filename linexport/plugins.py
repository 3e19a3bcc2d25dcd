"""Find and load the native libraries built from plugins/ (see the top-level CMakeLists.txt).

Two libraries, both built by ``cmake -S . -B build && cmake --build build -j2``:

* ``liblinexport_trt_plugin.so``: the TensorRT plugins. Give it to TensorRT with
  :func:`load_trt_plugins` (the registry's ``load_library``), ``trtexec --dynamicPlugins=PATH``
  or ``--staticPlugins=PATH``, or Polygraphy's ``--plugins PATH``.
* ``liblinexport_kernels.so``: the CUDA kernels alone behind a C API, for :class:`CausalLinearAttentionKernels`
  (ctypes, CUDA tensors from torch) and the GPU harness in ``benchmarks/kernels/``.

Each is looked up in this order: an explicit path, the environment variable
(``LINEXPORT_PLUGIN_LIB`` / ``LINEXPORT_KERNELS_LIB``, a file or a folder), then ``build/lib``
and ``build`` of the source checkout, then ``lib/`` next to this package. Nothing here imports
torch or TensorRT at import time.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from linexport.contract import op_spec
from linexport.errors import LinexportError

PLUGIN_LIBRARY = "liblinexport_trt_plugin.so"
KERNELS_LIBRARY = "liblinexport_kernels.so"
PLUGIN_ENV = "LINEXPORT_PLUGIN_LIB"
KERNELS_ENV = "LINEXPORT_KERNELS_LIB"
BUILD_HINT = (
    "build it with `cmake -S . -B build -DTensorRT_ROOT=DIR && cmake --build build -j2` in the "
    "linexport source tree (see plugins/causal_linear_attention/README.md)"
)

# (name, version, namespace) of the plugin's creator in TensorRT's registry
PLUGIN_CREATOR = (op_spec.TRT_PLUGIN_NAME, op_spec.TRT_PLUGIN_VERSION, op_spec.TRT_PLUGIN_NAMESPACE)

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_ROOT = _PACKAGE_DIR.parent


def _search_dirs() -> list[Path]:
    return [_SOURCE_ROOT / "build" / "lib", _SOURCE_ROOT / "build", _PACKAGE_DIR / "lib"]


def _find(name: str, env: str, path: str | os.PathLike | None) -> Path:
    if path is not None:
        p = Path(path)
        p = p / name if p.is_dir() else p
        if not p.is_file():
            raise LinexportError(f"expected the library {name} at {p}, found nothing there")
        return p
    if os.environ.get(env):
        p = Path(os.environ[env])
        p = p / name if p.is_dir() else p
        if not p.is_file():
            raise LinexportError(f"{env}={os.environ[env]} names no file {name}: fix or unset {env}")
        return p
    for d in _search_dirs():
        if (d / name).is_file():
            return d / name
    looked = ", ".join(str(d) for d in _search_dirs())
    raise LinexportError(f"{name} not found (looked in ${env}, {looked}): {BUILD_HINT}")


def find_plugin_library(path: str | os.PathLike | None = None) -> Path:
    """Path of the TensorRT plugin library (raises LinexportError with the fix if absent)."""
    return _find(PLUGIN_LIBRARY, PLUGIN_ENV, path)


def find_kernels_library(path: str | os.PathLike | None = None) -> Path:
    """Path of the CUDA kernels library (raises LinexportError with the fix if absent)."""
    return _find(KERNELS_LIBRARY, KERNELS_ENV, path)


def load_trt_plugins(registry, path: str | os.PathLike | None = None) -> Path:
    """Load the plugin library into a TensorRT plugin registry (``trt.get_plugin_registry()``).

    Works with ``tensorrt``, ``tensorrt_lean`` and ``tensorrt_dispatch`` alike: the library links
    no libnvinfer. Returns the path loaded.
    """
    lib = find_plugin_library(path)
    if registry.get_creator(*PLUGIN_CREATOR) is not None:
        return lib  # already there (loaded before, or registered itself via a plain dlopen)
    handle = registry.load_library(str(lib))
    if handle is None or registry.get_creator(*PLUGIN_CREATOR) is None:
        raise LinexportError(f"TensorRT could not load the plugin library {lib}: see TensorRT's log above")
    return lib


# --- the kernels through ctypes ----------------------------------------------------------------

# LinexportDType in causal_linear_attention.h
_DTYPE_CODES = {"torch.float32": 0, "torch.float16": 1, "torch.bfloat16": 2}
_ABI_VERSION = 2  # 2: the normalize field


class _Params(ctypes.Structure):
    """Mirror of LinexportCausalLinearAttentionParams (causal_linear_attention.h)."""

    _fields_ = [
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("o", ctypes.c_void_p),
        ("past_state", ctypes.c_void_p),
        ("present_state", ctypes.c_void_p),
        ("lengths", ctypes.c_void_p),
        *[(f"{t}_stride_{d}", ctypes.c_int64) for t in "qkvo" for d in "bth"],
        ("batch", ctypes.c_int32),
        ("seq_len", ctypes.c_int32),
        ("num_heads", ctypes.c_int32),
        ("head_dim_k", ctypes.c_int32),
        ("head_dim_v", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("eps", ctypes.c_float),
        ("normalize", ctypes.c_int32),
    ]


class CausalLinearAttentionKernels:
    """The CUDA kernels of plugins/causal_linear_attention, called on torch CUDA tensors.

    >>> kernels = CausalLinearAttentionKernels()
    >>> o, state = kernels.forward(q, k, v, past_state, eps=1e-6)   # q, k [B, T, H, Dk], v [B, T, H, Dv]
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = find_kernels_library(path)
        self._lib = ctypes.CDLL(str(self.path))
        self._lib.linexport_cla_abi_version.restype = ctypes.c_int32
        got = self._lib.linexport_cla_abi_version()
        if got != _ABI_VERSION:
            raise LinexportError(f"{self.path} has kernel ABI {got}, expected {_ABI_VERSION}: rebuild it")
        self._lib.linexport_cla_check_params.restype = ctypes.c_char_p
        self._lib.linexport_cla_check_params.argtypes = [ctypes.POINTER(_Params)]
        self._lib.linexport_cla_forward.restype = ctypes.c_int
        self._lib.linexport_cla_forward.argtypes = [ctypes.POINTER(_Params), ctypes.c_void_p]

    def forward(self, q, k, v, past_state=None, eps: float = 1e-6, lengths=None, out=None, present_state=None,
                normalize: bool = True):
        """Causal linear attention on the current CUDA stream.

        q, k: [B, T, H, Dk] and v: [B, T, H, Dv] (last dim contiguous; float32/float16/bfloat16,
        all one dtype); past_state: [B, H, Dk, W] float32 contiguous or None (zeros), W = Dv + 1
        (``normalize``) or Dv (the unnormalised form); lengths: [B] int32 or None. Returns
        (o [B, T, H, Dv] in v's dtype, present_state fp32).
        """
        import torch  # the caller has it: the arguments are torch tensors

        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        if k.shape != q.shape or tuple(v.shape[:3]) != (B, T, H):
            raise LinexportError(f"expected k like q {tuple(q.shape)} and v [B, T, H, Dv], got k {tuple(k.shape)}, v {tuple(v.shape)}")
        if not (q.dtype == k.dtype == v.dtype) or str(q.dtype) not in _DTYPE_CODES:
            raise LinexportError(f"expected q, k, v of one dtype among float32/float16/bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not t.is_cuda or t.stride(-1) != 1:
                raise LinexportError(f"expected {name} on CUDA with a contiguous last dimension")
        if out is None:
            out = torch.empty(B, T, H, Dv, dtype=v.dtype, device=v.device)
        W = Dv + 1 if normalize else Dv
        if present_state is None:
            present_state = torch.empty(B, H, Dk, W, dtype=torch.float32, device=v.device)
        if past_state is not None and (past_state.dtype != torch.float32 or not past_state.is_contiguous()
                                       or tuple(past_state.shape) != (B, H, Dk, W)):
            raise LinexportError(f"expected past_state float32 contiguous [{B}, {H}, {Dk}, {W}], got {past_state.dtype} {tuple(past_state.shape)}")
        if lengths is not None:
            lengths = lengths.to(device=v.device, dtype=torch.int32).contiguous()
        p = _Params(
            q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), o=out.data_ptr(),
            past_state=None if past_state is None else past_state.data_ptr(),
            present_state=present_state.data_ptr(),
            lengths=None if lengths is None else lengths.data_ptr(),
            batch=B, seq_len=T, num_heads=H, head_dim_k=Dk, head_dim_v=Dv,
            dtype=_DTYPE_CODES[str(q.dtype)], eps=eps, normalize=1 if normalize else 0,
        )
        for name, t in (("q", q), ("k", k), ("v", v), ("o", out)):
            setattr(p, f"{name}_stride_b", t.stride(0))
            setattr(p, f"{name}_stride_t", t.stride(1))
            setattr(p, f"{name}_stride_h", t.stride(2))
        bad = self._lib.linexport_cla_check_params(ctypes.byref(p))
        if bad is not None:
            raise LinexportError(f"causal linear attention kernels: {bad.decode()}")
        stream = torch.cuda.current_stream(v.device).cuda_stream
        err = self._lib.linexport_cla_forward(ctypes.byref(p), ctypes.c_void_p(stream))
        if err != 0:
            raise LinexportError(f"causal linear attention kernels failed with CUDA error {err}")
        return out, present_state
