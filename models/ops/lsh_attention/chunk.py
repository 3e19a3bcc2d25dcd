"""Causal LSH attention, the parallel form: each round's 2·chunk window gathered from the
bucket-sorted order (memory linear in T)."""

from __future__ import annotations

import torch

from linexport.models.ops.lsh_attention.hashing import bucket_ranks, lsh_buckets, window_start


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
