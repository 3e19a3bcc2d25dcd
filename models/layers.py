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
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.proj(torch.nn.functional.gelu(self.fc(x), approximate="tanh"))


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


class RotaryQKV(nn.Module):
    """The fused bias-free q/k/v projection (rotary on q and k) and output projection that the
    linear and softmax archs share, so their attention differs only in what it does with them."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        inner = config.n_heads * config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.out = nn.Linear(inner, config.d_model, bias=False)

    def _qkv(self, x, cos, sin):
        """x [B, T, C] -> q, k, v each [B, H, T, D] (q and k rotated when cos is given)."""
        B, T, _ = x.shape
        H, D = self.config.n_heads, self.config.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v
