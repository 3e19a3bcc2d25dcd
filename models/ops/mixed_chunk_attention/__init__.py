"""GAU / FLASH mixed-chunk attention (Hua et al. 2022), causal: a chunked parallel form
(chunk.py) and a recurrent step (recurrent.py) over an exact fixed-size state; naive.py holds
the oracles.

Inside a chunk of C tokens: quadratic attention ``attn_fn(q·k / C + bias[i, j])`` over earlier
positions of the same chunk. Across chunks: linear attention whose state only absorbs a chunk
once it is complete (``Σ lin_k vᵀ / C`` over completed chunks).

The recurrent state of one layer (all fp32):
    lin_kv   [B, S, E]  linear state over completed chunks
    pending  [B, S, E]  Σ lin_k vᵀ / C over the current, partial chunk (folded in at its end)
    k_buf    [B, C, S]  the partial chunk's quadratic keys (row r = offset r; later rows zero)
    v_buf    [B, C, E]  the partial chunk's values
The position is not state: it comes with every step. The fold at a chunk boundary is
arithmetic on the position (``torch.where``), so the exported decode graph has no branches.
``pending`` stands for the partial chunk's linear keys: it is all the fold needs of them, and
keeping it (S×E) instead of the keys (C×S) spares each decode step a C×S×E matmul.
The chunked form also continues from such a state at any position (``initial_state``,
``offset`` = position mod C): it completes the partial chunk exactly (docs/DESIGN.md, "The math,
once").

Both forms compute in fp32, or in fp64 when given fp64 (the tests' tight oracle runs).
"""

from linexport.models.ops.mixed_chunk_attention.attention_fn import attention_fn
from linexport.models.ops.mixed_chunk_attention.chunk import chunk_mixed_attention
from linexport.models.ops.mixed_chunk_attention.recurrent import step_mixed_attention

__all__ = ["attention_fn", "chunk_mixed_attention", "step_mixed_attention"]
