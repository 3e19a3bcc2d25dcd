"""Causal softmax attention with a KV cache: a parallel form (SDPA) and a one-token step.

Layouts ``[B, H, T, D]``; the cache is fp32 whatever the activation dtype. Softmax is computed
in fp32 in both forms, so the prefill and decode graphs of an fp16 export round alike.

Cache contract of the step (ragged batches, branch-free so it exports):
past k/v ``[B, H, L, D]`` with row b's real entries at indices ``< position[b]``; entries in
``[position[b], L)`` are padding, masked out. The step returns a cache of length ``L + 1``
holding the new key/value at index ``position[b]`` (so the result can be fed straight back as
the next step's past): row b's real entries are then exactly ``<= position[b]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_softmax_attention(q, k, v):
    """q, k, v [B, H, T, D] -> o [B, H, T, D] in v's dtype. Right padding needs no mask: a
    real token only sees earlier positions, which are real too."""
    o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    return o.to(v.dtype)


def append_entry(past, new, position):
    """past [B, H, L, D] fp32, new [B, H, D], position [B] -> [B, H, L + 1, D] fp32: past with
    a zero entry appended, then ``new`` written at index position[b] of row b."""
    B, H, L, D = past.shape
    # One scatter (ScatterElements: a single copy) writes the entry; a broadcast Where over the
    # cache took ~3x as long in ONNX Runtime 1.32 on CPU (8192 cached tokens, d 256).
    at = position[:, None, None, None].expand(B, H, 1, D)
    grown = torch.cat([past, past.new_zeros(B, H, 1, D)], dim=2)
    return grown.scatter(2, at, new.float()[:, :, None, :])


def step_softmax_attention(q, k, v, past_key, past_value, position):
    """One token: q, k, v [B, H, D]; past_key/past_value [B, H, L, D] fp32; position [B] int64
    (0 <= position <= L). Returns (o [B, H, D] in v's dtype, key, value [B, H, L + 1, D] fp32)."""
    B, H, L, D = past_key.shape
    index = torch.arange(L + 1, device=q.device)
    key, value = append_entry(past_key, k, position), append_entry(past_value, v, position)
    scores = (key @ q.float()[..., None])[..., 0] * D ** -0.5  # [B, H, L+1]
    visible = (index[None, :] <= position[:, None])[:, None, :]  # [B, 1, L+1]
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    o = (weights[:, :, None, :] @ value)[:, :, 0]
    return o.to(v.dtype), key, value
