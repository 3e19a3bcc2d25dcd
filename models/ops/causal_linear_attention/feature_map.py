"""The feature map φ of linear attention: model math, applied to q and k before the op.

"elu" (elu + 1) and "relu" keep features non-negative, so the op's normalised form has a
positive normaliser ``φ(q)ᵀ Σ φ(k)``. "identity" and the learnable "elementwise_product"
(``HadamardFeatureMap``) do not; they are meant for the unnormalised form (fla's default), and
with the normalised one they are as ill-conditioned as they are in fla.
"""

from __future__ import annotations

import torch
from torch import nn


def feature_map(x: torch.Tensor, kind: str) -> torch.Tensor:
    """φ without parameters: "elu" is elu(x) + 1 (Katharopoulos et al.), "relu" is max(x, 0),
    "identity" is x."""
    if kind == "elu":
        return torch.nn.functional.elu(x) + 1.0
    if kind == "relu":
        return torch.relu(x)
    if kind == "identity":
        return x
    raise ValueError(f"unknown feature map {kind!r}")


class HadamardFeatureMap(nn.Module):
    """The learnable "elementwise_product" map: ``φ(x) = (W1 x + b1) ⊙ (W2 x + b2)`` over one
    head's features, the same weights for every head (fla's ``HadamardFeatureMap``; q and k
    each have their own). x [..., D] -> [..., D]."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(head_dim, head_dim)
        self.layer2 = nn.Linear(head_dim, head_dim)

    def forward(self, x):
        return self.layer1(x) * self.layer2(x)
