"""Causal LSH attention, the one-token step: re-hashes the cached keys (O(L) per step, like
the attention itself)."""

from __future__ import annotations

import torch

from linexport.models.ops.lsh_attention.hashing import lsh_buckets, window_start
from linexport.models.ops.softmax_attention.recurrent import append_entry


def step_lsh_attention(q, k_hat, v, past_key, past_value, position, rotations, n_buckets: int, chunk: int):
    """One token: q, k_hat, v [B, H, D]; past_key (unit keys) / past_value [B, H, L, D] fp32;
    position [B] (row b's real cache entries are indices < position[b], see softmax_attention).
    Returns (o [B, H, D] in v's dtype, key, value [B, H, L + 1, D] fp32, the new entry at
    index position[b])."""
    B, H, L, D = past_key.shape
    index = torch.arange(L + 1, device=q.device)
    here = (index[None, :] == position[:, None])[:, None, :]  # [B, 1, L+1]
    key, value = append_entry(past_key, k_hat, position), append_entry(past_value, v, position)

    earlier = (index[None, :] < position[:, None])[:, None, None, :]  # [B, 1, 1, L+1]
    buckets = lsh_buckets(key, rotations)  # [B, H, R, L+1]
    mine = lsh_buckets(k_hat[:, :, None, :], rotations)  # [B, H, R, 1]
    in_bucket = (buckets == mine) & earlier
    rank_j = in_bucket.long().cumsum(-1) - 1  # rank of each earlier same-bucket key
    rank_i = in_bucket.long().sum(-1, keepdim=True)  # the new token's rank
    member = in_bucket & (rank_j >= window_start(rank_i, chunk))
    union = member.any(dim=2)  # [B, H, L+1]
    alone = ~union.any(-1, keepdim=True)  # no other target: attend to itself
    visible = union | (alone & here)
    scores = torch.einsum("bhd,bhld->bhl", q.float(), key) * D ** -0.5
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    o = torch.einsum("bhl,bhld->bhd", weights, value)
    return o.to(v.dtype), key, value
