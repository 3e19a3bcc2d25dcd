"""The shell shared by the block-structured archs (linear, softmax, reformer): their common config,
token embeddings, positions (rotary angles, or learned embeddings added to the input), the
pre-norm block, the loop over blocks in parallel and step form, the final norm and the
(optionally tied) LM head.

An arch supplies its config (a ``TokenLMConfig`` subclass), its attention class and the names of
its per-layer state. The attention's contract, written once here for every arch:

    forward(x [B, T, C], mask [B, T] bool, cos, sin, state=None) -> (y [B, T, C], {state name: tensor})
    step(x [B, C], {state name: tensor}, position [B], cos, sin) -> (y [B, C], {state name: tensor})

``cos``/``sin`` are the rotary angles [B, 1, T, D/2] (None with learned positions or none). A
fixed-size-state attention's ``forward`` continues from ``state`` (None: zeros), the tokens
sitting at the positions the angles carry; a KV-cache attention starts from an empty cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from linexport.errors import LinexportError
from linexport.models.base import (PAST_SEQ, CausalLM, StateSpec, check_input_ids, check_position,
                                   length_mask)
from linexport.models.config import require
from linexport.models.layers import MLP, RMSNorm, SwiGLU, rotary_angles, step_rotary_tables


@dataclass
class TokenLMConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    head_dim: int = 64
    d_ff: int = 1024
    pos_emb: Literal["rotary", "learned", "none"] = "rotary"  # "none": no positions (fla's linear_attn)
    rotary_base: float = 10000.0
    max_seq_len: int = 4096  # learned positions only; rotary has no limit
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu"] = "gelu"  # fc/proj GELU MLP, or gate/up/down SwiGLU of d_ff

    # The fields that must be >= 1; a subclass appends its own.
    positive_fields: ClassVar[tuple[str, ...]] = (
        "vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "d_ff", "max_seq_len")

    def __post_init__(self):
        for name in self.positive_fields:
            require(getattr(self, name) >= 1, f"config {type(self).__name__}.{name} must be >= 1, "
                                              f"got {getattr(self, name)}")

    # The attention's key/value sizes (RotaryQKV); an arch with grouped-query attention or value
    # heads of another width overrides them.
    def kv_heads(self) -> int:
        return self.n_heads

    def value_head_dim(self) -> int:
        return self.head_dim


class Block(nn.Module):
    """Pre-norm residual block: x + Attn(norm1(x)), then x + MLP(norm2(x)). ``attn_input`` and
    ``combine`` are the residual wiring, so a block with other wiring overrides only those."""

    def __init__(self, config: TokenLMConfig, attention: type[nn.Module]):
        super().__init__()
        self.norm1 = RMSNorm(config.d_model, config.norm_eps)
        self.attn = attention(config)
        self.norm2 = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = (SwiGLU if config.mlp == "swiglu" else MLP)(config.d_model, config.d_ff)

    def forward(self, x, mask, cos, sin, state=None):
        a, state = self.attn(self.norm1(self.attn_input(x)), mask, cos, sin, state)
        return self.combine(x, a), state

    def step(self, x, state, position, cos, sin):
        a, state = self.attn.step(self.norm1(self.attn_input(x)), state, position, cos, sin)
        return self.combine(x, a), state

    # -- the residual wiring ------------------------------------------------------------------
    @staticmethod
    def streams(x):
        """The embeddings -> what flows between blocks (here the one residual stream)."""
        return x

    @staticmethod
    def merge(h):
        """What flows between blocks -> the input of the final norm."""
        return h

    @staticmethod
    def attn_input(h):
        return h

    def combine(self, h, a):
        """The stream and the attention output -> the block's output."""
        h = h + a
        return h + self.mlp(self.norm2(h))


