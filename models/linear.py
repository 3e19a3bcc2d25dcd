"""Causal linear-attention language model (Katharopoulos et al. 2020, "Transformers are RNNs").

Pre-norm blocks: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)). Attention is
``o = φ(q)ᵀ S / (φ(q)ᵀ z + eps)`` with φ = elu + 1 (or relu). Positions: rotary applied to q
and k *before* φ (so φ keeps features non-negative and the normaliser positive, and the whole
state stays one tensor), or learned absolute embeddings. Either works step by step.

The options flash-linear-attention's ``linear_attn`` layer has (models/convert_fla.py), each
off by default: grouped-query attention (``n_kv_heads``: query head j reads key/value head
j // (n_heads / n_kv_heads); k and v are repeated to the n_heads query heads before the op, so
the state is per query head), value heads of their own width (``v_head_dim``), the feature maps
"identity" and the learnable "elementwise_product", φ(q) scaled by ``q_scale``, the unnormalised
form ``o = φ(q)ᵀ S`` (``normalize=False``: no normaliser, so no state column), a per-head
RMSNorm on the attention output (``out_norm``), no positions (``pos_emb="none"``) and a SwiGLU
MLP (``mlp="swiglu"``).

With ``shift_tokens`` (as in GAU) the attention's input takes the first half of its features
from the previous token, so every layer sees that token exactly, which a linear attention's
averaged state cannot give it; at byte level this is what closes most of the gap to GAU.

State per layer: ``{layer}.kv`` fp32 [B, H, Dk, Dv + 1] — numerator S with normaliser z as
its last column ([B, H, Dk, Dv], S alone, with ``normalize=False``); with token shift also
``{layer}.shift`` fp32 [B, ceil(C/2)]. Fixed size, whatever the context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from linexport.models.base import StateSpec
from linexport.models.config import require
from linexport.models.layers import RMSNorm, RotaryQKV, token_shift, token_shift_step
from linexport.models.ops.causal_linear_attention import causal_linear_attention, feature_map
from linexport.models.ops.causal_linear_attention.feature_map import HadamardFeatureMap
from linexport.models.token_lm import TokenLM, TokenLMConfig


@dataclass
class LinearConfig(TokenLMConfig):
    feature_map: Literal["elu", "relu", "identity", "elementwise_product"] = "elu"
    eps: float = 1e-6  # the normalised form's o = φ(q)ᵀS / (φ(q)ᵀz + eps)
    chunk_size: int = 64  # parallel form only; results do not depend on it
    shift_tokens: bool = False  # token shift before attention (see the module doc)
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0: n_heads
    v_head_dim: int = 0  # value (and output) head width; 0: head_dim
    normalize: bool = True  # False: o = φ(q)ᵀS, no normaliser (fla's default)
    q_scale: float = 1.0  # φ(q) is multiplied by this before the op (fla: head_dim ** -0.5)
    out_norm: bool = False  # a per-head RMSNorm (weight [v_head_dim], norm_eps) on the output

    positive_fields = TokenLMConfig.positive_fields + ("chunk_size",)

    def __post_init__(self):
        super().__post_init__()
        require(self.eps > 0, f"config LinearConfig.eps must be > 0, got {self.eps}")
        require(self.n_kv_heads >= 0 and self.n_heads % self.kv_heads() == 0,
                f"config LinearConfig.n_kv_heads must divide n_heads={self.n_heads} (0: n_heads), "
                f"got {self.n_kv_heads}")
        require(self.v_head_dim >= 0, f"config LinearConfig.v_head_dim must be >= 0 (0: head_dim), "
                                      f"got {self.v_head_dim}")
        require(math.isfinite(self.q_scale) and self.q_scale > 0,
                f"config LinearConfig.q_scale must be a finite number > 0, got {self.q_scale}")

    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def value_head_dim(self) -> int:
        return self.v_head_dim or self.head_dim


class LinearAttention(RotaryQKV):
    def __init__(self, config: LinearConfig):
        super().__init__(config)
        if config.feature_map == "elementwise_product":
            self.feature_q = HadamardFeatureMap(config.head_dim)
            self.feature_k = HadamardFeatureMap(config.head_dim)
        if config.out_norm:
            self.out_norm = RMSNorm(config.value_head_dim(), config.norm_eps)
        self.groups = config.n_heads // config.kv_heads()

    def _phi(self, q, k):
        """φ on q and k [..., D] (heads split out), then q's scale."""
        fm = self.config.feature_map
        if fm == "elementwise_product":
            q, k = self.feature_q(q), self.feature_k(k)
        else:
            q, k = feature_map(q, fm), feature_map(k, fm)
        return (q * self.config.q_scale if self.config.q_scale != 1.0 else q), k

    def _qkv(self, x, cos, sin):
        """x [B, T, C] -> φ(q), φ(k), v each [B, H, T, D] (rotary before φ; GQA's k and v
        repeated to the query heads, kv head j // groups for query head j)."""
        q, k, v = super()._qkv(x, cos, sin)
        q, k = self._phi(q, k)
        if self.groups > 1:
            k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
        return q, k, v

    def _op_args(self):
        """The op's trailing arguments: nothing for the default normalised form (its graphs stay
        what they were), chunk and normalize=False for the unnormalised one."""
        return () if self.config.normalize else (self.config.chunk_size, False)

    def _norm_out(self, o):
        """The per-head output norm (``out_norm``) on o [..., Dv]."""
        return self.out_norm(o) if self.config.out_norm else o

    def forward(self, x, mask, cos, sin, state=None):
        """x [B, T, C], mask [B, T] bool, state {"kv": [B, H, Dk, Dv+1] ([B, H, Dk, Dv] unnormalised)}
        or None (zeros) -> (y [B, T, C], {"kv": ..., "shift": ...}: the state after each row's last
        real token)."""
        new = {}
        c = self.config
        if c.shift_tokens:
            prev = state["shift"] if state is not None else x.new_zeros(  # fp32 (fp64 for fp64 oracles)
                x.shape[0], (x.shape[-1] + 1) // 2, dtype=torch.promote_types(x.dtype, torch.float32))
            x, new["shift"] = token_shift(x, prev, mask.sum(1))
        q, k, v = self._qkv(x, cos, sin)
        k = k * mask[:, None, :, None].to(k.dtype)  # padded tokens add nothing to the state
        B, H, T, Dk = q.shape
        Dv = v.shape[-1]
        width = Dv + 1 if c.normalize else Dv
        past = q.new_zeros(B, H, Dk, width, dtype=torch.float32) if state is None else state["kv"]
        flat = [t.transpose(1, 2).reshape(B, T, -1) for t in (q, k, v)]  # the op's [B, T, H*D]
        o, kv = causal_linear_attention(*flat, past, H, float(c.eps), c.chunk_size, *self._op_args()[1:])
        o = self._norm_out(o.reshape(B, T, H, Dv).transpose(1, 2).to(v.dtype))  # [B, H, T, Dv]
        return self.out(o.transpose(1, 2).reshape(B, T, H * Dv)), {"kv": kv, **new}

    def step(self, x, state, position, cos, sin):
        """x [B, 1, C], state {"kv": [B, H, Dk, W]} -> (y [B, 1, C], new state). Rotary
        carries the position (cos/sin from ``step_rotary_tables``); the state does not depend on it."""
        new = {}
        c = self.config
        if c.shift_tokens:
            x, new["shift"] = token_shift_step(x, state["shift"])
        qk, v = self._qkv_step(x, cos, sin)  # the op's [B, T=1, H*D]: heads flat
        if self.uniform and c.feature_map != "elementwise_product":
            q, k = feature_map(qk, c.feature_map).chunk(2, dim=-1)  # φ on q and k at once
            if c.q_scale != 1.0:
                q = q * c.q_scale
        else:
            B, H, D = x.shape[0], c.n_heads, c.head_dim
            q, k = qk.split(self.sizes[:2], dim=-1)
            q, k = self._phi(q.view(B, 1, H, D), k.view(B, 1, -1, D))
            if self.groups > 1:
                k = k.repeat_interleave(self.groups, dim=2)
                v = v.view(B, 1, -1, c.value_head_dim()).repeat_interleave(self.groups, dim=2)
            q, k, v = q.reshape(B, 1, -1), k.reshape(B, 1, -1), v.reshape(B, 1, -1)
        o, kv = causal_linear_attention(q, k, v, state["kv"], c.n_heads, float(c.eps), *self._op_args())
        if c.out_norm:
            o = self.out_norm(o.view(*o.shape[:2], c.n_heads, -1)).flatten(2)
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
            if c.normalize:
                specs.append(StateSpec(f"{i}.kv", ("batch", c.n_heads, c.head_dim, c.value_head_dim() + 1),
                                       torch.float32,
                                       "numerator S = Σ φ(k) vᵀ with normaliser z = Σ φ(k) as last column"))
            else:
                specs.append(StateSpec(f"{i}.kv", ("batch", c.n_heads, c.head_dim, c.value_head_dim()),
                                       torch.float32, "S = Σ φ(k) vᵀ (unnormalised: no normaliser column)"))
            if c.shift_tokens:
                specs.append(StateSpec(f"{i}.shift", ("batch", (c.d_model + 1) // 2), torch.float32,
                                       "the previous token's normalised first-half features (token shift)"))
        return specs
