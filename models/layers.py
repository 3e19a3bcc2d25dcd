"""Small building blocks shared by the architectures."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # x / sqrt(mean(x²) + eps) * w, written as the pattern ONNX Runtime fuses into one
        # SimplifiedLayerNormalization (the rsqrt-and-multiply form stays five nodes).
        xf = x.float()
        xf = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.proj(torch.nn.functional.gelu(self.fc(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """The gated MLP of LLaMA-style models (and fla's GatedMLP): down(silu(gate(x)) ⊙ up(x)),
    bias-free."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


def rotary_angles(positions: torch.Tensor, dim: int, base: float):
    """positions [...] int64 -> (cos, sin) [..., dim // 2] fp32 for the first 2*(dim//2) dims."""
    half = dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float32, device=positions.device) / max(half, 1))
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates pairs (x[i], x[i + half]) of the last dim; an odd last dim passes through.

    x [B, H, T, D] with cos/sin [B, 1, T, D // 2] (or [B, H, D] with [B, 1, D // 2])."""
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


def step_rotary_tables(position: torch.Tensor, head_dim: int, heads: int, base: float):
    """One step's rotary for ``heads`` heads laid flat: position [B] -> (cos, sin) [B, 1,
    heads * head_dim] such that ``x·cos + x[..., rotary_partner(head_dim, heads)]·sin`` is
    ``apply_rotary`` (with ``rotary_angles``' angles) of each head of a flat x [B, 1, heads *
    head_dim]: sin carries the sign, an odd last feature passes through (cos 1, sin 0). One
    product, cos and sin per step, shared by every layer."""
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float32) / max(half, 1))  # rotary_angles'
    per_head = torch.cat([inv_freq, inv_freq, torch.zeros(head_dim - 2 * half)])
    sign = torch.cat([-torch.ones(half), torch.ones(half), torch.zeros(head_dim - 2 * half)])
    angles = position.to(torch.float32).view(-1, 1, 1) * per_head.repeat(heads).to(position.device)
    return torch.cos(angles), torch.sin(angles) * sign.repeat(heads).to(position.device)


def rotary_partner(head_dim: int, heads: int) -> torch.Tensor:
    """Feature index of each flat feature's rotary partner (i <-> i + D/2 in every head)."""
    half = head_dim // 2
    one = [d + half if d < half else d - half if d < 2 * half else d for d in range(head_dim)]
    return torch.tensor([h * head_dim + d for h in range(heads) for d in one])


def token_shift(normed: torch.Tensor, prev: torch.Tensor, lengths: torch.Tensor):
    """Token shift over a block of tokens: the first ``ceil(D/2)`` features of each token are
    replaced by the previous token's (``prev`` for the first one), so attention sees the exact
    previous token; the rest pass through.

    normed [B, T, D], prev [B, ceil(D/2)] (the state: the token before this block's first one),
    lengths [B] (real tokens per row, may be 0) -> (shifted [B, T, D], new state [B, ceil(D/2)]
    in prev's dtype: the first half of each row's last real token, or prev where lengths is 0).
    """
    B, T, D = normed.shape
    half = (D + 1) // 2
    shifted = torch.cat([prev.to(normed.dtype).unsqueeze(1), normed[..., :half]], dim=1)[:, :T]
    last = (lengths - 1).clamp(min=0).view(B, 1, 1).expand(B, 1, half)
    new = normed[..., :half].gather(1, last).squeeze(1).to(prev.dtype)
    new = torch.where((lengths > 0).unsqueeze(1), new, prev)  # no new token: kept
    return torch.cat([shifted, normed[..., half:]], dim=-1), new


def token_shift_step(normed: torch.Tensor, prev: torch.Tensor):
    """``token_shift`` for one token: normed [B, D] (or [B, 1, D]), prev [B, ceil(D/2)] ->
    (shifted, normed's shape; new state: normed's first half [B, ceil(D/2)], in prev's dtype)."""
    half = (normed.shape[-1] + 1) // 2
    return (torch.cat([prev.to(normed.dtype).view(*normed.shape[:-1], half), normed[..., half:]], -1),
            normed[..., :half].reshape(prev.shape).to(prev.dtype))


class RotaryQKV(nn.Module):
    """The fused bias-free q/k/v projection (rotary on q and k) and output projection that the
    linear and softmax archs share, so their attention differs only in what it does with them.

    The config's ``kv_heads()`` and ``value_head_dim()`` size k and v (grouped-query attention,
    value heads wider or narrower than key heads: the linear arch's options); by default both
    are n_heads and head_dim, and q, k, v come out of one [B, T, 3, H, D] view."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        H, D, Hkv, Dv = config.n_heads, config.head_dim, config.kv_heads(), config.value_head_dim()
        self.sizes = [H * D, Hkv * D, Hkv * Dv]  # q | k | v in the fused projection's output
        self.uniform = Hkv == H and Dv == D
        self.qkv = nn.Linear(config.d_model, sum(self.sizes), bias=False)
        self.out = nn.Linear(H * Dv, config.d_model, bias=False)
        self.register_buffer("rotary_partner", rotary_partner(D, H + Hkv), persistent=False)

    def _qkv(self, x, cos, sin):
        """x [B, T, C] -> q [B, H, T, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv] (q and k rotated
        when cos is given)."""
        B, T, _ = x.shape
        c = self.config
        H, D = c.n_heads, c.head_dim
        if self.uniform:
            q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = self.qkv(x).split(self.sizes, dim=-1)
            q = q.view(B, T, H, D).transpose(1, 2)
            k = k.view(B, T, c.kv_heads(), D).transpose(1, 2)
            v = v.view(B, T, c.kv_heads(), c.value_head_dim()).transpose(1, 2)
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def _qkv_step(self, x, cos, sin):
        """One token, heads laid flat (what the decode graph runs: no per-head reshapes, q and
        k rotated together by one gather and two products): x [B, 1, C] -> (qk [B, 1, (H +
        Hkv)·D] (q's heads, then k's), v [B, 1, Hkv·Dv]). cos/sin from ``step_rotary_tables``
        for H + Hkv heads, or None."""
        qk, v = self.qkv(x).split([self.sizes[0] + self.sizes[1], self.sizes[2]], dim=-1)
        if cos is not None:
            qk = qk * cos.to(qk.dtype) + qk.index_select(-1, self.rotary_partner) * sin.to(qk.dtype)
        return qk, v