class TokenLM(CausalLM):
    """Subclasses set ``arch``, ``config_class``, ``attention`` and ``state_names`` and implement
    ``state_specs``; ``block`` may be swapped for one with other residual wiring."""

    attention: ClassVar[type[nn.Module]]
    state_names: ClassVar[tuple[str, ...]]  # one layer's state, e.g. ("kv",) -> "0.kv", "1.kv", ...
    block: ClassVar[type[Block]] = Block
    # The step shaped for the decode graph (RotaryQKV's archs): the stream keeps its time dim of
    # 1 ([B, 1, C], as the attention op takes it) and rotary comes as ``step_rotary_tables`` for
    # q's and k's heads laid flat, instead of cos/sin [B, 1, 1, D/2] and a [B, C] stream.
    flat_step: ClassVar[bool] = False

    def __init__(self, config: TokenLMConfig):
        # Blocks first: buffers drawn at construction (Reformer's rotations) then come from the
        # same random stream as always, so a seeded model is what it was.
        blocks = [self.block(config, self.attention) for _ in range(config.n_layers)]
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.pos_emb == "learned":
            self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(_init_weights)

    def forward(self, input_ids, lengths=None, return_state=False, position=None, state=None):
        """``position``/``state``: continue each row from ``state`` (``position`` tokens already
        folded in; None: a fresh sequence). ``lengths`` counts the new tokens, and may be 0."""
        if state is not None:
            self.check_state(state, input_ids.shape[0])
        x, mask, cos, sin = self.parallel_inputs(input_ids, lengths, position)
        h, states = self.block.streams(x), {}
        for i, block in enumerate(self.blocks):
            past = None if state is None else {name: state[f"{i}.{name}"] for name in self.state_names}
            h, layer = block(h, mask, cos, sin, past)
            states.update({f"{i}.{name}": layer[name] for name in self.state_names})
        logits = self.logits(self.block.merge(h))
        return (logits, states) if return_state else logits

    def step(self, input_ids, position, state):
        self.check_step(position, state)
        c = self.config
        if self.flat_step:
            x = self._embed_tokens(input_ids[:, None], position[:, None])  # [B, 1, C]
            cos = sin = None
            if c.pos_emb == "rotary":  # q's and k's heads, laid flat
                cos, sin = step_rotary_tables(position, c.head_dim, c.n_heads + c.kv_heads(), c.rotary_base)
        else:
            x, cos, sin = self.step_inputs(input_ids, position)
        h, new_state = self.block.streams(x), {}
        for i, block in enumerate(self.blocks):
            layer = {name: state[f"{i}.{name}"] for name in self.state_names}
            h, layer = block.step(h, layer, position, cos, sin)
            new_state.update({f"{i}.{name}": layer[name] for name in self.state_names})
        logits = self.logits(self.block.merge(h))
        return (logits.squeeze(1) if self.flat_step else logits), new_state

    def check_step(self, position, state):
        """Eager-only checks of a step's inputs; positions past the learned ones have no embedding."""
        c = self.config
        if c.pos_emb != "learned" or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if int(position.max()) >= c.max_seq_len:
            raise LinexportError(f"position {int(position.max())} exceeds this model's learned "
                                 f"positions (max_seq_len={c.max_seq_len}); use shorter inputs")

    def parallel_inputs(self, input_ids, lengths, position=None):
        """Checks input_ids [B, T], lengths [B] and position [B] (the first new token's index,
        None: 0); returns (x [B, T, C], mask [B, T] bool, cos, sin [B, 1, T, D/2] — None with
        learned positions or none)."""
        c = self.config
        check_input_ids(input_ids, lengths, c.vocab_size, min_length=0 if self.continues else 1)
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, T)
        if position is not None:
            check_position(position, B)
            positions = positions + position.unsqueeze(1)
        mask = length_mask(lengths, B, T, input_ids.device)
        if c.pos_emb == "learned":
            self._check_learned(positions, lengths)
            # A padded token (masked out) looks up position 0, so that padding after a row that
            # ends near the last learned position stays in the table; a real token past it
            # still fails (here, and in the graph's Gather).
            positions = torch.where(mask, positions, 0)
        x, cos, sin = self._embed(input_ids, positions)
        return x, mask, cos, sin

    def _check_learned(self, positions, lengths):
        """Eager only: a real token past the learned positions has no embedding."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        T = positions.shape[1]
        last = positions[:, -1] if lengths is None else (positions[:, 0] + lengths - 1)
        if int(last.max()) >= self.config.max_seq_len:
            raise LinexportError(f"position {int(last.max())} exceeds this model's learned positions "
                                 f"(max_seq_len={self.config.max_seq_len}, sequence length {T}); use "
                                 "shorter inputs")

    def step_inputs(self, input_ids, position):
        """input_ids [B], position [B] -> (x [B, C], cos, sin [B, 1, 1, D/2] or None)."""
        x, cos, sin = self._embed(input_ids[:, None], position[:, None])
        return x[:, 0], cos, sin

    def logits(self, x):
        return self.lm_head(self.norm(x))

    def _embed(self, input_ids, positions):
        """-> (x, cos, sin [B, 1, T, D/2], or None with learned positions or none)."""
        c = self.config
        x = self._embed_tokens(input_ids, positions)
        if c.pos_emb != "rotary":
            return x, None, None
        cos, sin = rotary_angles(positions, c.head_dim, c.rotary_base)
        return x, cos.unsqueeze(1), sin.unsqueeze(1)

    def _embed_tokens(self, input_ids, positions):
        """The token embeddings, plus the learned positions' where the model has them."""
        x = self.embed(input_ids)
        return x + self.pos_embed(positions) if self.config.pos_emb == "learned" else x


class KVCacheLM(TokenLM):
    """A TokenLM whose layer state is a KV cache (the baselines): ``{layer}.key`` /
    ``{layer}.value`` fp32 [B, H, past_seq, D], one entry per token so far, zeros at padding."""

    state_names = ("key", "value")
    key_doc: ClassVar[str]  # what the cached keys are, for the state specs
    continues = False

    def forward(self, input_ids, lengths=None, return_state=False, position=None, state=None):
        if position is not None or state is not None:
            raise LinexportError(f"the {self.arch} baseline's prefill starts from an empty KV cache; it "
                                 "cannot continue from a state: feed more tokens with step()")
        return super().forward(input_ids, lengths, return_state)

    def state_specs(self):
        c = self.config
        shape = ("batch", c.n_heads, PAST_SEQ, c.head_dim)
        specs = []
        for i in range(c.n_layers):
            specs.append(StateSpec(f"{i}.key", shape, torch.float32, self.key_doc))
            specs.append(StateSpec(f"{i}.value", shape, torch.float32, "values of every token so far"))
        return specs

    def check_step(self, position, state):
        """A position past the cache would write nowhere and read padding (eager only)."""
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            L = state["0.key"].shape[2]
            if int(position.min()) < 0 or int(position.max()) > L:
                raise LinexportError(
                    f"expected positions in [0, {L}] (the cache holds {L} entries), got "
                    f"{position.tolist()}; pass each sequence's token count as its position")
        super().check_step(position, state)


def _init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
