"""Causal linear attention, the recurrent form: one token against the fp32 state.

q, k (feature-mapped, non-negative) and v carry no time axis; the state is
``[B, H, Dk, Dv + 1]``: the numerator ``S = Σ k vᵀ`` with the normaliser ``z = Σ k`` as its
last column (chunk.py has the same layout).
"""

from __future__ import annotations

import torch


def step_causal_linear_attention(q, k, v, state, eps: float):
    """One token: q, k [B, H, Dk], v [B, H, Dv], state [B, H, Dk, Dv + 1] fp32.

    Returns (o [B, H, Dv] in v's dtype, new state)."""
    Dv = v.shape[-1]
    dtype = torch.promote_types(v.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    v1 = torch.cat([v.to(dtype), torch.ones_like(v[..., :1], dtype=dtype)], dim=-1)
    state = state.to(dtype) + k.to(dtype).unsqueeze(-1) * v1.unsqueeze(-2)
    u = torch.einsum("bhd,bhde->bhe", q.to(dtype), state)
    o = u[..., :Dv] / (u[..., Dv:] + eps)
    return o.to(v.dtype), state
