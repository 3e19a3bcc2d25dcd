"""Softmax-attention baseline: a standard causal transformer with a growing KV cache.

Built like ``LinearLM`` block for block (pre-norm RMSNorm, attention with a fused bias-free qkv
projection, GELU MLP; rotary or learned positions; tied embeddings), so a ``SoftmaxConfig`` with
the same sizes as a ``LinearConfig`` has exactly the same parameters: the comparison users want
("how much faster than what I run now?") then differs in the attention only.

State per layer: ``{layer}.key`` and ``{layer}.value`` fp32 [B, H, past_seq, D] — every
token's key (after rotary) and value so far. It grows by one entry per decoded token; that
growth is what the linear models avoid. The cache axis is the named dynamic dim
``past_seq`` (models/base.py ``PAST_SEQ``). Padded positions hold zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from linexport.models.layers import RotaryQKV
from linexport.models.ops.softmax_attention import causal_softmax_attention, step_softmax_attention
from linexport.models.token_lm import KVCacheLM, TokenLMConfig


@dataclass
class SoftmaxConfig(TokenLMConfig):
    """The shared fields only: the baseline adds nothing to the shell."""


class SoftmaxAttention(RotaryQKV):
    def forward(self, x, mask, cos, sin, state=None):
        """x [B, T, C], mask [B, T] bool -> (y [B, T, C], {key, value: [B, H, T, D] fp32})."""
        assert state is None, "a KV cache starts empty: KVCacheLM.forward refuses a past"
        q, k, v = self._qkv(x, cos, sin)
        o = causal_softmax_attention(q, k, v)
        B, H, T, D = o.shape
        # Zeros at padded positions: the cache is then a function of the real tokens only.
        keep = mask[:, None, :, None].to(torch.float32)
        return (self.out(o.transpose(1, 2).reshape(B, T, H * D)),
                {"key": k.float() * keep, "value": v.float() * keep})

    def step(self, x, state, position, cos, sin):
        """x [B, 1, C], key/value [B, H, L, D] -> (y [B, 1, C], key, value [B, H, L + 1, D])."""
        H, D = self.config.n_heads, self.config.head_dim
        qk, v = self._qkv_step(x, cos, sin)
        q, k = qk.view(x.shape[0], 2 * H, D).chunk(2, dim=1)
        v = v.view(x.shape[0], H, D)
        o, key, value = step_softmax_attention(q, k, v, state["key"], state["value"], position)
        return self.out(o.flatten(1)).unsqueeze(1), {"key": key, "value": value}


class SoftmaxLM(KVCacheLM):
    arch = "softmax"
    config_class = SoftmaxConfig
    attention = SoftmaxAttention
    flat_step = True
    key_doc = "keys of every token so far (after rotary)"
