"""GAU / FLASH mixed-chunk attention (Hua et al. 2022), causal: a chunked parallel form
(chunk.py) and a recurrent step (recurrent.py) over an exact fixed-size state; naive.py holds
the oracles.

Inside a chunk of C tokens: quadratic attention ``attn_fn(q·k / C + bias[i, j])`` over earlier
positions of the same chunk. Across chunks: linear attention whose state only absorbs a chunk
once it is complete (``Σ lin_k vᵀ / C`` over completed chunks).

The recurrent state of one layer (all fp32) is the last C tokens and a summary of the rest:
    lin_kv   [B, S, E]   Σ lin_k vᵀ / C over every token before the last C
    k_buf    [B, C, 2S]  ring of the last C tokens' keys, (quad_k | lin_k), token j at row j % C
    v_buf    [B, C, E]   ring of the last C tokens' values
(rows of no token, before the first C, are zero). At position p, offset o = p mod C, the ring's
rows < o are the current chunk and rows >= o the previous chunk's tail: the quadratic part reads
the first, the linear part lin_kv plus the second. A step writes its token to row o and folds
the token it evicts (p − C) into lin_kv: one rank-1 update and two row writes, the same on every
step, so the decode graph has no branch at chunk boundaries and rewrites nothing it need not.
The position is not state: it comes with every step.
The chunked form also continues from such a state at any position (``initial_state``,
``offset`` = position mod C): it completes the partial chunk exactly (docs/DESIGN.md, "The math,
once").

Both forms compute in fp32, or in fp64 when given fp64 (the tests' tight oracle runs).
"""

from linexport.models.ops.mixed_chunk_attention.attention_fn import attention_fn
from linexport.models.ops.mixed_chunk_attention.chunk import chunk_mixed_attention
from linexport.models.ops.mixed_chunk_attention.recurrent import step_mixed_attention

__all__ = ["attention_fn", "chunk_mixed_attention", "step_mixed_attention"]
