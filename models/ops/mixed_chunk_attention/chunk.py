"""GAU / FLASH mixed-chunk attention, the chunked parallel form: memory and time linear in T.

See the package docstring (__init__.py) for the math and the state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from linexport.models.ops.mixed_chunk_attention.attention_fn import attention_fn, compute_dtype


def chunk_mixed_attention(quad_q, quad_k, lin_q, lin_k, v, bias, chunk_size: int, attn_fn: str,
                          lengths=None, initial_state=None, offset=None):
    """quad_q, quad_k, lin_q, lin_k [B, T, S]; v [B, T, E]; bias [C, C] (row i = query offset,
    col j = key offset); lengths [B] or None (positions >= length are padding; a length may be 0).

    Continuing from a state: ``initial_state`` (lin_kv, pending, k_buf, v_buf) as the recurrent
    form keeps it (None: zeros), ``offset`` [B] int64 in [0, C): the position of each sequence's
    first token here inside its chunk, i.e. tokens already in the state mod C (None: 0). The
    partial chunk of the state is completed exactly as one pass over all tokens would.

    Returns (out [B, T, E] in v's dtype, state (lin_kv, pending, k_buf, v_buf) after each
    sequence's last token; a sequence of length 0 keeps ``initial_state`` bit for bit). Memory
    and time linear in T: nothing of size T×T, and no control flow on tensor values.
    """
    B, T, S = quad_q.shape
    E = v.shape[-1]
    C = chunk_size
    out_dtype, dtype = v.dtype, compute_dtype(v.dtype)
    device = v.device
    quad_q, quad_k, lin_q, lin_k, v = (t.to(dtype) for t in (quad_q, quad_k, lin_q, lin_k, v))
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=device)
    if initial_state is None:
        initial_state = (v.new_zeros(B, S, E), v.new_zeros(B, S, E), v.new_zeros(B, C, S), v.new_zeros(B, C, E))
    lin_kv0, pending0, k_buf0, v_buf0 = (t.to(dtype) for t in initial_state)

    if offset is None:
        # Token t sits at offset t % C of its chunk already: pad T to whole chunks.
        offset = torch.zeros(B, dtype=torch.int64, device=device)
        pad = (-T) % C
        quad_q, quad_k, lin_q, lin_k, v = (F.pad(t, (0, 0, 0, pad)) for t in (quad_q, quad_k, lin_q, lin_k, v))
        j = torch.arange(T + pad, device=device).unsqueeze(0)
        new = j < lengths.unsqueeze(1)  # [B, T'] a token of this call
        old = torch.zeros_like(new)  # a token of the state's partial chunk
    else:
        # The aligned layout: token t at index offset + t, so that chunks start where they
        # started in the whole sequence. Indices < offset (first chunk only) hold the state's
        # partial chunk: its quadratic keys and values from k_buf / v_buf; its linear keys are
        # in `pending` already, its queries unused. One gather from [partial chunk | tokens].
        n_chunks = (T + 2 * C - 2) // C  # covers offset + T <= C - 1 + T
        j = torch.arange(n_chunks * C, device=device).unsqueeze(0)
        src = j - offset.unsqueeze(1)  # [B, T'] the token of this call at index j
        new = (src >= 0) & (src < lengths.unsqueeze(1))
        old = src < 0
        take = torch.where(old, j, C + src).clamp(max=C + T - 1)

        def align(x, partial):
            return torch.cat([partial, x], dim=1).gather(1, take.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        quad_q, lin_q, lin_k = (align(t, t.new_zeros(B, C, S)) for t in (quad_q, lin_q, lin_k))
        quad_k, v = align(quad_k, k_buf0), align(v, v_buf0)
    lin_k = lin_k * new.unsqueeze(-1)  # only this call's tokens add to the linear state
    N = j.shape[1] // C
    qq, qk, lq, lk = (t.view(B, N, C, S) for t in (quad_q, quad_k, lin_q, lin_k))
    vv = v.view(B, N, C, E)
    key_ok = (new | old).view(B, N, 1, C)

    sim = qq @ qk.transpose(-1, -2) / C + bias.to(dtype)  # [B, N, C, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()
    attn = torch.where(causal & key_ok, attention_fn(sim, attn_fn), 0.0)
    quad_out = attn @ vv  # [B, N, C, E]

    chunk_kv = lk.transpose(-1, -2) @ vv / C  # [B, N, S, E]
    chunk_kv = torch.cat([chunk_kv[:, :1] + pending0.unsqueeze(1), chunk_kv[:, 1:]], dim=1)
    inclusive = lin_kv0.unsqueeze(1) + chunk_kv.cumsum(dim=1)  # the linear state after each chunk
    lin_out = lq @ (inclusive - chunk_kv)  # exclusive: completed chunks only
    out = (quad_out + lin_out).reshape(B, N * C, E)
    out = out.gather(1, (offset.unsqueeze(1) + torch.arange(T, device=device)).unsqueeze(-1).expand(B, T, E))

    # State after each sequence's last token (index offset + length): `done` completed chunks,
    # then a partial one.
    end = offset + lengths
    done = end // C  # [B]
    fill = end % C
    before = torch.cat([lin_kv0.unsqueeze(1), inclusive], dim=1)  # [B, N+1, S, E]
    lin_kv = before.gather(1, done.view(B, 1, 1, 1).expand(B, 1, S, E)).squeeze(1)
    partial = done < N  # false only when the last chunk is exactly full
    idx = done.clamp(max=N - 1)
    rows_ok = (torch.arange(C, device=device).unsqueeze(0) < fill.unsqueeze(1)) & partial.unsqueeze(1)
    pending = chunk_kv.gather(1, idx.view(B, 1, 1, 1).expand(B, 1, S, E)).squeeze(1)
    pending = torch.where(partial.view(B, 1, 1), pending, 0.0)
    k_buf = qk.gather(1, idx.view(B, 1, 1, 1).expand(B, 1, C, S)).squeeze(1)
    v_buf = vv.gather(1, idx.view(B, 1, 1, 1).expand(B, 1, C, E)).squeeze(1)
    k_buf = torch.where(rows_ok.unsqueeze(-1), k_buf, 0.0)
    v_buf = torch.where(rows_ok.unsqueeze(-1), v_buf, 0.0)
    # The arithmetic above gives a length-0 sequence its state back up to the sign of a zero
    # (and drops k_buf / v_buf rows >= offset, which nothing reads): keep it exactly.
    keep = (lengths == 0).view(B, 1, 1)
    state = tuple(torch.where(keep, s0, s) for s0, s in zip((lin_kv0, pending0, k_buf0, v_buf0),
                                                                 (lin_kv, pending, k_buf, v_buf)))
    return out.to(out_dtype), state
