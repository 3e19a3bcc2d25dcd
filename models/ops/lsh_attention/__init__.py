"""Causal LSH attention with shared QK (Kitaev et al. 2020, "Reformer"), parallel (chunk.py) and
one-step (recurrent.py); naive.py holds the oracle.

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

from linexport.models.ops.lsh_attention.chunk import chunk_lsh_attention
from linexport.models.ops.lsh_attention.hashing import bucket_ranks, lsh_buckets, window_start
from linexport.models.ops.lsh_attention.recurrent import step_lsh_attention

__all__ = ["bucket_ranks", "chunk_lsh_attention", "lsh_buckets", "step_lsh_attention", "window_start"]
