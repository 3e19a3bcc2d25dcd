"""Oracle of causal shared-QK LSH attention: from its definition, one query at a time, run in
fp64 by the tests. Slow on purpose.
"""

from __future__ import annotations

import math

import torch


def naive_lsh_attention(q, k_hat, v, rotations, n_buckets: int, chunk: int):
    """Causal shared-QK LSH attention from its definition (chunk.py), one
    query at a time (use fp64). q, k_hat, v [B, H, T, D]; rotations [H, R, D, n_buckets / 2].

    Round r: bucket_j = argmax([k̂_j R_r; −k̂_j R_r]); rank_j = #{j' < j in bucket_j}. Query i
    attends in round r to {j < i : bucket_j = bucket_i, rank_j >= max(0, (rank_i // chunk − 1)
    · chunk)}; over the union U_i of its rounds' sets (or {i} when U_i is empty) with
    softmax(q_i · k̂_j / √D). Returns o [B, H, T, D]."""
    B, H, T, D = q.shape
    out = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            proj = torch.einsum("td,rdn->rtn", k_hat[b, h], rotations[h].to(k_hat.dtype))
            buckets = torch.cat([proj, -proj], -1).argmax(-1).tolist()  # [R][T]
            ranks = []
            for row in buckets:
                seen = {}
                ranks.append([seen.__setitem__(x, seen.get(x, 0) + 1) or seen[x] - 1 for x in row])
            for i in range(T):
                targets = set()
                for row, rank in zip(buckets, ranks):
                    start = max(0, (rank[i] // chunk - 1) * chunk)
                    targets |= {j for j in range(i) if row[j] == row[i] and rank[j] >= start}
                targets = sorted(targets) or [i]
                scores = k_hat[b, h, targets] @ q[b, h, i] / math.sqrt(D)
                out[b, h, i] = torch.softmax(scores, 0) @ v[b, h, targets]
    return out
