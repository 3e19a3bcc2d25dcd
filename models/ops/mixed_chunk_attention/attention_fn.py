"""What mixed-chunk attention shares between its forms: the quadratic attention function and
the compute dtype."""

from __future__ import annotations

import math

import torch

_LAPLACE_MU = math.sqrt(0.5)
_LAPLACE_STD = math.sqrt((4 * math.pi) ** -1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 activations (the state is fp32), fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def attention_fn(x: torch.Tensor, kind: str) -> torch.Tensor:
    """"relu2": relu(x)²; "laplace": the Laplace-CDF function of Ma et al. 2022 (MEGA)."""
    if kind == "relu2":
        return torch.relu(x) ** 2
    if kind == "laplace":
        return 0.5 * (1.0 + torch.erf((x - _LAPLACE_MU) / (_LAPLACE_STD * math.sqrt(2.0))))
    raise ValueError(f"unknown attention function {kind!r}")
