"""GAU / FLASH mixed-chunk attention, the recurrent form: one token against the exact state.

See the package docstring (__init__.py) for the state (lin_kv, pending, k_buf, v_buf).
"""

from __future__ import annotations

import torch

from linexport.models.ops.mixed_chunk_attention.attention_fn import attention_fn, compute_dtype


def step_mixed_attention(quad_q, quad_k, lin_q, lin_k, v, bias, position, state, attn_fn: str):
    """One token per sequence: quad_q, quad_k, lin_q, lin_k [B, S]; v [B, E]; bias [C, C];
    position [B] int64; state (lin_kv, pending, k_buf, v_buf) as above.

    Returns (out [B, E] in v's dtype, new state)."""
    lin_kv, pending, k_buf, v_buf = state
    C = k_buf.shape[1]
    out_dtype, dtype = v.dtype, compute_dtype(v.dtype)
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
