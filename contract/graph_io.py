"""Names of the prefill and decode graphs' inputs and outputs (docs/DESIGN.md, "Contracts").

    prefill: input_ids int64 [batch, seq] (right-padded), lengths int64 [batch]
             -> logits [batch, vocab] (or [batch, seq, vocab]), present.{state}
    decode:  input_ids int64 [batch, 1], position int64 [batch], past.{state}
             -> logits [batch, vocab], present.{state}

A state is named ``{layer}.{name}`` (e.g. ``0.kv``); its graph IO is ``past.{state}`` in and
``present.{state}`` out, so a runtime can bind one as the other's buffer.
"""

from __future__ import annotations

INPUT_IDS = "input_ids"
LENGTHS = "lengths"
POSITION = "position"
LOGITS = "logits"
PAST = "past."
PRESENT = "present."
GRAPHS = ("prefill", "decode")


def past(state: str) -> str:
    return PAST + state


def present(state: str) -> str:
    return PRESENT + state


def state_of(io_name: str) -> str | None:
    """``past.0.kv`` / ``present.0.kv`` -> ``0.kv``; any other name -> None."""
    for prefix in (PAST, PRESENT):
        if io_name.startswith(prefix):
            return io_name[len(prefix):]
    return None


def io_names(states: list[str]) -> dict:
    """Both graphs' input and output names, in order, for the state names ``states``."""
    return {
        "prefill": {"inputs": [INPUT_IDS, LENGTHS],
                    "outputs": [LOGITS, *map(present, states)]},
        "decode": {"inputs": [INPUT_IDS, POSITION, *map(past, states)],
                   "outputs": [LOGITS, *map(present, states)]},
    }
