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
from typing import Literal

import torch
from torch import nn

from linexport.errors import LinexportError
from linexport.models.config import require
from linexport.models.layers import MLP, RMSNorm, RotaryQKV
from linexport.models.ops.softmax_attention import causal_softmax_attention, step_softmax_attention
from linexport.models.token_lm import TokenLM, kv_cache_specs


@dataclass
class SoftmaxConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    head_dim: int = 64
    d_ff: int = 1024
    pos_emb: Literal["rotary", "learned"] = "rotary"
    rotary_base: float = 10000.0
    max_seq_len: int = 4096  # learned positions only; rotary has no limit
    tie_embeddings: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "d_ff", "max_seq_len"):
            require(getattr(self, name) >= 1, f"config SoftmaxConfig.{name} must be >= 1, got "
                                              f"{getattr(self, name)}")


class SoftmaxAttention(RotaryQKV):
    def forward(self, x, mask, cos, sin):
        """x [B, T, C], mask [B, T] bool -> (y [B, T, C], key, value [B, H, T, D] fp32)."""
        q, k, v = self._qkv(x, cos, sin)
        o = causal_softmax_attention(q, k, v)
        B, H, T, D = o.shape
        # Zeros at padded positions: the cache is then a function of the real tokens only.
        keep = mask[:, None, :, None].to(torch.float32)
        return self.out(o.transpose(1, 2).reshape(B, T, H * D)), k.float() * keep, v.float() * keep

    def step(self, x, position, key, value, cos, sin):
        """x [B, C], key/value [B, H, L, D] -> (y [B, C], key, value [B, H, L + 1, D])."""
        q, k, v = (t[:, :, 0] for t in self._qkv(x[:, None], cos, sin))
        o, key, value = step_softmax_attention(q, k, v, key, value, position)
        return self.out(o.flatten(1)), key, value


class Block(nn.Module):
    def __init__(self, config: SoftmaxConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.d_model, config.norm_eps)
        self.attn = SoftmaxAttention(config)
        self.norm2 = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config.d_model, config.d_ff)

    def forward(self, x, mask, cos, sin):
        a, key, value = self.attn(self.norm1(x), mask, cos, sin)
        x = x + a
        return x + self.mlp(self.norm2(x)), key, value

    def step(self, x, position, key, value, cos, sin):
        a, key, value = self.attn.step(self.norm1(x), position, key, value, cos, sin)
        x = x + a
        return x + self.mlp(self.norm2(x)), key, value


class SoftmaxLM(TokenLM):
    arch = "softmax"
    config_class = SoftmaxConfig

    def __init__(self, config: SoftmaxConfig):
        super().__init__(config, [Block(config) for _ in range(config.n_layers)])

    def state_specs(self):
        return kv_cache_specs(self.config, "keys of every token so far (after rotary)")

    def forward(self, input_ids, lengths=None, return_state=False):
        x, mask, cos, sin = self.parallel_inputs(input_ids, lengths)
        states = {}
        for i, block in enumerate(self.blocks):
            x, states[f"{i}.key"], states[f"{i}.value"] = block(x, mask, cos, sin)
        logits = self.logits(x)
        return (logits, states) if return_state else logits

    def step(self, input_ids, position, state):
        _check_step(self.config, position, state["0.key"])
        x, cos, sin = self.step_inputs(input_ids, position)
        new_state = {}
        for i, block in enumerate(self.blocks):
            x, new_state[f"{i}.key"], new_state[f"{i}.value"] = block.step(
                x, position, state[f"{i}.key"], state[f"{i}.value"], cos, sin)
        return self.logits(x), new_state


def _check_step(c: SoftmaxConfig, position, key):
    """Eager-only checks: a position past the cache would write nowhere and read padding."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    L = key.shape[2]
    lo, hi = int(position.min()), int(position.max())
    if lo < 0 or hi > L:
        raise LinexportError(f"expected positions in [0, {L}] (the cache holds {L} entries), got "
                             f"{position.tolist()}; pass each sequence's token count as its position")
    if c.pos_emb == "learned" and hi >= c.max_seq_len:
        raise LinexportError(f"position {hi} exceeds this model's learned positions "
                             f"(max_seq_len={c.max_seq_len}); use shorter inputs")
