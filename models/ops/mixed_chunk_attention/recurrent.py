"""GAU / FLASH mixed-chunk attention, the recurrent form: one token against the exact state.

See the package docstring (__init__.py) for the state (lin_kv, k_buf, v_buf): a ring of the
last C tokens and the linear state of everything older.
"""

from __future__ import annotations

import torch

from linexport.models.ops.mixed_chunk_attention.attention_fn import attention_fn, compute_dtype


def step_mixed_attention(q, k, v, bias, position, state, attn_fn: str):
    """One token per sequence: q [B, 2, S] (quad_q, lin_q), k [B, 2, S] (quad_k, lin_k); v [B, E];
    bias [C, C]; position [B] int64; state (lin_kv, k_buf, v_buf) as above.

    Writes one ring row and folds the one token it evicts into ``lin_kv``: no branch on the
    chunk boundary, and nothing else of the state is rewritten (the decode graph's cost is one
    copy of the state, not several). Shaped for the decode graph: every tensor keeps its
    one-token dim, so the graph has no squeeze/unsqueeze pairs. Returns (out [B, E] in v's
    dtype, new state)."""
    lin_kv, k_buf, v_buf = state
    B, C = k_buf.shape[:2]
    S, E = q.shape[-1], v.shape[-1]
    out_dtype, dtype = v.dtype, compute_dtype(v.dtype)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    offset = position % C  # [B]
    rows = (torch.arange(B, device=v.device), offset)  # each sequence's ring row

    # Row `offset` holds the token C positions back (zeros before the first C): it leaves the
    # ring and joins the linear state. The row writes are ScatterND in the graph: a copy of
    # the buffer and one row, as cheap as the copy alone.
    old_lin_k = k_buf[rows][:, S:]  # [B, S]
    old_v = v_buf[rows] / C  # [B, E]
    lin_kv = lin_kv + old_lin_k.unsqueeze(2) * old_v.unsqueeze(1)
    k_buf = k_buf.index_put(rows, k.reshape(B, 2 * S))
    v_buf = v_buf.index_put(rows, v)
    row = offset.view(B, 1, 1)

    # One pass over the ring: rows <= offset are this chunk (quadratic attention), rows after it
    # the previous chunk's tail, which the linear part still has to see. Query row 0 meets the
    # quadratic keys, row 1 the linear ones: [quad_q | 0] and [0 | lin_q].
    halves = torch.eye(2, dtype=dtype, device=v.device).repeat_interleave(S, dim=1)  # [2, 2S]
    queries = q.repeat(1, 1, 2) * halves
    quad_sim, lin_sim = (queries @ k_buf.transpose(1, 2) / C).split(1, dim=1)  # [B, 1, C] each
    quad = attention_fn(quad_sim + bias.to(dtype).index_select(0, offset).unsqueeze(1), attn_fn)
    this_chunk = torch.arange(C, device=v.device) <= row  # [B, 1, C]
    weights = torch.where(this_chunk, quad, lin_sim)
    out = weights @ v_buf + q[:, 1:] @ lin_kv  # [B, 1, E]
    return out.reshape(B, E).to(out_dtype), (lin_kv, k_buf, v_buf)
