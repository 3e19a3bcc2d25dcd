"""Oracle of causal softmax attention: one query at a time, run in fp64 by the tests."""

from __future__ import annotations

import math

import torch


def naive_causal_softmax_attention(q, k, v):
    """Causal softmax attention from its definition, one query at a time (use fp64).

    q, k, v [B, H, T, D]: o_t = Σ_{j <= t} softmax_j(q_t · k_j / √D) v_j. Returns o [B, H, T, D].
    """
    T, D = q.shape[2], q.shape[3]
    out = torch.zeros_like(v)
    for t in range(T):
        scores = torch.einsum("bhd,bhjd->bhj", q[:, :, t], k[:, :, : t + 1]) / math.sqrt(D)
        weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
        weights = weights / weights.sum(-1, keepdim=True)
        out[:, :, t] = torch.einsum("bhj,bhjd->bhd", weights, v[:, :, : t + 1])
    return out
