"""The interface every runtime backend implements (ONNX Runtime, TensorRT).

A backend owns a pool of ``num_slots`` state rows. Sequences live in slots, and every call
that changes state names the slots it changes: ``prefill(..., slots)`` writes new sequences'
states into ``slots``, ``decode(slots, ...)`` advances exactly ``slots`` by one token. **A slot
that is not named keeps its state bit for bit** (free or live, whatever its index): a
sequence's state changes only when that sequence advances.

``prefill`` continues each named slot: row i starts from ``positions[i]`` tokens already in
``slots[i]``'s state (0: a fresh sequence, whatever the slot held before: it starts from zeros)
and folds its ``lengths[i]`` new tokens in, exactly as one prefill over all of them would.
``continues_prefill`` is False for the KV-cache baselines: their prefill starts every row from
an empty cache and refuses ``positions > 0`` (their runtime appends by decode steps). How a backend keeps that cheap
(zero-copy when the named slots form one contiguous block of its pools, a gather of the named
rows otherwise) is in its module docstring; no backend ever pays for the slots it leaves alone.
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
    continues_prefill: bool = True

    @abstractmethod
    def prefill(self, input_ids: np.ndarray, lengths: np.ndarray, slots: Sequence[int],
                positions: np.ndarray | None = None) -> np.ndarray:
        """input_ids [n, T] int64 right-padded, lengths [n] (new tokens, >= 0), positions [n]
        (tokens already in each slot's state; None: all 0) -> last-new-token logits [n, V]
        (fp32; unspecified for a row of length 0). Row i continues ``slots[i]``'s state (from
        zeros where positions[i] == 0) and leaves it there; no other slot changes."""

    @abstractmethod
    def decode(self, slots: Sequence[int], input_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """slots [n] (distinct), input_ids [n] and positions [n] -> logits [n, V] (fp32).

        Row i feeds ``input_ids[i]`` at ``positions[i]`` to the sequence in ``slots[i]`` and
        advances that slot's state; row i of the logits is its next-token distribution. Every
        slot not in ``slots`` keeps its state bit for bit."""

    @abstractmethod
    def get_state(self, slot: int) -> dict[str, np.ndarray]:
        """A host copy of one slot's state (a snapshot)."""

    @abstractmethod
    def set_state(self, slot: int, state: dict[str, np.ndarray]) -> None:
        """Overwrites one slot's state (restore)."""

    @abstractmethod
    def copy_slot(self, src: int, dst: int) -> None:
        """dst's state becomes a copy of src's (fork); no other slot changes."""

    @abstractmethod
    def permute_slots(self, order: Sequence[int]) -> None:
        """Slot i takes the state slot ``order[i]`` had, for i < len(order) (beam search
        reordering); slots from len(order) on keep theirs."""

    def close(self) -> None:
        """Releases what the backend holds outside Python's memory (device buffers, streams,
        CUDA graphs). Host-memory backends hold nothing of the kind: a no-op. The backend is
        unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- argument checks shared by the backends ------------------------------------------
    def _check_slot(self, slot, what: str = "slot") -> int:
        if isinstance(slot, (bool, np.bool_)) or not isinstance(slot, (int, np.integer)):
            raise LinexportError(f"expected {what} to be an int slot index, got {slot!r}")
        if not 0 <= slot < self.num_slots:
            raise LinexportError(f"expected {what} in [0, {self.num_slots}) (the backend's state slots), "
                                 f"got {slot}; create the Model with more num_slots")
        return int(slot)

    def _check_slots(self, slots, rows: int, what: str) -> np.ndarray:
        """``slots`` as an int64 array [rows] of distinct in-range slot indices."""
        arr = np.asarray(slots)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise LinexportError(f"{what}: expected slots as a 1-D sequence of ints, got {slots!r}")
        arr = arr.astype(np.int64)
        if len(arr) != rows:
            raise LinexportError(f"{what}: expected one slot per row ({rows} rows), got {len(arr)} slots "
                                 f"{arr.tolist()}")
        if not 1 <= rows <= self.num_slots:
            raise LinexportError(f"{what}: expected 1..{self.num_slots} rows (the backend's state slots), "
                                 f"got {rows}")
        bad = arr[(arr < 0) | (arr >= self.num_slots)]
        if bad.size:
            raise LinexportError(f"{what}: expected slots in [0, {self.num_slots}), got {bad.tolist()}; "
                                 "create the Model with more num_slots")
        if len(np.unique(arr)) != len(arr):
            raise LinexportError(f"{what}: expected distinct slots (one sequence per slot), got "
                                 f"{arr.tolist()}: a slot advanced twice in one step would lose a token")
        return arr

    def _check_decode_args(self, slots, input_ids, positions):
        """(slots, input_ids, positions) as int64 arrays [n], after the checks every decode makes."""
        ids = np.asarray(input_ids).reshape(-1) if np.ndim(input_ids) == 2 else np.asarray(input_ids)
        pos = np.asarray(positions)
        if ids.ndim != 1 or pos.ndim != 1 or len(ids) != len(pos):
            raise LinexportError(f"decode: expected input_ids [n] and positions [n], got shapes "
                                 f"{np.shape(input_ids)} and {np.shape(positions)}")
        slots = self._check_slots(slots, len(ids), "decode")
        return slots, ids.astype(np.int64), pos.astype(np.int64)

    def _check_prefill_args(self, input_ids, lengths, slots, positions):
        """(input_ids [n, T], lengths [n], slots [n], positions [n]) as int64 arrays after the
        checks every prefill makes; a backend that does not continue refuses positions > 0."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64) if _integral(input_ids) else None
        lens = np.ascontiguousarray(lengths, dtype=np.int64) if _integral(lengths) else None
        if ids is None or lens is None or ids.ndim != 2 or lens.shape != (ids.shape[0],) or ids.shape[1] < 1:
            raise LinexportError(f"prefill: expected int input_ids [n, T >= 1] and lengths [n], got shapes "
                                 f"{np.shape(input_ids)} and {np.shape(lengths)}")
        n, T = ids.shape
        slots = self._check_slots(slots, n, "prefill")
        pos = np.zeros(n, np.int64) if positions is None else np.asarray(positions)
        if pos.shape != (n,) or not _integral(pos):
            raise LinexportError(f"prefill: expected positions as {n} ints (tokens already in each slot's "
                                 f"state), got {positions!r:.200}")
        pos = pos.astype(np.int64)
        least = 0 if self.continues_prefill else 1
        if lens.min() < least or lens.max() > T:
            raise LinexportError(f"prefill: expected lengths in [{least}, {T}] (new tokens per row, "
                                 f"at most the padded width), got {lens.tolist()}")
        if pos.min() < 0:
            raise LinexportError(f"prefill: expected positions >= 0, got {pos.tolist()}")
        if not self.continues_prefill and pos.any():
            raise LinexportError("prefill: this export's prefill starts from an empty KV cache and cannot "
                                 f"continue a sequence (positions {pos.tolist()}); feed more tokens to a "
                                 "KV-cache sequence with decode steps (Generator.append_tokens does)")
        lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
        if lo < 0 or hi >= self.vocab_size:
            raise LinexportError(f"prefill: token ids must be in [0, {self.vocab_size}), got range [{lo}, {hi}]")
        return ids, lens, slots, pos

    def _check_order(self, order) -> list[int]:
        order = [int(o) for o in order]
        if len(order) > self.num_slots or any(not 0 <= o < self.num_slots for o in order):
            raise LinexportError(f"permute_slots: expected at most {self.num_slots} entries in "
                                 f"[0, {self.num_slots}), got {order}")
        return order


