"""Causal linear attention, the recurrent form: one token against the fp32 state.

q, k (feature-mapped) and v carry no time axis; the state is ``[B, H, Dk, Dv + 1]``: the
numerator ``S = Σ k vᵀ`` with the normaliser ``z = Σ k`` as its last column, or ``[B, H, Dk, Dv]``
(S alone) in the unnormalised form (chunk.py has the same layouts).
"""

from __future__ import annotations

import torch


def step_causal_linear_attention(q, k, v, state, eps: float, normalize: bool = True):
    """One token: q, k [B, H, Dk], v [B, H, Dv], state [B, H, Dk, Dv + 1] fp32 (normalised:
    o = qᵀS / (qᵀz + eps)) or [B, H, Dk, Dv] (``normalize=False``: o = qᵀS, eps unused).

    Returns (o [B, H, Dv] in v's dtype, new state)."""
    Dv = v.shape[-1]
    dtype = torch.promote_types(v.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    v1 = v.to(dtype)
    if normalize:
        v1 = torch.cat([v1, torch.ones_like(v[..., :1], dtype=dtype)], dim=-1)
    state = state.to(dtype) + k.to(dtype).unsqueeze(-1) * v1.unsqueeze(-2)
    u = torch.einsum("bhd,bhde->bhe", q.to(dtype), state)
    o = u[..., :Dv] / (u[..., Dv:] + eps) if normalize else u
    return o.to(v.dtype), state
