"""Causal LSH attention with shared QK (Kitaev et al. 2020, "Reformer"), parallel and one-step.

Per head, keys are the unit-normalised queries, ``k̂ = q / |q|``. Each of ``n_hashes`` rounds
hashes k̂ with a fixed random rotation R [D, n_buckets/2]: ``bucket = argmax([k̂R; −k̂R])``.
Inside a bucket, tokens in position order are split into chunks of ``chunk`` tokens by their
rank in the bucket; a token attends to the earlier tokens of its bucket in its own chunk and
the chunk before (the paper's "attend within the chunk and one back", with chunks cut inside
each sorted bucket so that a token's attention set depends on earlier tokens only: prefill
and decode then agree exactly). Across rounds, the sets are merged as in the paper: per-round
softmaxes combined by their logsumexp with each key counted once (its score lowered by
log(rounds it appears in)), which equals one softmax over the union of the rounds' sets.
A token attends to itself only when it has no other target. Scores are ``q · k̂ / √D``.

The parallel form gathers each round's 2·chunk window from the bucket-sorted order (memory
linear in T). The step re-hashes the cached keys (O(L) per step, like the attention itself).
"""

from __future__ import annotations

import torch

from linexport.models.ops.softmax_attention import append_entry


def lsh_buckets(k_hat, rotations):
    """k_hat [B, H, T, D], rotations [H, R, D, n_buckets / 2] -> buckets [B, H, R, T] int64."""
    proj = torch.einsum("bhtd,hrdn->bhrtn", k_hat.float(), rotations.float())
    return torch.cat([proj, -proj], dim=-1).argmax(dim=-1)


def bucket_ranks(buckets, n_buckets: int):
    """buckets [..., T] -> (rank [..., T]: earlier tokens in the same bucket, count [..., n_buckets])."""
    onehot = (buckets[..., None] == torch.arange(n_buckets, device=buckets.device)).long()  # [..., T, nb]
    before = onehot.cumsum(dim=-2) - onehot
    return (before * onehot).sum(-1), onehot.sum(-2)


def window_start(rank, chunk: int):
    """First rank a token of rank ``rank`` attends to: the start of the previous chunk."""
    return torch.clamp((torch.div(rank, chunk, rounding_mode="floor") - 1) * chunk, min=0)


def chunk_lsh_attention(q, k_hat, v, rotations, n_buckets: int, chunk: int):
    """q, k_hat, v [B, H, T, D]; rotations [H, R, D, n_buckets/2]. Returns o [B, H, T, D] (v's dtype).

    Right padding needs no mask: padded tokens come after every real token of their bucket, so
    they fall in no real token's (backward-looking) window."""
    B, H, T, D = q.shape
    R, W = rotations.shape[1], 2 * chunk
    q, k_hat, vf = q.float(), k_hat.float(), v.float()
    buckets = lsh_buckets(k_hat, rotations)  # [B, H, R, T]
    rank, count = bucket_ranks(buckets, n_buckets)
    offset = count.cumsum(-1) - count  # first sorted index of each bucket [B, H, R, nb]
    sorted_at = offset.gather(-1, buckets) + rank  # each token's index in bucket-sorted order
    positions = torch.arange(T, device=q.device).expand(B, H, R, T)
    order = torch.zeros_like(positions).scatter(-1, sorted_at, positions)  # sorted index -> token

    back = torch.arange(W, device=q.device)  # window slot w: the token w places back in sorted order
    span = rank - window_start(rank, chunk)  # how far back the window reaches
    cand_sorted = (sorted_at[..., None] - back).clamp(min=0)  # [B, H, R, T, W]
    cand = order.gather(-1, cand_sorted.flatten(-2)).view(B, H, R, T, W)
    in_window = back <= span[..., None]
    # A key counts once however many rounds' windows hold it: its count N per candidate.
    n_rounds = _rounds_holding(cand, buckets, rank, chunk)
    is_self = back == 0
    has_other = (in_window & ~is_self).permute(0, 1, 3, 2, 4).flatten(-2).any(-1)  # [B, H, T]
    keep = in_window & (~is_self | ~has_other[:, :, None, :, None])  # self only when alone

    idx = cand.permute(0, 1, 3, 2, 4).reshape(B, H, T * R * W, 1)
    keys = k_hat.gather(2, idx.expand(-1, -1, -1, D)).view(B, H, T, R * W, D)
    vals = vf.gather(2, idx.expand(-1, -1, -1, D)).view(B, H, T, R * W, D)
    scores = torch.einsum("bhtd,bhtcd->bhtc", q, keys) * D ** -0.5
    scores = scores - n_rounds.permute(0, 1, 3, 2, 4).reshape(B, H, T, R * W).float().log()
    scores = scores.masked_fill(~keep.permute(0, 1, 3, 2, 4).reshape(B, H, T, R * W), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhtc,bhtcd->bhtd", weights, vals).to(v.dtype)


def _rounds_holding(cand, buckets, rank, chunk: int):
    """cand [B, H, R, T, W] token indices -> in how many rounds' windows of the query each
    candidate key lies (>= 1 for a candidate in its own window)."""
    B, H, R, T, W = cand.shape
    flat = cand.flatten(-2)  # [B, H, R, T*W]
    total = torch.zeros_like(cand)
    for r in range(R):  # R is a small config constant: an unrolled loop, no graph control flow
        bq, rq = buckets[:, :, r], rank[:, :, r]  # the query's bucket and rank in round r
        bk = bq[:, :, None, :].expand(B, H, R, T).gather(-1, flat).view(B, H, R, T, W)
        rk = rq[:, :, None, :].expand(B, H, R, T).gather(-1, flat).view(B, H, R, T, W)
        same = bk == bq[:, :, None, :, None]
        inside = (rk >= window_start(rq, chunk)[:, :, None, :, None]) & (rk <= rq[:, :, None, :, None])
        total = total + (same & inside).long()
    return total.clamp(min=1)


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
