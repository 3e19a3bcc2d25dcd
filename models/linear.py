"""Causal linear-attention language model (Katharopoulos et al. 2020, "Transformers are RNNs").

Pre-norm blocks: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)). Attention is
``o = φ(q)ᵀ S / (φ(q)ᵀ z + eps)`` with φ = elu + 1 (or relu). Positions: rotary applied to q
and k *before* φ (so φ keeps features non-negative and the normaliser positive, and the whole
state stays one tensor), or learned absolute embeddings. Either works step by step.

With ``shift_tokens`` (as in GAU) the attention's input takes the first half of its features
from the previous token, so every layer sees that token exactly, which a linear attention's
averaged state cannot give it; at byte level this is what closes most of the gap to GAU.

State per layer: ``{layer}.kv`` fp32 [B, H, Dk, Dv + 1] — numerator S with normaliser z as
its last column; with token shift also ``{layer}.shift`` fp32 [B, ceil(C/2)]. Fixed size,
whatever the context length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from linexport.models.base import StateSpec
from linexport.models.config import require
from linexport.models.layers import RotaryQKV, token_shift, token_shift_step
from linexport.models.ops.causal_linear_attention import causal_linear_attention, feature_map
from linexport.models.token_lm import TokenLM, TokenLMConfig


@dataclass
class LinearConfig(TokenLMConfig):
    feature_map: Literal["elu", "relu"] = "elu"
    eps: float = 1e-6
    chunk_size: int = 64  # parallel form only; results do not depend on it
    shift_tokens: bool = False  # token shift before attention (see the module doc)

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
        (y [B, T, C], {"kv": ..., "shift": ...}: the state after each row's last real token)."""
        new = {}
        if self.config.shift_tokens:
            prev = state["shift"] if state is not None else x.new_zeros(  # fp32 (fp64 for fp64 oracles)
                x.shape[0], (x.shape[-1] + 1) // 2, dtype=torch.promote_types(x.dtype, torch.float32))
            x, new["shift"] = token_shift(x, prev, mask.sum(1))
        q, k, v = self._qkv(x, cos, sin)
        k = k * mask[:, None, :, None].to(k.dtype)  # padded tokens add nothing to the state
        B, H, T, Dk = q.shape
        Dv = v.shape[-1]
        past = q.new_zeros(B, H, Dk, Dv + 1, dtype=torch.float32) if state is None else state["kv"]
        flat = [t.transpose(1, 2).reshape(B, T, -1) for t in (q, k, v)]  # the op's [B, T, H*D]
        o, kv = causal_linear_attention(*flat, past, H, float(self.config.eps), self.config.chunk_size)
        o = o.reshape(B, T, H, Dv).transpose(1, 2).to(v.dtype)  # [B, H, T, Dv]
        return self.out(o.transpose(1, 2).reshape(B, T, H * Dv)), {"kv": kv, **new}

    def step(self, x, state, position, cos, sin):
        """x [B, 1, C], state {"kv": [B, H, Dk, Dv+1]} -> (y [B, 1, C], new state). Rotary
        carries the position (cos/sin from ``step_rotary_tables``); the state does not depend on it."""
        new = {}
        if self.config.shift_tokens:
            x, new["shift"] = token_shift_step(x, state["shift"])
        qk, v = self._qkv_step(x, cos, sin)  # the op's [B, T=1, H*D]: heads flat
        q, k = feature_map(qk, self.config.feature_map).chunk(2, dim=-1)  # φ on q and k at once
        o, kv = causal_linear_attention(q, k, v, state["kv"], self.config.n_heads, float(self.config.eps))
        return self.out(o.to(v.dtype)), {"kv": kv, **new}


class LinearLM(TokenLM):
    arch = "linear"
    config_class = LinearConfig
    attention = LinearAttention
    state_names = ("kv",)
    flat_step = True

    def __init__(self, config: LinearConfig):
        super().__init__(config)
        if config.shift_tokens:
            self.state_names = ("kv", "shift")

    def state_specs(self):
        c = self.config
        specs = []
        for i in range(c.n_layers):
            specs.append(StateSpec(f"{i}.kv", ("batch", c.n_heads, c.head_dim, c.head_dim + 1), torch.float32,
                                   "numerator S = Σ φ(k) vᵀ with normaliser z = Σ φ(k) as last column"))
            if c.shift_tokens:
                specs.append(StateSpec(f"{i}.shift", ("batch", (c.d_model + 1) // 2), torch.float32,
                                       "the previous token's normalised first-half features (token shift)"))
        return specs
