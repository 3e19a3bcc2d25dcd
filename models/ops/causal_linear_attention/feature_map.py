"""The feature map φ of linear attention: model math, applied to q and k before the op.

φ keeps features non-negative, so the op's normaliser ``φ(q)ᵀ Σ φ(k)`` stays positive.
"""

from __future__ import annotations

import torch


def feature_map(x: torch.Tensor, kind: str) -> torch.Tensor:
    """φ: "elu" is elu(x) + 1 (Katharopoulos et al.), "relu" is max(x, 0)."""
    if kind == "elu":
        return torch.nn.functional.elu(x) + 1.0
    if kind == "relu":
        return torch.relu(x)
    raise ValueError(f"unknown feature map {kind!r}")
