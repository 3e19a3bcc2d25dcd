"""Causal linear attention (Katharopoulos et al. 2020), one folder per op:

    op.py           the public op, ``torch.ops.linexport.causal_linear_attention`` (the models
                    call it; it exports as one ``linexport::CausalLinearAttention`` node)
    chunk.py        the chunked parallel form, linear in T          q, k, v [B, H, T, D]
    recurrent.py    the one-token step                               q, k, v [B, H, D]
    naive.py        the oracles: a token loop and the masked quadratic form (tests only)
    feature_map.py  φ, applied by the model to q and k before the op (incl. the learnable map)

The state is one fp32 tensor [B, H, Dk, Dv + 1]: the numerator S = Σ k vᵀ with the normaliser
z = Σ k as its last column; in the unnormalised form (``normalize=False``, o = qᵀS) it is
[B, H, Dk, Dv], S alone.
"""

from linexport.models.ops.causal_linear_attention.chunk import chunk_causal_linear_attention
from linexport.models.ops.causal_linear_attention.feature_map import feature_map
from linexport.models.ops.causal_linear_attention.op import causal_linear_attention
from linexport.models.ops.causal_linear_attention.recurrent import step_causal_linear_attention

__all__ = ["causal_linear_attention", "chunk_causal_linear_attention", "feature_map",
           "step_causal_linear_attention"]
