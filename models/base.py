"""What every exportable model provides: a parallel prefill and a recurrent step over named state.

The state of a model is a flat ordered dict ``{"{layer}.{name}": tensor}``; export turns each
entry into the graph inputs ``past.{layer}.{name}`` and outputs ``present.{layer}.{name}``.
State tensors are fp32 whatever the activation dtype (sums grow with T and overflow fp16).

Most states are fixed-size. A KV cache (the softmax baseline) has one dynamic dim, named
``PAST_SEQ``: the number of cached tokens. It starts at 0 and a decode step returns it one longer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from linexport.errors import LinexportError


PAST_SEQ = "past_seq"  # the cache-length dim of a KV-cache state


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor. ``shape`` starts with the batch dim, given as the string "batch";
    the other dims are ints, except that a KV cache has one dim given as ``PAST_SEQ``."""

    name: str  # "{layer}.{name}", e.g. "0.kv" or "0.key"
    shape: tuple  # ("batch", 4, 64, 65) or ("batch", 4, "past_seq", 64)
    dtype: torch.dtype = torch.float32
    doc: str = ""


class CausalLM(nn.Module):
    """Base class: subclasses set ``arch`` and ``config_class`` and implement the four methods."""

    arch: ClassVar[str]
    config_class: ClassVar[type]
    # Whether forward continues from a state (fixed-size states: True) or starts from an empty
    # KV cache (the baselines: False); the exported prefill graph takes the past only if True.
    continues: ClassVar[bool] = True

    def __init__(self, config):
        super().__init__()
        self.config = config

    # -- parallel ---------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None,
                return_state: bool = False, position: torch.Tensor | None = None,
                state: dict[str, torch.Tensor] | None = None):
        """input_ids [B, T] int64 (right-padded), lengths [B] int64 (None: all T).

        Returns logits [B, T, V] (rows past a sequence's length are unspecified), plus the
        state after each sequence's last real token when ``return_state``. Linear in T.

        With ``continues``: row b continues from ``state`` (None: zeros), into which
        ``position[b]`` tokens are already folded (None: 0), exactly as one forward over the
        old and new tokens would; ``lengths[b]`` (the new tokens) may be 0, and the row's state
        then passes through unchanged.
        """
        raise NotImplementedError

    # -- recurrent --------------------------------------------------------------------------
    def state_specs(self) -> list[StateSpec]:
        raise NotImplementedError

    def initial_state(self, batch_size: int, device=None) -> dict[str, torch.Tensor]:
        """The state before any token: zeros, fp32, shapes from ``state_specs`` (a KV cache holds
        no entries yet: its ``PAST_SEQ`` dim is 0)."""
        state = {}
        for spec in self.state_specs():
            shape = tuple(batch_size if d == "batch" else 0 if d == PAST_SEQ else d for d in spec.shape)
            state[spec.name] = torch.zeros(shape, dtype=spec.dtype, device=device)
        return state

    def step(self, input_ids: torch.Tensor, position: torch.Tensor,
             state: dict[str, torch.Tensor]):
        """One token per sequence. input_ids [B] int64, position [B] int64 (0-based index of
        this token in its sequence). Returns (logits [B, V], new state)."""
        raise NotImplementedError

    def check_state(self, state, batch: int, dtype: torch.dtype = torch.float32):
        """Eager-only checks of a state handed to forward: exactly the entries of
        ``state_specs()``, each a ``dtype`` tensor of the spec's shape with ``batch`` rows."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        specs = self.state_specs()
        names = {s.name for s in specs}
        got = set(state) if isinstance(state, dict) else set()
        if not isinstance(state, dict) or got != names:
            what = f"{len(state)} entries" if isinstance(state, dict) else type(state).__name__
            raise LinexportError(f"expected the state entries of state_specs(), got {what}: missing "
                                 f"{sorted(names - got)}, unknown {sorted(got - names)}")
        for spec in specs:
            shape, value = (batch, *spec.shape[1:]), state[spec.name]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != dtype:
                found = (f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor)
                         else type(value).__name__)
                raise LinexportError(f"expected state {spec.name!r} {dtype} {list(shape)}, got {found}; pass "
                                     "the state a prefill or step returned")

    # -- helpers shared by the archs --------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None,
                full_logits: bool = False, position: torch.Tensor | None = None,
                state: dict[str, torch.Tensor] | None = None):
        """Returns (logits of each sequence's last real token [B, V] — or [B, T, V] when
        ``full_logits`` — , state after the last real token). ``position``/``state``: as forward."""
        if position is None and state is None:  # a KV-cache arch's forward takes neither
            logits, state = self.forward(input_ids, lengths, return_state=True)
        else:
            logits, state = self.forward(input_ids, lengths, return_state=True, position=position, state=state)
        if full_logits:
            return logits, state
        return last_token_logits(logits, lengths), state

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)


def last_token_logits(logits: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """logits [B, T, V], lengths [B] -> [B, V] at index lengths-1."""
    if lengths is None:
        return logits[:, -1]
    idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
    return logits.gather(1, idx).squeeze(1)


def check_input_ids(input_ids: torch.Tensor, lengths: torch.Tensor | None, vocab_size: int,
                    min_length: int = 1):
    """Validates the parallel inputs; raises LinexportError with the fix. ``min_length`` 0: a
    row may add no token (a continuing prefill passes its state through)."""
    if input_ids.dim() != 2 or input_ids.dtype != torch.int64:
        raise LinexportError(f"expected input_ids int64 [batch, seq], got {input_ids.dtype} "
                             f"{list(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise LinexportError("expected at least one token per sequence, got seq length 0")
    if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab_size:
            raise LinexportError(f"token ids must be in [0, {vocab_size}), got range [{lo}, {hi}]")
        if lengths is not None:
            if lengths.shape != input_ids.shape[:1]:
                raise LinexportError(f"expected lengths of shape [{input_ids.shape[0]}], got "
                                     f"{list(lengths.shape)}")
            if int(lengths.min()) < min_length or int(lengths.max()) > input_ids.shape[1]:
                raise LinexportError(f"lengths must be in [{min_length}, {input_ids.shape[1]}], got "
                                     f"{lengths.tolist()}")


def check_position(position: torch.Tensor, batch: int):
    """Validates a prefill's start positions (int64 [B], >= 0); eager only."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if not isinstance(position, torch.Tensor) or position.dtype != torch.int64 or position.shape != (batch,):
        got = f"{position.dtype} {list(position.shape)}" if isinstance(position, torch.Tensor) else repr(position)
        raise LinexportError(f"expected position int64 [{batch}] (tokens already in each row's state), got {got}")
    if batch and int(position.min()) < 0:
        raise LinexportError(f"position must be >= 0 (tokens already in each row's state), got {position.tolist()}")


def length_mask(lengths: torch.Tensor | None, batch: int, seq: int, device) -> torch.Tensor:
    """[B, T] bool, True at real (non-padded) positions."""
    pos = torch.arange(seq, device=device)
    if lengths is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    return pos.unsqueeze(0) < lengths.unsqueeze(1)
