"""Oracles of causal linear attention: token-by-token loops and the masked quadratic form,
run in fp64 by the tests. Slow on purpose.

Layouts follow the op spec (plugins/causal_linear_attention/README.md) with heads split out:
``[B, H, T, D]``.
"""

from __future__ import annotations

import torch


def naive_causal_linear_attention(q, k, v, eps: float, initial_state=None, lengths=None, normalize=True):
    """Causal linear attention, one token at a time.

    q, k: [B, H, T, Dk], already feature-mapped; v: [B, H, T, Dv];
    initial_state: [B, H, Dk, Dv + 1] (numerator S | normaliser z; [B, H, Dk, Dv], S alone,
    when not ``normalize``), or None for zeros;
    lengths: [B] (positions >= length leave the state untouched), or None.

        S_t = S_{t-1} + k_t v_tᵀ,  z_t = z_{t-1} + k_t,  o_t = q_tᵀ S_t / (q_tᵀ z_t + eps)
        (not ``normalize``: o_t = q_tᵀ S_t, no z, eps unused)

    Returns (o [B, H, T, Dv], final state in initial_state's layout), in q's dtype (use fp64).
    """
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    S = torch.zeros(B, H, Dk, Dv, dtype=q.dtype) if initial_state is None else initial_state[..., :Dv].clone().to(q.dtype)
    z = torch.zeros(B, H, Dk, dtype=q.dtype) if initial_state is None or not normalize else initial_state[..., Dv].clone().to(q.dtype)
    out = torch.zeros(B, H, T, Dv, dtype=q.dtype)
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        for t in range(n):
            S[b] += k[b, :, t, :, None] * v[b, :, t, None, :]
            z[b] += k[b, :, t]
            num = torch.einsum("hd,hde->he", q[b, :, t], S[b])
            if not normalize:
                out[b, :, t] = num
                continue
            den = torch.einsum("hd,hd->h", q[b, :, t], z[b])
            out[b, :, t] = num / (den[:, None] + eps)
    return out, (torch.cat([S, z[..., None]], dim=-1) if normalize else S)


def naive_softmax_free_causal_attention(q, k, v, eps: float):
    """The same op written as masked quadratic attention: an independent second oracle.

    A = tril(q kᵀ); o = A v / (rowsum(A) + eps). Only for tests at small T.
    """
    scores = torch.einsum("bhid,bhjd->bhij", q, k)
    T = q.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, 0.0)
    return torch.einsum("bhij,bhje->bhie", scores, v) / (scores.sum(-1, keepdim=True) + eps)
