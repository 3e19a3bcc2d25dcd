"""Reformer baseline (Kitaev et al. 2020, "Reformer: The Efficient Transformer"), causal.

Shared-QK LSH attention (models/ops/lsh_attention.py: ``n_hashes`` rounds, ``n_buckets``
buckets, chunks of ``bucket_size`` within each sorted bucket) in reversible residual layers:
the activations are two streams, ``y1 = x1 + Attn(norm(x2))``, ``y2 = x2 + MLP(norm(y1))``, so a
layer's inputs can be recomputed from its outputs. Training (``torch.is_grad_enabled()`` in
train mode) uses that: no per-layer activations are stored, the backward pass rebuilds them
(``_ReversibleStack``). The model output is the mean of the two streams. Positions: rotary on
the shared q/k before hashing, or learned absolute embeddings.

State per layer: ``{layer}.key`` (the unit keys k̂, after rotary) and ``{layer}.value``, fp32
[B, H, past_seq, D] — a KV cache like the softmax baseline's; buckets are recomputed from it.
The random rotations are fixed buffers (saved in the checkpoint), rounded to fp16-exact values
so that an fp16 copy of the model hashes exactly like the fp32 one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from linexport.models.config import require
from linexport.models.layers import MLP, RMSNorm, apply_rotary
from linexport.models.ops.lsh_attention import chunk_lsh_attention, step_lsh_attention
from linexport.models.softmax import _check_step
from linexport.models.token_lm import TokenLM, kv_cache_specs


@dataclass
class ReformerConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    head_dim: int = 64
    d_ff: int = 1024
    n_hashes: int = 2
    n_buckets: int = 8  # even: a rotation gives n_buckets / 2 projections and their negations
    bucket_size: int = 32  # the chunk length inside a sorted bucket
    pos_emb: Literal["rotary", "learned"] = "rotary"
    rotary_base: float = 10000.0
    max_seq_len: int = 4096  # learned positions only
    tie_embeddings: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "d_ff", "n_hashes",
                     "bucket_size", "max_seq_len"):
            require(getattr(self, name) >= 1, f"config ReformerConfig.{name} must be >= 1, got "
                                              f"{getattr(self, name)}")
        require(self.n_buckets >= 2 and self.n_buckets % 2 == 0,
                f"config ReformerConfig.n_buckets must be even and >= 2, got {self.n_buckets}")


class LSHAttention(nn.Module):
    def __init__(self, config: ReformerConfig):
        super().__init__()
        self.config = config
        c, inner = config, config.n_heads * config.head_dim
        self.qk = nn.Linear(c.d_model, inner, bias=False)  # shared: keys are the normalised queries
        self.v = nn.Linear(c.d_model, inner, bias=False)
        self.out = nn.Linear(inner, c.d_model, bias=False)
        rotations = torch.randn(c.n_heads, c.n_hashes, c.head_dim, c.n_buckets // 2).half().float()
        self.register_buffer("rotations", rotations)

    def _qkv(self, x, cos, sin):
        """x [B, T, C] -> q, k̂ (unit rows), v each [B, H, T, D]."""
        B, T, _ = x.shape
        H, D = self.config.n_heads, self.config.head_dim
        q = self.qk(x).view(B, T, H, D).transpose(1, 2)
        v = self.v(x).view(B, T, H, D).transpose(1, 2)
        if cos is not None:
            q = apply_rotary(q, cos, sin)
        return q, F.normalize(q.float(), dim=-1), v

    def forward(self, x, mask, cos, sin):
        """x [B, T, C], mask [B, T] -> (y [B, T, C], key, value [B, H, T, D] fp32, zero-padded)."""
        c = self.config
        q, k_hat, v = self._qkv(x, cos, sin)
        o = chunk_lsh_attention(q, k_hat, v, self.rotations, c.n_buckets, c.bucket_size)
        B, H, T, D = o.shape
        keep = mask[:, None, :, None].to(torch.float32)
        return self.out(o.transpose(1, 2).reshape(B, T, H * D)), k_hat * keep, v.float() * keep

    def step(self, x, position, key, value, cos, sin):
        c = self.config
        q, k_hat, v = (t[:, :, 0] for t in self._qkv(x[:, None], cos, sin))
        o, key, value = step_lsh_attention(q, k_hat, v, key, value, position, self.rotations,
                                           c.n_buckets, c.bucket_size)
        return self.out(o.flatten(1)), key, value


class ReversibleBlock(nn.Module):
    def __init__(self, config: ReformerConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.d_model, config.norm_eps)
        self.attn = LSHAttention(config)
        self.norm2 = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config.d_model, config.d_ff)

    def forward(self, x1, x2, mask, cos, sin):
        a, key, value = self.attn(self.norm1(x2), mask, cos, sin)
        y1 = x1 + a
        return y1, x2 + self.mlp(self.norm2(y1)), key, value

    def step(self, x1, x2, position, key, value, cos, sin):
        a, key, value = self.attn.step(self.norm1(x2), position, key, value, cos, sin)
        y1 = x1 + a
        return y1, x2 + self.mlp(self.norm2(y1)), key, value


class _ReversibleStack(torch.autograd.Function):
    """The blocks' forward without storing activations; backward recomputes each block's inputs
    from its outputs (x2 = y2 − MLP(y1), x1 = y1 − Attn(x2)) and back-propagates through a
    re-run of that block. Parameter gradients accumulate into ``.grad`` (use ``loss.backward()``)."""

    @staticmethod
    def forward(ctx, x1, x2, blocks, mask, cos, sin):
        with torch.no_grad():
            for block in blocks:
                x1, x2, _, _ = block(x1, x2, mask, cos, sin)
        ctx.blocks, ctx.extra = blocks, (mask, cos, sin)
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        y1, y2 = ctx.saved_tensors
        mask, cos, sin = ctx.extra
        for block in reversed(ctx.blocks):
            with torch.no_grad():
                x2 = y2 - block.mlp(block.norm2(y1))
                x1 = y1 - block.attn(block.norm1(x2), mask, cos, sin)[0]
            with torch.enable_grad():
                x1, x2 = x1.detach().requires_grad_(), x2.detach().requires_grad_()
                r1, r2, _, _ = block(x1, x2, mask, cos, sin)
                torch.autograd.backward((r1, r2), (dy1, dy2))
            dy1, dy2, y1, y2 = x1.grad, x2.grad, x1.detach(), x2.detach()
        return dy1, dy2, None, None, None, None


class ReformerLM(TokenLM):
    arch = "reformer"
    config_class = ReformerConfig

    def __init__(self, config: ReformerConfig):
        super().__init__(config, [ReversibleBlock(config) for _ in range(config.n_layers)])

    def state_specs(self):
        return kv_cache_specs(self.config, "unit keys k̂ = q/|q| of every token so far")

    def forward(self, input_ids, lengths=None, return_state=False):
        x, mask, cos, sin = self.parallel_inputs(input_ids, lengths)
        states = {}
        if self.training and torch.is_grad_enabled() and not return_state:
            x1, x2 = _ReversibleStack.apply(x, x, self.blocks, mask, cos, sin)
        else:
            x1, x2 = x, x
            for i, block in enumerate(self.blocks):
                x1, x2, states[f"{i}.key"], states[f"{i}.value"] = block(x1, x2, mask, cos, sin)
        logits = self.logits((x1 + x2) * 0.5)
        return (logits, states) if return_state else logits

    def step(self, input_ids, position, state):
        _check_step(self.config, position, state["0.key"])
        x, cos, sin = self.step_inputs(input_ids, position)
        x1, x2, new_state = x, x, {}
        for i, block in enumerate(self.blocks):
            x1, x2, new_state[f"{i}.key"], new_state[f"{i}.value"] = block.step(
                x1, x2, position, state[f"{i}.key"], state[f"{i}.value"], cos, sin)
        return self.logits((x1 + x2) * 0.5), new_state
