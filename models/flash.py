"""GAU / FLASH language model (Hua et al. 2022, "Transformer Quality in Linear Time"), causal.

Mirrors the FLASH-pytorch package's ``FLASHTransformer`` so its checkpoints convert exactly
(``linexport convert --from flash-pytorch``): token embedding + scaled sinusoidal absolute
positions, FLASH layers (each a gated attention unit with its own residual), LayerNorm + linear
logits. One FLASH layer:

    x̂ = norm(x)  (scale norm or layer norm), token shift of the first half of x̂'s features
    v, gate = silu(W_h x̂)            [E each, E = expansion · D]
    z = silu(W_qk x̂)                 [S]  one shared low-dim base
    quad_q, lin_q, quad_k, lin_k = z · γ_i + β_i, then rotary on their first `rotary_dim` dims
    y = x + W_o (gate ⊙ mixed_chunk_attention(...))

State per layer (fp32, fixed size): ``lin_kv`` [B, S, E]; ``k_buf`` [B, C, 2S] and ``v_buf``
[B, C, E], a ring of the last C tokens; ``shift`` [B, ceil(D/2)] (the previous token's shifted
features).
``forward`` may continue from any such state (``position``, ``state``) exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from linexport.errors import LinexportError
from linexport.models.base import CausalLM, StateSpec, check_input_ids, check_position
from linexport.models.config import require
from linexport.models.layers import token_shift, token_shift_step
from linexport.models.ops.mixed_chunk_attention import chunk_mixed_attention, step_mixed_attention


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and rotary precision: fp32, or fp64 when the whole model runs in fp64 (oracle tests)."""
    return torch.promote_types(dtype, torch.float32)


@dataclass
class FlashConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    qk_dim: int = 128  # S: the shared query/key base
    expansion: float = 2.0  # E = int(expansion · d_model)
    chunk_size: int = 256  # C: FLASH's group size
    norm: Literal["scalenorm", "layernorm"] = "scalenorm"
    shift_tokens: bool = True
    attn_fn: Literal["relu2", "laplace"] = "relu2"
    rel_pos_bias: bool = True  # T5-style bucketed bias inside a chunk
    rel_pos_buckets: int = 32
    rel_pos_max_distance: int = 128
    rotary_dim: int = 32  # rotary on the first dims of q/k (interleaved pairs); 0 disables
    rotary_base: float = 10000.0
    abs_pos_emb: bool = True  # scaled sinusoidal absolute positions
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "qk_dim", "chunk_size", "rel_pos_buckets",
                     "rel_pos_max_distance"):
            require(getattr(self, name) >= 1, f"config FlashConfig.{name} must be >= 1, got {getattr(self, name)}")
        require(self.expansion > 0 and int(self.expansion * self.d_model) >= 1,
                f"config FlashConfig.expansion must give a hidden size >= 1, got {self.expansion}")
        require(0 <= self.rotary_dim <= self.qk_dim and self.rotary_dim % 2 == 0,
                f"config FlashConfig.rotary_dim must be even and in [0, qk_dim={self.qk_dim}], got {self.rotary_dim}")
        require(not self.abs_pos_emb or self.d_model % 2 == 0,
                f"config FlashConfig: sinusoidal positions need an even d_model, got {self.d_model}")
        require(self.rel_pos_buckets >= 2,
                f"config FlashConfig.rel_pos_buckets must be >= 2, got {self.rel_pos_buckets}")
        require(self.rel_pos_max_distance > self.rel_pos_buckets // 2,
                f"config FlashConfig.rel_pos_max_distance must exceed rel_pos_buckets // 2 = "
                f"{self.rel_pos_buckets // 2} (the log-spaced buckets start there), got {self.rel_pos_max_distance}")

    @property
    def hidden_dim(self) -> int:
        return int(self.expansion * self.d_model)


class ScaleNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.scale, self.eps = dim ** -0.5, eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x):
        # In fp32 for fp16 activations (as RMSNorm): a graph runtime may sum the squares in the
        # activation dtype, where fp16 loses what PyTorch's fp32 accumulation keeps.
        xf = x.to(_state_dtype(x.dtype))
        norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True) * self.scale
        return (xf / norm.clamp(min=self.eps) * self.g).to(x.dtype)


def t5_buckets(C: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """[C, C] bucket of the causal distance i - j (query offset i, key offset j) in a chunk."""
    i = torch.arange(C).unsqueeze(1)
    j = torch.arange(C).unsqueeze(0)
    n = (i - j).clamp(min=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.clamp(min=1).float() / max_exact)
                         / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return torch.where(n < max_exact, n, large)


def rotary_tables(positions: torch.Tensor, size: int, dim: int, base: float):
    """(cos, sin) [..., size] for positions [...]: rotary on interleaved pairs (x[2i], x[2i+1])
    of the first ``dim`` features; the features after them pass through (cos 1, sin 0). sin
    carries the pair's sign, so that ``rotary(x) = x·cos + x[..., pair_swap]·sin``. Computed
    once per call of the model and shared by its layers."""
    half = torch.arange(0, dim, 2, device=positions.device).float() / max(dim, 1)
    inv_freq = torch.zeros(size, device=positions.device)
    inv_freq[:dim] = (1.0 / base ** half).repeat_interleave(2)
    angles = positions.float().unsqueeze(-1) * inv_freq
    sign = torch.ones(size, device=positions.device)
    sign[0:dim:2] = -1.0
    return torch.cos(angles), torch.sin(angles) * sign


def pair_swap(size: int, dim: int) -> list[int]:
    """Feature order that swaps each interleaved pair of the first ``dim`` features."""
    return [i ^ 1 if i < dim else i for i in range(size)]


def rotary_interleaved(x: torch.Tensor, tables, dim: int) -> torch.Tensor:
    """Rotates interleaved pairs of x's first ``dim`` features; x [..., S], tables from
    ``rotary_tables`` broadcastable to x. In fp32 (fp64 for an fp64 x), returned in x's dtype."""
    if dim == 0:
        return x
    cos, sin = tables
    rot = x.to(_state_dtype(x.dtype))
    swapped = rot.index_select(-1, torch.tensor(pair_swap(x.shape[-1], dim), device=x.device))
    return (rot * cos.to(rot.dtype) + swapped * sin.to(rot.dtype)).to(x.dtype)


_ATTENTION_STATE = ("lin_kv", "k_buf", "v_buf")  # mixed_chunk_attention's state, in its order


class FlashLayer(nn.Module):
    def __init__(self, config: FlashConfig):
        super().__init__()
        c = config
        self.config = c
        self.norm = ScaleNorm(c.d_model, c.norm_eps) if c.norm == "scalenorm" else nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.to_hidden = nn.Linear(c.d_model, 2 * c.hidden_dim)
        self.to_qk = nn.Linear(c.d_model, c.qk_dim)
        self.gamma = nn.Parameter(torch.randn(4, c.qk_dim) * 0.02)  # quad_q, lin_q, quad_k, lin_k
        self.beta = nn.Parameter(torch.zeros(4, c.qk_dim))
        self.to_out = nn.Linear(c.hidden_dim, c.d_model)
        if c.rel_pos_bias:
            self.rel_pos_bias = nn.Embedding(c.rel_pos_buckets, 1)
        self.register_buffer("buckets", t5_buckets(c.chunk_size, c.rel_pos_buckets, c.rel_pos_max_distance),
                             persistent=False)

    def bias_table(self) -> torch.Tensor:
        """[C, C] additive bias of the quadratic scores."""
        C = self.config.chunk_size
        if not self.config.rel_pos_bias:
            return torch.zeros(C, C, device=self.to_qk.weight.device)
        weight = self.rel_pos_bias.weight
        return weight[self.buckets, 0].to(_state_dtype(weight.dtype)) * self.config.qk_dim ** 0.5

    def _project(self, normed, rope):
        """normed [..., D] (after token shift), rope: ``rotary_tables`` broadcastable to
        [..., S] (None: no rotary) -> (heads [..., 4, S]: quad_q, lin_q, quad_k, lin_k, rotated
        as one tensor; v; gate)."""
        v, gate = F.silu(self.to_hidden(normed)).chunk(2, dim=-1)
        heads = F.silu(self.to_qk(normed)).unsqueeze(-2) * self.gamma + self.beta
        if rope is not None:
            heads = rotary_interleaved(heads, tuple(t.unsqueeze(-2) for t in rope), self.config.rotary_dim)
        return heads, v, gate

    def rope(self, positions):
        """This layer's rotary tables for positions [...] (None without rotary)."""
        c = self.config
        return rotary_tables(positions, c.qk_dim, c.rotary_dim, c.rotary_base) if c.rotary_dim else None

    def forward(self, x, positions, lengths, state=None, offset=None, rope=None):
        """x [B, T, D]; positions [T] or [B, T] (absolute); lengths [B]; ``state``: this layer's
        state before x (None: fresh); ``offset`` [B]: the state's position mod C (None: 0);
        ``rope``: ``self.rope(positions)`` if the caller has it already
        -> (y [B, T, D], state after each sequence's last token)."""
        c = self.config
        normed = self.norm(x)
        B, T, D = x.shape
        prev_shift = (state["shift"] if state is not None
                      else x.new_zeros(B, (D + 1) // 2, dtype=_state_dtype(x.dtype)))
        inp, shift = token_shift(normed, prev_shift, lengths) if c.shift_tokens else (normed, prev_shift)
        heads, v, gate = self._project(inp, rope if rope is not None else self.rope(positions))
        quad_q, lin_q, quad_k, lin_k = heads.unbind(-2)
        parts = None if state is None else tuple(state[n] for n in _ATTENTION_STATE)
        out, parts = chunk_mixed_attention(
            quad_q, quad_k, lin_q, lin_k, v, self.bias_table(), c.chunk_size, c.attn_fn, lengths, parts, offset)
        state = {**dict(zip(_ATTENTION_STATE, parts)), "shift": shift}
        return x + self.to_out(gate * out), state

    def step(self, x, position, state, rope=None):
        """x [B, D], position [B] -> (y [B, D], new state); ``rope`` as ``forward``'s."""
        c = self.config
        normed = self.norm(x)
        prev_shift = state["shift"].to(_state_dtype(x.dtype))
        inp, shift = token_shift_step(normed, prev_shift) if c.shift_tokens else (normed, prev_shift)
        heads, v, gate = self._project(inp, rope if rope is not None else self.rope(position))  # heads [B, 4, S]
        parts = tuple(state[n] for n in _ATTENTION_STATE)
        out, parts = step_mixed_attention(heads[:, :2], heads[:, 2:], v, self.bias_table(), position, parts,
                                          c.attn_fn)
        new = {**dict(zip(_ATTENTION_STATE, parts)), "shift": shift}
        return x + self.to_out(gate * out), new


class FlashLM(CausalLM):
    arch = "flash"
    config_class = FlashConfig

    def __init__(self, config: FlashConfig):
        super().__init__(config)
        c = config
        self.token_emb = nn.Embedding(c.vocab_size, c.d_model)
        if c.abs_pos_emb:
            self.abs_pos_scale = nn.Parameter(torch.ones(1))
        self.layers = nn.ModuleList(FlashLayer(c) for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size)

    _STATE = (*_ATTENTION_STATE, "shift")

    def state_specs(self):
        c = self.config
        S, E, C = c.qk_dim, c.hidden_dim, c.chunk_size
        shapes = {"lin_kv": (S, E), "k_buf": (C, 2 * S), "v_buf": (C, E), "shift": ((c.d_model + 1) // 2,)}
        docs = {"lin_kv": "linear-attention state over every token before the last C (Σ lin_k vᵀ / C)",
                "k_buf": "ring of the last C tokens' quadratic | linear keys (row = position mod C)",
                "v_buf": "ring of the last C tokens' values (row = position mod C)",
                "shift": "the previous token's normalised first-half features (token shift)"}
        names = [n for n in self._STATE if c.shift_tokens or n != "shift"]
        return [StateSpec(f"{i}.{n}", ("batch", *shapes[n]), torch.float32, docs[n])
                for i in range(c.n_layers) for n in names]

    def _abs_pos(self, positions):
        """positions [...] -> [..., D] scaled sinusoidal embedding."""
        D = self.config.d_model
        inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, device=positions.device).float() / D))
        angles = positions.float().unsqueeze(-1) * inv_freq
        return torch.cat([angles.sin(), angles.cos()], dim=-1) * self.abs_pos_scale

    def forward(self, input_ids, lengths=None, return_state=False, position=None, state=None):
        """As ``CausalLM.forward``, and it may continue from a state: ``position`` [B] int64 =
        tokens already in ``state`` (None: 0; any value, rows may differ), ``state`` as ``step``
        takes it (None: ``initial_state``). Logits and state are those of one pass over the old
        tokens and these; a row's position + t is its token t's absolute position. ``lengths``
        count the new tokens and may be 0: that row keeps its state bit for bit (its logits are
        unspecified)."""
        c = self.config
        check_input_ids(input_ids, None, c.vocab_size)
        B, T = input_ids.shape
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self._check_continuation(input_ids, lengths, position, state)
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.int64, device=input_ids.device)
        positions = torch.arange(T, device=input_ids.device)
        if position is None and state is None:
            offset = None  # a fresh start
        else:
            position = position if position is not None else torch.zeros_like(lengths)
            state = state if state is not None else self.initial_state(B, input_ids.device)
            positions = position.unsqueeze(1) + positions
            offset = position % c.chunk_size
        x = self.token_emb(input_ids)
        if c.abs_pos_emb:
            x = x + self._abs_pos(positions).to(x.dtype)
        states = {}
        rope = self.layers[0].rope(positions)
        for i, layer in enumerate(self.layers):
            layer_state = None if state is None else self._layer_state(state, i, x)
            x, layer_state = layer(x, positions, lengths, layer_state, offset, rope)
            for name, value in layer_state.items():
                if c.shift_tokens or name != "shift":
                    states[f"{i}.{name}"] = value
        logits = self.lm_head(self.final_norm(x))
        return (logits, states) if return_state else logits

    def step(self, input_ids, position, state):
        c = self.config
        x = self.token_emb(input_ids)
        if c.abs_pos_emb:
            x = x + self._abs_pos(position).to(x.dtype)
        new_state = {}
        rope = self.layers[0].rope(position)
        for i, layer in enumerate(self.layers):
            x, out = layer.step(x, position, self._layer_state(state, i, x), rope)
            for name, value in out.items():
                if c.shift_tokens or name != "shift":
                    new_state[f"{i}.{name}"] = value
        return self.lm_head(self.final_norm(x)), new_state

    def _layer_state(self, state, i, x):
        """Layer i's entries of a model state; a zero shift where the config has no token shift."""
        c = self.config
        layer_state = {n: state[f"{i}.{n}"] for n in self._STATE if c.shift_tokens or n != "shift"}
        if not c.shift_tokens:
            layer_state["shift"] = x.new_zeros(x.shape[0], (c.d_model + 1) // 2)
        return layer_state

    def _check_continuation(self, input_ids, lengths, position, state):
        """Validates forward's lengths, position and state (eager only); raises LinexportError."""
        B, T = input_ids.shape
        if lengths is not None:
            if lengths.shape != (B,):
                raise LinexportError(f"expected lengths of shape [{B}], got {list(lengths.shape)}")
            if int(lengths.min()) < 0 or int(lengths.max()) > T:
                raise LinexportError(f"lengths (new tokens per sequence) must be in [0, {T}], got {lengths.tolist()}")
        if position is not None:
            check_position(position, B)
        if state is not None:
            self.check_state(state, B, _state_dtype(self.token_emb.weight.dtype))
