"""Naive reference ops: token-by-token loops, run in fp64 by the tests. Slow on purpose.

Layouts follow the op spec (plugins/causal_linear_attention/README.md): heads split out,
``[B, H, T, D]``.
"""

from __future__ import annotations

import math

import torch


def feature_map(x: torch.Tensor, kind: str) -> torch.Tensor:
    """φ: "elu" is elu(x) + 1 (Katharopoulos et al.), "relu" is max(x, 0)."""
    if kind == "elu":
        return torch.nn.functional.elu(x) + 1.0
    if kind == "relu":
        return torch.relu(x)
    raise ValueError(f"unknown feature map {kind!r}")


def naive_causal_linear_attention(q, k, v, eps: float, initial_state=None, lengths=None):
    """Causal normalised linear attention, one token at a time.

    q, k: [B, H, T, Dk], already feature-mapped (non-negative); v: [B, H, T, Dv];
    initial_state: [B, H, Dk, Dv + 1] (numerator S | normaliser z), or None for zeros;
    lengths: [B] (positions >= length leave the state untouched), or None.

        S_t = S_{t-1} + k_t v_tᵀ,  z_t = z_{t-1} + k_t,  o_t = q_tᵀ S_t / (q_tᵀ z_t + eps)

    Returns (o [B, H, T, Dv], final state [B, H, Dk, Dv + 1]), in q's dtype (use fp64).
    """
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    S = torch.zeros(B, H, Dk, Dv, dtype=q.dtype) if initial_state is None else initial_state[..., :Dv].clone().to(q.dtype)
    z = torch.zeros(B, H, Dk, dtype=q.dtype) if initial_state is None else initial_state[..., Dv].clone().to(q.dtype)
    out = torch.zeros(B, H, T, Dv, dtype=q.dtype)
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        for t in range(n):
            S[b] += k[b, :, t, :, None] * v[b, :, t, None, :]
            z[b] += k[b, :, t]
            num = torch.einsum("hd,hde->he", q[b, :, t], S[b])
            den = torch.einsum("hd,hd->h", q[b, :, t], z[b])
            out[b, :, t] = num / (den[:, None] + eps)
    return out, torch.cat([S, z[..., None]], dim=-1)


def naive_softmax_free_causal_attention(q, k, v, eps: float):
    """The same op written as masked quadratic attention: an independent second oracle.

    A = tril(q kᵀ); o = A v / (rowsum(A) + eps). Only for tests at small T.
    """
    scores = torch.einsum("bhid,bhjd->bhij", q, k)
    T = q.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, 0.0)
    return torch.einsum("bhij,bhje->bhie", scores, v) / (scores.sum(-1, keepdim=True) + eps)


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
    one sequence, from its definition (DESIGN.md): quad_k, lin_k [T, S]; v [T, E].

    Returns (lin_kv [S, E] = Σ lin_k_j v_jᵀ / C over the tokens of completed chunks,
    pending [S, E] = the same sum over the current partial chunk, k_buf [C, S] and v_buf [C, E]:
    the partial chunk's quadratic keys and values at rows 0..length % C − 1, other rows zero).
    """
    C = chunk_size
    S, E = quad_k.shape[-1], v.shape[-1]
    done = (length // C) * C  # tokens in completed chunks
    lin_kv = torch.zeros(S, E, dtype=v.dtype)
    pending = torch.zeros(S, E, dtype=v.dtype)
    k_buf = torch.zeros(C, S, dtype=v.dtype)
    v_buf = torch.zeros(C, E, dtype=v.dtype)
    for j in range(length):
        outer = torch.outer(lin_k[j], v[j]) / C
        if j < done:
            lin_kv += outer
        else:
            pending += outer
            k_buf[j - done] = quad_k[j]
            v_buf[j - done] = v[j]
    return lin_kv, pending, k_buf, v_buf


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


def naive_lsh_attention(q, k_hat, v, rotations, n_buckets: int, chunk: int):
    """Causal shared-QK LSH attention from its definition (models/ops/lsh_attention.py), one
    query at a time (use fp64). q, k_hat, v [B, H, T, D]; rotations [H, R, D, n_buckets / 2].

    Round r: bucket_j = argmax([k̂_j R_r; −k̂_j R_r]); rank_j = #{j' < j in bucket_j}. Query i
    attends in round r to {j < i : bucket_j = bucket_i, rank_j >= max(0, (rank_i // chunk − 1)
    · chunk)}; over the union U_i of its rounds' sets (or {i} when U_i is empty) with
    softmax(q_i · k̂_j / √D). Returns o [B, H, T, D]."""
    B, H, T, D = q.shape
    out = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            proj = torch.einsum("td,rdn->rtn", k_hat[b, h], rotations[h].to(k_hat.dtype))
            buckets = torch.cat([proj, -proj], -1).argmax(-1).tolist()  # [R][T]
            ranks = []
            for row in buckets:
                seen = {}
                ranks.append([seen.__setitem__(x, seen.get(x, 0) + 1) or seen[x] - 1 for x in row])
            for i in range(T):
                targets = set()
                for row, rank in zip(buckets, ranks):
                    start = max(0, (rank[i] // chunk - 1) * chunk)
                    targets |= {j for j in range(i) if row[j] == row[i] and rank[j] >= start}
                targets = sorted(targets) or [i]
                scores = k_hat[b, h, targets] @ q[b, h, i] / math.sqrt(D)
                out[b, h, i] = torch.softmax(scores, 0) @ v[b, h, targets]
    return out
