"""Causal linear-attention language model (Katharopoulos et al. 2020, "Transformers are RNNs").

Pre-norm blocks: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)). Attention is
``o = φ(q)ᵀ S / (φ(q)ᵀ z + eps)`` with φ = elu + 1 (or relu). Positions: rotary applied to q
and k *before* φ (so φ keeps features non-negative and the normaliser positive, and the whole
state stays one tensor), or learned absolute embeddings. Either works step by step.

State per layer: ``{layer}.kv`` fp32 [B, H, Dk, Dv + 1] — numerator S with normaliser z as
its last column. Fixed size, whatever the context length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from linexport.models.base import StateSpec
from linexport.models.config import require
from linexport.models.layers import MLP, RMSNorm, RotaryQKV
from linexport.models.ops.causal_linear_attention import causal_linear_attention, feature_map
from linexport.models.token_lm import TokenLM


@dataclass
class LinearConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    head_dim: int = 64
    d_ff: int = 1024
    feature_map: Literal["elu", "relu"] = "elu"
    eps: float = 1e-6
    pos_emb: Literal["rotary", "learned"] = "rotary"
    rotary_base: float = 10000.0
    max_seq_len: int = 4096  # learned positions only; rotary has no limit
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    chunk_size: int = 64  # parallel form only; results do not depend on it

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "d_ff",
                     "max_seq_len", "chunk_size"):
            require(getattr(self, name) >= 1, f"config LinearConfig.{name} must be >= 1, got "
                                              f"{getattr(self, name)}")
        require(self.eps > 0, f"config LinearConfig.eps must be > 0, got {self.eps}")


class LinearAttention(RotaryQKV):
    def _qkv(self, x, cos, sin):
        """x [B, T, C] -> φ(q), φ(k), v each [B, H, T, D] (rotary before φ)."""
        q, k, v = super()._qkv(x, cos, sin)
        fm = self.config.feature_map
        return feature_map(q, fm), feature_map(k, fm), v

    def forward(self, x, mask, cos, sin):
        """x [B, T, C], mask [B, T] bool -> (y [B, T, C], state [B, H, Dk, Dv+1])."""
        q, k, v = self._qkv(x, cos, sin)
        k = k * mask[:, None, :, None].to(k.dtype)  # padded tokens add nothing to the state
        B, H, T, Dk = q.shape
        Dv = v.shape[-1]
        past = q.new_zeros(B, H, Dk, Dv + 1, dtype=torch.float32)
        flat = [t.transpose(1, 2).reshape(B, T, -1) for t in (q, k, v)]  # the op's [B, T, H*D]
        o, state = causal_linear_attention(*flat, past, H, float(self.config.eps))
        o = o.reshape(B, T, H, Dv).transpose(1, 2).to(v.dtype)  # [B, H, T, Dv]
        return self.out(o.transpose(1, 2).reshape(B, T, H * Dv)), state

    def step(self, x, state, cos, sin):
        """x [B, C], state [B, H, Dk, Dv+1] -> (y [B, C], new state)."""
        q, k, v = (t[:, :, 0] for t in self._qkv(x[:, None], cos, sin))  # [B, H, D]
        B, H, Dv = v.shape
        flat = [t.reshape(B, 1, -1) for t in (q, k, v)]  # the op's [B, T=1, H*D]
        o, state = causal_linear_attention(*flat, state, H, float(self.config.eps))
        o = o.reshape(B, H, Dv).to(v.dtype)
        return self.out(o.flatten(1)), state


class Block(nn.Module):
    def __init__(self, config: LinearConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.d_model, config.norm_eps)
        self.attn = LinearAttention(config)
        self.norm2 = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config.d_model, config.d_ff)

    def forward(self, x, mask, cos, sin):
        a, state = self.attn(self.norm1(x), mask, cos, sin)
        x = x + a
        return x + self.mlp(self.norm2(x)), state

    def step(self, x, state, cos, sin):
        a, state = self.attn.step(self.norm1(x), state, cos, sin)
        x = x + a
        return x + self.mlp(self.norm2(x)), state


class LinearLM(TokenLM):
    arch = "linear"
    config_class = LinearConfig

    def __init__(self, config: LinearConfig):
        super().__init__(config, [Block(config) for _ in range(config.n_layers)])

    def state_specs(self):
        c = self.config
        return [StateSpec(f"{i}.kv", ("batch", c.n_heads, c.head_dim, c.head_dim + 1), torch.float32,
                          "numerator S = Σ φ(k) vᵀ with normaliser z = Σ φ(k) as last column")
                for i in range(c.n_layers)]

    def forward(self, input_ids, lengths=None, return_state=False):
        x, mask, cos, sin = self.parallel_inputs(input_ids, lengths)
        states = {}
        for i, block in enumerate(self.blocks):
            x, states[f"{i}.kv"] = block(x, mask, cos, sin)
        logits = self.logits(x)
        return (logits, states) if return_state else logits

    def step(self, input_ids, position, state):
        x, cos, sin = self.step_inputs(input_ids, position)
        new_state = {}
        for i, block in enumerate(self.blocks):
            x, new_state[f"{i}.kv"] = block.step(x, state[f"{i}.kv"], cos, sin)
        return self.logits(x), new_state
