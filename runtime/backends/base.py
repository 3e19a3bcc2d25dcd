"""The interface every runtime backend implements (ONNX Runtime now, TensorRT next).

A backend owns a pool of ``num_slots`` state rows. Sequences live in slots; ``prefill`` writes
new sequences' states into their slots and ``decode`` advances the first ``n`` slots by one
token. Free slots inside that prefix are stepped too (their state is garbage and is
overwritten when a sequence joins), which keeps every decode step zero-copy: the pool's
leading rows are one contiguous block that the graph reads and writes in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from linexport.errors import LinexportError


class Backend(ABC):
    num_slots: int
    vocab_size: int
    state_names: list[str]

    @abstractmethod
    def prefill(self, input_ids: np.ndarray, lengths: np.ndarray, slots: Sequence[int]) -> np.ndarray:
        """input_ids [n, T] int64 right-padded, lengths [n] -> last-token logits [n, V] (fp32).
        Each sequence's state lands in ``slots[i]``."""

    @abstractmethod
    def decode(self, input_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """input_ids [n] and positions [n] for slots 0..n-1 -> logits [n, V] (fp32)."""

    @abstractmethod
    def get_state(self, slot: int) -> dict[str, np.ndarray]:
        """A host copy of one slot's state (a snapshot)."""

    @abstractmethod
    def set_state(self, slot: int, state: dict[str, np.ndarray]) -> None:
        """Overwrites one slot's state (restore)."""

    @abstractmethod
    def copy_slot(self, src: int, dst: int) -> None:
        """dst's state becomes a copy of src's (fork)."""

    @abstractmethod
    def permute_slots(self, order: Sequence[int]) -> None:
        """Slot i takes the state slot ``order[i]`` had (beam search reordering)."""


def checked_state(state: dict, name: str, shape: tuple) -> np.ndarray:
    """``state[name]`` as an array of one slot's ``shape`` (set_state's input check)."""
    if name not in state:
        raise LinexportError(f"expected a state holding {name!r}, got keys {sorted(state)}")
    value = np.asarray(state[name])
    if value.shape != tuple(shape):
        raise LinexportError(f"state {name}: expected shape {tuple(shape)}, got {value.shape}")
    return value
