"""GAU / FLASH mixed-chunk attention, the chunked parallel form: memory and time linear in T.

See the package docstring (__init__.py) for the math and the state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from linexport.models.ops.mixed_chunk_attention.attention_fn import attention_fn, compute_dtype


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
    out_dtype, dtype = v.dtype, compute_dtype(v.dtype)
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
