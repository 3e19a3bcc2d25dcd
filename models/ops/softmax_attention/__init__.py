"""Causal softmax attention with a KV cache: a parallel form (SDPA, chunk.py) and a
one-token step (recurrent.py); naive.py holds the oracle.

Layouts ``[B, H, T, D]``; the cache is fp32 whatever the activation dtype. Softmax is computed
in fp32 in both forms, so the prefill and decode graphs of an fp16 export round alike.

Cache contract of the step (ragged batches, branch-free so it exports):
past k/v ``[B, H, L, D]`` with row b's real entries at indices ``< position[b]``; entries in
``[position[b], L)`` are padding, masked out. The step returns a cache of length ``L + 1``
holding the new key/value at index ``position[b]`` (so the result can be fed straight back as
the next step's past): row b's real entries are then exactly ``<= position[b]``.
"""

from linexport.models.ops.softmax_attention.chunk import causal_softmax_attention
from linexport.models.ops.softmax_attention.recurrent import append_entry, step_softmax_attention

__all__ = ["append_entry", "causal_softmax_attention", "step_softmax_attention"]