def _integral(values) -> bool:
    arr = np.asarray(values)
    return arr.dtype.kind in "iu" or (arr.size == 0 and arr.dtype.kind == "f")


def last_token_logits(logits: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A prefill graph's logits as ``Backend.prefill`` returns them, [n, V] fp32: a
    ``--full-logits`` graph's [n, T, V] cut to each row's last new token (row 0 of T where a
    row has none: unspecified, as the contract says)."""
    if logits.ndim == 3:
        logits = logits[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    return logits.astype(np.float32, copy=False)


def contiguous_run(slots: np.ndarray) -> int | None:
    """The first slot if ``slots`` is ``start, start+1, ..., start+n-1`` (in that order), else None."""
    start = int(slots[0])
    return start if np.array_equal(slots, np.arange(start, start + len(slots))) else None


def check_pool_size(num_slots: int, bytes_per_slot: int, what: str) -> None:
    """Refuses a ``num_slots`` whose pools could never fit in this machine's memory, before
    anything is allocated (numpy would raise a bare MemoryError, or the OS kill the process)."""
    import os

    if isinstance(num_slots, bool) or not isinstance(num_slots, (int, np.integer)) or num_slots < 1:
        raise LinexportError(f"expected num_slots to be an int >= 1, got {num_slots!r}")
    need = int(num_slots) * int(bytes_per_slot)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: nothing to compare against
        return
    if need > have:
        raise LinexportError(f"expected {what} that fit in memory: num_slots={num_slots} needs "
                             f"{need / 2**30:.1f} GiB ({bytes_per_slot / 2**20:.2f} MiB per slot), this "
                             f"machine has {have / 2**30:.1f} GiB; lower num_slots")


def checked_state(state: dict, name: str, shape: tuple) -> np.ndarray:
    """``state[name]`` as an array of one slot's ``shape`` (set_state's input check)."""
    if name not in state:
        raise LinexportError(f"expected a state holding {name!r}, got keys {sorted(state)}")
    value = checked_values(state[name], name)
    if value.shape != tuple(shape):
        raise LinexportError(f"state {name}: expected shape {tuple(shape)}, got {value.shape}")
    return value


def checked_values(value, name: str) -> np.ndarray:
    """A state tensor someone hands in: real floating-point numbers, all finite. A NaN or Inf
    in a state poisons every later token of the sequence (sampling over NaN probabilities
    fails, greedy emits token 0 forever), so it is refused where it enters."""
    value = np.asarray(value)
    if value.dtype.kind != "f":
        raise LinexportError(f"state {name}: expected floating-point values (the state is float32), got "
                             f"dtype {value.dtype}")
    if not np.isfinite(value).all():
        raise LinexportError(f"state {name}: expected finite values, got {int((~np.isfinite(value)).sum())} "
                             "NaN or Inf entries; restore a snapshot taken from a live sequence")
    return value
