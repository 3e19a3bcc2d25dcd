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

from linexport.models.base import StateSpec
from linexport.models.config import require
from linexport.models.layers import RotaryQKV
from linexport.models.ops.causal_linear_attention import causal_linear_attention, feature_map
from linexport.models.token_lm import TokenLM, TokenLMConfig


@dataclass
class LinearConfig(TokenLMConfig):
    feature_map: Literal["elu", "relu"] = "elu"
    eps: float = 1e-6
    chunk_size: int = 64  # parallel form only; results do not depend on it

    positive_fields = TokenLMConfig.positive_fields + ("chunk_size",)

    def __post_init__(self):
        super().__post_init__()
        require(self.eps > 0, f"config LinearConfig.eps must be > 0, got {self.eps}")


class LinearAttention(RotaryQKV):
    def _qkv(self, x, cos, sin):
        """x [B, T, C] -> φ(q), φ(k), v each [B, H, T, D] (rotary before φ)."""
        q, k, v = super()._qkv(x, cos, sin)
        fm = self.config.feature_map
        return feature_map(q, fm), feature_map(k, fm), v

    def forward(self, x, mask, cos, sin, state=None):
        """x [B, T, C], mask [B, T] bool, state {"kv": [B, H, Dk, Dv+1]} or None (zeros) ->
        (y [B, T, C], {"kv": state after each row's last real token})."""
        q, k, v = self._qkv(x, cos, sin)
        k = k * mask[:, None, :, None].to(k.dtype)  # padded tokens add nothing to the state
        B, H, T, Dk = q.shape
        Dv = v.shape[-1]
        past = q.new_zeros(B, H, Dk, Dv + 1, dtype=torch.float32) if state is None else state["kv"]
        flat = [t.transpose(1, 2).reshape(B, T, -1) for t in (q, k, v)]  # the op's [B, T, H*D]
        o, kv = causal_linear_attention(*flat, past, H, float(self.config.eps), self.config.chunk_size)
        o = o.reshape(B, T, H, Dv).transpose(1, 2).to(v.dtype)  # [B, H, T, Dv]
        return self.out(o.transpose(1, 2).reshape(B, T, H * Dv)), {"kv": kv}

    def step(self, x, state, position, cos, sin):
        """x [B, C], state {"kv": [B, H, Dk, Dv+1]} -> (y [B, C], new state). Rotary carries
        the position (in cos/sin); the state itself does not depend on it."""
        q, k, v = (t[:, :, 0] for t in self._qkv(x[:, None], cos, sin))  # [B, H, D]
        B, H, Dv = v.shape
        flat = [t.reshape(B, 1, -1) for t in (q, k, v)]  # the op's [B, T=1, H*D]
        o, kv = causal_linear_attention(*flat, state["kv"], H, float(self.config.eps))
        o = o.reshape(B, H, Dv).to(v.dtype)
        return self.out(o.flatten(1)), {"kv": kv}


class LinearLM(TokenLM):
    arch = "linear"
    config_class = LinearConfig
    attention = LinearAttention
    state_names = ("kv",)

    def state_specs(self):
        c = self.config
        return [StateSpec(f"{i}.kv", ("batch", c.n_heads, c.head_dim, c.head_dim + 1), torch.float32,
                          "numerator S = Σ φ(k) vᵀ with normaliser z = Σ φ(k) as last column")
                for i in range(c.n_layers)]
