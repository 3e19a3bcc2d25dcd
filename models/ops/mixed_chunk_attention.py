"""GAU / FLASH mixed-chunk attention (Hua et al. 2022), causal: a chunked parallel form and a
recurrent step over an exact fixed-size state.

Inside a chunk of C tokens: quadratic attention ``attn_fn(q·k / C + bias[i, j])`` over earlier
positions of the same chunk. Across chunks: linear attention whose state only absorbs a chunk
once it is complete (``Σ lin_k vᵀ / C`` over completed chunks).

The recurrent state of one layer (all fp32):
    lin_kv   [B, S, E]  linear state over completed chunks
    pending  [B, S, E]  Σ lin_k vᵀ / C over the current, partial chunk (folded in at its end)
    k_buf    [B, C, S]  the partial chunk's quadratic keys (row r = offset r; later rows zero)
    v_buf    [B, C, E]  the partial chunk's values
The position is not state: it comes with every step. The fold at a chunk boundary is
arithmetic on the position (``torch.where``), so the exported decode graph has no branches.
``pending`` stands for the partial chunk's linear keys: it is all the fold needs of them, and
keeping it (S×E) instead of the keys (C×S) spares each decode step a C×S×E matmul.

Both forms compute in fp32, or in fp64 when given fp64 (the tests' tight oracle runs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LAPLACE_MU = math.sqrt(0.5)
_LAPLACE_STD = math.sqrt((4 * math.pi) ** -1)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 activations (the state is fp32), fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def attention_fn(x: torch.Tensor, kind: str) -> torch.Tensor:
    """"relu2": relu(x)²; "laplace": the Laplace-CDF function of Ma et al. 2022 (MEGA)."""
    if kind == "relu2":
        return torch.relu(x) ** 2
    if kind == "laplace":
        return 0.5 * (1.0 + torch.erf((x - _LAPLACE_MU) / (_LAPLACE_STD * math.sqrt(2.0))))
    raise ValueError(f"unknown attention function {kind!r}")


def chunk_mixed_attention(quad_q, quad_k, lin_q, lin_k, v, bias, chunk_size: int, attn_fn: str,
                          lengths=None):
    """quad_q, quad_k, lin_q, lin_k [B, T, S]; v [B, T, E]; bias [C, C] (row i = query offset,
    col j = key offset); lengths [B] or None (positions >= length are padding).

    Returns (out [B, T, E] in v's dtype, state (lin_kv, pending, k_buf, v_buf) after each
    sequence's last real token). Memory and time linear in T: nothing of size T×T.
    """
    B, T, S = quad_q.shape
    E = v.shape[-1]
    C = chunk_size
    out_dtype, dtype = v.dtype, _compute_dtype(v.dtype)
    quad_q, quad_k, lin_q, lin_k, v = (t.to(dtype) for t in (quad_q, quad_k, lin_q, lin_k, v))
    positions = torch.arange(T, device=v.device)
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=v.device)
    valid = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
    lin_k = lin_k * valid.unsqueeze(-1)  # padded keys add nothing to the linear state

    pad = (-T) % C
    quad_q, quad_k, lin_q, lin_k, v = (F.pad(t, (0, 0, 0, pad)) for t in (quad_q, quad_k, lin_q, lin_k, v))
    valid = F.pad(valid, (0, pad))
    N = (T + pad) // C
    qq, qk, lq, lk = (t.view(B, N, C, S) for t in (quad_q, quad_k, lin_q, lin_k))
    vv = v.view(B, N, C, E)
    key_ok = valid.view(B, N, 1, C)

    sim = qq @ qk.transpose(-1, -2) / C + bias.to(dtype)  # [B, N, C, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=v.device).tril()
    attn = torch.where(causal & key_ok, attention_fn(sim, attn_fn), 0.0)
    quad_out = attn @ vv  # [B, N, C, E]

    chunk_kv = lk.transpose(-1, -2) @ vv / C  # [B, N, S, E]
    inclusive = chunk_kv.cumsum(dim=1)
    lin_out = lq @ (inclusive - chunk_kv)  # exclusive: completed chunks only
    out = (quad_out + lin_out).reshape(B, N * C, E)[:, :T]

    # State after each sequence's last real token: `done` completed chunks, then a partial one.
    done = lengths // C  # [B]
    fill = lengths % C
    before = torch.cat([torch.zeros_like(inclusive[:, :1]), inclusive], dim=1)  # [B, N+1, S, E]
    lin_kv = before.gather(1, done.view(B, 1, 1, 1).expand(B, 1, S, E)).squeeze(1)
    partial = done < N  # false only when the last chunk is exactly full
    idx = done.clamp(max=N - 1)
    rows_ok = (torch.arange(C, device=v.device).unsqueeze(0) < fill.unsqueeze(1)) & partial.unsqueeze(1)
    pending = chunk_kv.gather(1, idx.view(B, 1, 1, 1).expand(B, 1, S, E)).squeeze(1)
    pending = torch.where(partial.view(B, 1, 1), pending, 0.0)
    k_buf = qk.gather(1, idx.view(B, 1, 1, 1).expand(B, 1, C, S)).squeeze(1)
    v_buf = vv.gather(1, idx.view(B, 1, 1, 1).expand(B, 1, C, E)).squeeze(1)
    k_buf = torch.where(rows_ok.unsqueeze(-1), k_buf, 0.0)
    v_buf = torch.where(rows_ok.unsqueeze(-1), v_buf, 0.0)
    return out.to(out_dtype), (lin_kv, pending, k_buf, v_buf)


def step_mixed_attention(quad_q, quad_k, lin_q, lin_k, v, bias, position, state, attn_fn: str):
    """One token per sequence: quad_q, quad_k, lin_q, lin_k [B, S]; v [B, E]; bias [C, C];
    position [B] int64; state (lin_kv, pending, k_buf, v_buf) as above.

    Returns (out [B, E] in v's dtype, new state)."""
    lin_kv, pending, k_buf, v_buf = state
    C = k_buf.shape[1]
    out_dtype, dtype = v.dtype, _compute_dtype(v.dtype)
    quad_q, quad_k, lin_q, lin_k, v = (t.to(dtype) for t in (quad_q, quad_k, lin_q, lin_k, v))
    offset = position % C  # [B]
    cols = torch.arange(C, device=v.device).unsqueeze(0)  # [1, C]
    here = (cols == offset.unsqueeze(1)).unsqueeze(-1)  # [B, C, 1]
    k_buf = torch.where(here, quad_k.unsqueeze(1), k_buf)
    v_buf = torch.where(here, v.unsqueeze(1), v_buf)

    bias_row = bias.to(dtype).index_select(0, offset)  # [B, C]
    sim = torch.einsum("bs,bcs->bc", quad_q, k_buf) / C + bias_row
    attn = torch.where(cols <= offset.unsqueeze(1), attention_fn(sim, attn_fn), 0.0)
    quad_out = torch.einsum("bc,bce->be", attn, v_buf)

    pending = pending + lin_k.unsqueeze(-1) * v.unsqueeze(-2) / C
    lin_out = torch.einsum("bs,bse->be", lin_q, lin_kv)

    # The chunk is complete after its last offset: fold it into the linear state, clear buffers.
    complete = (offset == C - 1).view(-1, 1, 1)
    lin_kv = torch.where(complete, lin_kv + pending, lin_kv)
    pending = torch.where(complete, 0.0, pending)
    k_buf = torch.where(complete, 0.0, k_buf)
    v_buf = torch.where(complete, 0.0, v_buf)
    return (quad_out + lin_out).to(out_dtype), (lin_kv, pending, k_buf, v_buf)
