"""One error measure and one check record for every comparison linexport makes (verify: ONNX
Runtime vs PyTorch; compare: TensorRT vs ONNX Runtime). numpy only: the runtime uses it too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Two fp32 computations of one graph (or a graph and its model) agree to this relative error.
FP32_REL_TOL = 1e-4


@dataclass
class Check:
    what: str
    abs_err: float
    rel_err: float
    tol: float  # on rel_err

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rel_err)) and self.rel_err <= self.tol


def errors(got, ref) -> tuple[float, float]:
    """(max |got - ref|, max |got - ref| / max |ref|), in float64; infinite when the shapes differ
    (a KV cache of the wrong length must fail, not broadcast)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf"), float("inf")
    diff = float(np.abs(got - ref).max()) if got.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return diff, diff / max(scale, 1e-30)
