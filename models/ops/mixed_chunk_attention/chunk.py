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

    Continuing from a state: ``initial_state`` (lin_kv, k_buf, v_buf) as the recurrent form
    keeps it (None: zeros), ``offset`` [B] int64 in [0, C): the position of each sequence's first
    token here inside its chunk, i.e. tokens already in the state mod C (None: 0). The partial
    chunk of the state is completed exactly as one pass over all tokens would.

    Returns (out [B, T, E] in v's dtype, state (lin_kv, k_buf, v_buf) after each sequence's last
    token; a sequence of length 0 keeps ``initial_state`` bit for bit). Memory and time linear
    in T: nothing of size T×T, and no control flow on tensor values.
    """
    B, T, S = quad_q.shape
    E = v.shape[-1]
    C = chunk_size
    out_dtype, dtype = v.dtype, compute_dtype(v.dtype)
    device = v.device
    quad_q, quad_k, lin_q, lin_k, v = (t.to(dtype) for t in (quad_q, quad_k, lin_q, lin_k, v))
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=device)
    fresh = initial_state is None
    if fresh:
        initial_state = (v.new_zeros(B, S, E), v.new_zeros(B, C, 2 * S), v.new_zeros(B, C, E))
    lin_kv0, k_buf0, v_buf0 = (t.to(dtype) for t in initial_state)
    quad_k0, lin_k0 = k_buf0[..., :S], k_buf0[..., S:]

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
        # partial chunk, the ring's rows < offset: its keys and values; its queries unused.
        # One gather from [partial chunk | tokens].
        n_chunks = (T + 2 * C - 2) // C  # covers offset + T <= C - 1 + T
        j = torch.arange(n_chunks * C, device=device).unsqueeze(0)
        src = j - offset.unsqueeze(1)  # [B, T'] the token of this call at index j
        new = (src >= 0) & (src < lengths.unsqueeze(1))
        old = src < 0
        take = torch.where(old, j, C + src).clamp(max=C + T - 1)

        def align(x, partial):
            return torch.cat([partial, x], dim=1).gather(1, take.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        quad_q, lin_q = (align(t, t.new_zeros(B, C, S)) for t in (quad_q, lin_q))
        quad_k, lin_k, v = align(quad_k, quad_k0), align(lin_k, lin_k0), align(v, v_buf0)
    lin_k = lin_k * (new | old).unsqueeze(-1)  # padding adds nothing to the linear state
    N = j.shape[1] // C
    qq, qk, lq, lk = (t.view(B, N, C, S) for t in (quad_q, quad_k, lin_q, lin_k))
    vv = v.view(B, N, C, E)
    key_ok = (new | old).view(B, N, 1, C)

    sim = qq @ qk.transpose(-1, -2) / C + bias.to(dtype)  # [B, N, C, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()
    attn = torch.where(causal & key_ok, attention_fn(sim, attn_fn), 0.0)
    quad_out = attn @ vv  # [B, N, C, E]

    # The ring's rows >= offset: the tail of the chunk before the first one here (`before`).
    rows = torch.arange(C, device=device).unsqueeze(0)  # [1, C]
    lin_k_before = lin_k0 * (rows >= offset.unsqueeze(1)).unsqueeze(-1)
    start_kv = lin_kv0 if fresh else lin_kv0 + lin_k_before.transpose(-1, -2) @ v_buf0 / C
    chunk_kv = lk.transpose(-1, -2) @ vv / C  # [B, N, S, E]
    inclusive = start_kv.unsqueeze(1) + chunk_kv.cumsum(dim=1)  # the linear state after each chunk
    lin_out = lq @ (inclusive - chunk_kv)  # exclusive: completed chunks only
    out = (quad_out + lin_out).reshape(B, N * C, E)
    out = out.gather(1, (offset.unsqueeze(1) + torch.arange(T, device=device)).unsqueeze(-1).expand(B, T, E))

    # State after each sequence's last token (index offset + length, `done` chunks and `fill`
    # tokens of the next): the ring's rows < fill from chunk `done`, its rows >= fill from
    # chunk done - 1 (the state's own ring when done = 0); lin_kv everything before that.
    end = offset + lengths
    done = end // C  # [B], in [0, N]
    fill = (end % C).unsqueeze(1)  # [B, 1]

    def chunk_at(x, index):  # x [B, N, C, F] -> [B, C, F], chunk index[b] of each row
        return x.gather(1, index.view(B, 1, 1, 1).expand(B, 1, C, x.shape[-1])).squeeze(1)

    first = (done == 0).view(B, 1, 1)
    prev = (done - 1).clamp(min=0)
    cur = done.clamp(max=N - 1)
    prev_qk = torch.where(first, quad_k0, chunk_at(qk, prev))
    prev_lk = torch.where(first, lin_k_before, chunk_at(lk, prev))
    prev_v = torch.where(first, v_buf0, chunk_at(vv, prev))
    # The linear state before chunk done - 1: lin_kv0 (done = 0), start_kv (1), else inclusive.
    before = torch.cat([lin_kv0.unsqueeze(1), start_kv.unsqueeze(1), inclusive[:, :N - 1]], dim=1)
    lin_kv = before.gather(1, done.view(B, 1, 1, 1).expand(B, 1, S, E)).squeeze(1)
    lin_kv = lin_kv + (prev_lk * (rows < fill).unsqueeze(-1)).transpose(-1, -2) @ prev_v / C
    in_cur = (rows < fill).unsqueeze(-1)  # [B, C, 1]; none when done = N (then fill = 0)
    k_buf = torch.where(in_cur, torch.cat([chunk_at(qk, cur), chunk_at(lk, cur)], -1),
                        torch.cat([prev_qk, prev_lk], -1))
    v_buf = torch.where(in_cur, chunk_at(vv, cur), prev_v)
    # The arithmetic above gives a length-0 sequence its state back up to rounding and the sign
    # of a zero (its ring's rows < offset are rebuilt from the masked copy): keep it exactly.
    keep = (lengths == 0).view(B, 1, 1)
    state = tuple(torch.where(keep, s0, s) for s0, s in zip((lin_kv0, k_buf0, v_buf0), (lin_kv, k_buf, v_buf)))
    return out.to(out_dtype), state
