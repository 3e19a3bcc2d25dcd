"""Oracles of GAU / FLASH mixed-chunk attention, from its definition, token by token; the
tests run them in fp64. Slow on purpose.
"""

from __future__ import annotations

import math

import torch


def naive_gau_attention_fn(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The quadratic attention function of GAU: "relu2" is relu(x)² (Hua et al.), "laplace" is
    the Laplace function 0.5·(1 + erf((x − μ) / (σ√2))), μ = √½, σ = √(1/4π) (Ma et al. 2022)."""
    if kind == "relu2":
        return torch.clamp(x, min=0) * torch.clamp(x, min=0)
    if kind == "laplace":
        mu, sigma = math.sqrt(0.5), math.sqrt(1.0 / (4.0 * math.pi))
        return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))
    raise ValueError(f"unknown attention function {kind!r}")


def naive_mixed_chunk_attention(quad_q, quad_k, lin_q, lin_k, v, bias, chunk_size: int, attn_fn: str):
    """GAU / FLASH causal mixed-chunk attention from its definition, token by token.

    quad_q, quad_k, lin_q, lin_k [B, T, S]; v [B, T, E]; bias [C, C] indexed by (query offset,
    key offset) inside a chunk. Token t in chunk c = t // C attends:
      - quadratically to keys j of its own chunk with j <= t: attn_fn(q_t·k_j / C + bias) v_j
      - linearly to every key j of a completed earlier chunk: (lin_q_t · lin_k_j) v_j / C
    Returns out [B, T, E].
    """
    B, T, _ = quad_q.shape
    C = chunk_size
    out = torch.zeros(B, T, v.shape[-1], dtype=v.dtype)
    for t in range(T):
        start = (t // C) * C
        for j in range(start, t + 1):
            score = (quad_q[:, t] * quad_k[:, j]).sum(-1) / C + bias[t - start, j - start]
            out[:, t] += naive_gau_attention_fn(score, attn_fn)[:, None] * v[:, j]
        for j in range(start):
            out[:, t] += (lin_q[:, t] * lin_k[:, j]).sum(-1)[:, None] * v[:, j] / C
    return out


def naive_mixed_chunk_state(quad_k, lin_k, v, chunk_size: int, length: int):
    """The exact recurrent state of mixed-chunk attention after the first ``length`` tokens of
    one sequence, from its definition (docs/DESIGN.md, "The math, once"): quad_k, lin_k [T, S]; v [T, E].

    Returns (lin_kv [S, E] = Σ lin_k_j v_jᵀ / C over the tokens before the last C, k_buf [C, 2S]
    and v_buf [C, E]: the ring of the last C tokens, token j at row j % C as (quad_k_j | lin_k_j)
    and v_j, rows of no token (length < C) zero).
    """
    C = chunk_size
    S, E = quad_k.shape[-1], v.shape[-1]
    lin_kv = torch.zeros(S, E, dtype=v.dtype)
    k_buf = torch.zeros(C, 2 * S, dtype=v.dtype)
    v_buf = torch.zeros(C, E, dtype=v.dtype)
    for j in range(length):
        if j < length - C:
            lin_kv += torch.outer(lin_k[j], v[j]) / C
        else:
            k_buf[j % C] = torch.cat([quad_k[j], lin_k[j]])
            v_buf[j % C] = v[j]
    return lin_kv, k_buf, v_buf
