"""Names of the prefill and decode graphs' inputs and outputs (docs/DESIGN.md, "Contracts").

    prefill: input_ids int64 [batch, seq] (right-padded), lengths int64 [batch],
             position int64 [batch], past.{state}           (fixed-size states: continues)
             -> logits [batch, vocab] (or [batch, seq, vocab]), present.{state}
    decode:  input_ids int64 [batch, 1], position int64 [batch], past.{state}
             -> logits [batch, vocab], present.{state}

A fixed-size-state prefill continues each row from its state: ``position`` is the number of
tokens already folded into ``past`` (0 and zeros for a fresh sequence), ``lengths`` the number
of new tokens (0 passes the row's state through unchanged). A KV-cache prefill (the baselines)
starts from an empty cache and takes only ``input_ids`` and ``lengths``.

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


def io_names(states: list[str], continues: bool = True) -> dict:
    """Both graphs' input and output names, in order, for the state names ``states``; the
    prefill takes the past (``continues``) unless the states are KV caches."""
    fresh = [INPUT_IDS, LENGTHS]
    return {
        "prefill": {"inputs": [*fresh, POSITION, *map(past, states)] if continues else fresh,
                    "outputs": [LOGITS, *map(present, states)]},
        "decode": {"inputs": [INPUT_IDS, POSITION, *map(past, states)],
                   "outputs": [LOGITS, *map(present, states)]},
    }
