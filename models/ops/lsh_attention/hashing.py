"""What LSH attention's forms share: hashing keys into buckets, ranks inside a bucket and the
start of a token's window (the package docstring, __init__.py, has the scheme)."""

from __future__ import annotations

import torch


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
