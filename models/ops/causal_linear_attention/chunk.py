"""Causal linear attention, the chunked parallel form: linear in T, nothing of size T×T.

It takes feature-mapped q, k in ``[B, H, T, D]`` and carries one fp32 state tensor. Normalised
(the default): ``[B, H, Dk, Dv + 1]``, the numerator ``S = Σ k vᵀ`` with the normaliser
``z = Σ k`` as its last column (append a ones column to v and z falls out of the same product),
and ``o = qᵀS / (qᵀz + eps)``. Unnormalised (``normalize=False``): ``[B, H, Dk, Dv]``, just S,
and ``o = qᵀS``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunk_causal_linear_attention(q, k, v, eps: float, chunk_size: int = 64, initial_state=None,
                                  normalize: bool = True):
    """q, k [B, H, T, Dk], v [B, H, T, Dv]; initial_state [B, H, Dk, Dv + 1] (normalised) or
    [B, H, Dk, Dv] (``normalize=False``; eps unused), or None.

    Inside a chunk of C tokens: masked C×C products. Across chunks: the state before each
    chunk is an exclusive prefix sum of per-chunk ``kᵀ[v|1]``. Nothing of size T×T.
    Zero rows of k contribute nothing, which is how padded positions are kept out.
    Returns (o [B, H, T, Dv] in v's dtype, final state in initial_state's layout, fp32; fp64 for
    fp64 v).
    """
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    C = chunk_size
    # fp32 for fp16/bf16/fp32 activations (the state is fp32); fp64 stays fp64, so the custom
    # op's gradients can be checked numerically (op.py).
    out_dtype, dtype = v.dtype, torch.promote_types(v.dtype, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    # [B, H, T, Dv+1]: the ones column makes z the state's last column (normalised form only)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1) if normalize else v
    W = v1.shape[-1]
    pad = (-T) % C
    if pad:
        q, k, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v1))
    N = (T + pad) // C
    q = q.view(B, H, N, C, Dk)
    k = k.view(B, H, N, C, Dk)
    v1 = v1.view(B, H, N, C, W)

    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, N, C, C]
    u = scores @ v1  # [B, H, N, C, W]

    chunk_kv = k.transpose(-1, -2) @ v1  # [B, H, N, Dk, W]
    inclusive = chunk_kv.cumsum(dim=2)
    before = inclusive - chunk_kv  # state before each chunk (exclusive prefix)
    if initial_state is not None:
        before = before + initial_state.to(dtype).unsqueeze(2)
    u = u + q @ before

    o = u[..., :Dv] / (u[..., Dv:] + eps) if normalize else u
    o = o.reshape(B, H, N * C, Dv)[:, :, :T]
    final = inclusive[:, :, -1]
    if initial_state is not None:
        final = final + initial_state.to(dtype)
    return o.to(out_dtype), final
