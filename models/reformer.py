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

import torch
import torch.nn.functional as F
from torch import nn

from linexport.models.config import require
from linexport.models.layers import apply_rotary
from linexport.models.ops.lsh_attention import chunk_lsh_attention, step_lsh_attention
from linexport.models.token_lm import Block, KVCacheLM, TokenLMConfig


@dataclass
class ReformerConfig(TokenLMConfig):
    n_hashes: int = 2
    n_buckets: int = 8  # even: a rotation gives n_buckets / 2 projections and their negations
    bucket_size: int = 32  # the chunk length inside a sorted bucket

    positive_fields = TokenLMConfig.positive_fields + ("n_hashes", "bucket_size")

    def __post_init__(self):
        super().__post_init__()
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

    def forward(self, x, mask, cos, sin, state=None):
        """x [B, T, C], mask [B, T] -> (y [B, T, C], {key, value: [B, H, T, D] fp32, zero-padded})."""
        assert state is None, "a KV cache starts empty: KVCacheLM.forward refuses a past"
        c = self.config
        q, k_hat, v = self._qkv(x, cos, sin)
        o = chunk_lsh_attention(q, k_hat, v, self.rotations, c.n_buckets, c.bucket_size)
        B, H, T, D = o.shape
        keep = mask[:, None, :, None].to(torch.float32)
        return self.out(o.transpose(1, 2).reshape(B, T, H * D)), {"key": k_hat * keep,
                                                                  "value": v.float() * keep}

    def step(self, x, state, position, cos, sin):
        c = self.config
        q, k_hat, v = (t[:, :, 0] for t in self._qkv(x[:, None], cos, sin))
        o, key, value = step_lsh_attention(q, k_hat, v, state["key"], state["value"], position,
                                           self.rotations, c.n_buckets, c.bucket_size)
        return self.out(o.flatten(1)), {"key": key, "value": value}


class ReversibleBlock(Block):
    """The shell's block with reversible wiring: the stream is a pair (x1, x2) and
    y1 = x1 + Attn(norm1(x2)), y2 = x2 + MLP(norm2(y1))."""

    @staticmethod
    def streams(x):
        return x, x

    @staticmethod
    def merge(h):
        return (h[0] + h[1]) * 0.5

    @staticmethod
    def attn_input(h):
        return h[1]

    def combine(self, h, a):
        y1 = h[0] + a
        return y1, h[1] + self.mlp(self.norm2(y1))


class _ReversibleStack(torch.autograd.Function):
    """The blocks' forward without storing activations; backward recomputes each block's inputs
    from its outputs (x2 = y2 − MLP(y1), x1 = y1 − Attn(x2)) and back-propagates through a
    re-run of that block. Parameter gradients accumulate into ``.grad`` (use ``loss.backward()``)."""

    @staticmethod
    def forward(ctx, x1, x2, blocks, mask, cos, sin):
        with torch.no_grad():
            for block in blocks:
                (x1, x2), _ = block((x1, x2), mask, cos, sin)
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
                (r1, r2), _ = block((x1, x2), mask, cos, sin)
                torch.autograd.backward((r1, r2), (dy1, dy2))
            dy1, dy2, y1, y2 = x1.grad, x2.grad, x1.detach(), x2.detach()
        return dy1, dy2, None, None, None, None


class ReformerLM(KVCacheLM):
    arch = "reformer"
    config_class = ReformerConfig
    attention = LSHAttention
    block = ReversibleBlock
    key_doc = "unit keys k̂ = q/|q| of every token so far"

    def forward(self, input_ids, lengths=None, return_state=False):
        if return_state or not (self.training and torch.is_grad_enabled()):
            return super().forward(input_ids, lengths, return_state)
        # Training: no per-layer activations kept; the backward pass rebuilds them.
        x, mask, cos, sin = self.parallel_inputs(input_ids, lengths)
        x1, x2 = _ReversibleStack.apply(x, x, self.blocks, mask, cos, sin)
        return self.logits(self.block.merge((x1, x2)))
