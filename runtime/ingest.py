"""Chunked ingestion: folding token rows of any length into state slots, ``chunk`` tokens a call.

Each call is one continued prefill (``Backend.prefill(ids, lengths, slots, positions)``) over
the next ``chunk`` tokens of every row that still has some, so the prefill's working memory
depends on ``chunk``, not on the prompt: a fixed-size state carries everything the next chunk
needs. The result equals one prefill over whole rows (the graph continues exactly, GAU's partial
chunk included). Only the named slots change, and each only by its own row.

A KV-cache baseline's prefill cannot continue (``continues_prefill`` False): its rows go in one
call, whatever their length — which is the memory a KV cache costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from linexport.errors import LinexportError

DEFAULT_PREFILL_CHUNK = 4096  # tokens per prefill call unless a backend or the user says otherwise


def ingest(backend, rows: Sequence[Sequence[int]], slots: Sequence[int], positions: Sequence[int],
           chunk: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Folds ``rows[i]`` (token ids, non-empty) into ``slots[i]``, whose state holds
    ``positions[i]`` tokens already (0: a fresh sequence), at most ``chunk`` tokens per row and
    call. ``progress(n)`` is told after each call how many tokens it folded in. Returns each
    row's last-token logits [n, V] (fp32)."""
    check_chunk(chunk)
    rows = [np.asarray(r, np.int64).reshape(-1) for r in rows]
    if any(len(r) == 0 for r in rows):
        raise LinexportError("expected at least one token per row to ingest, got an empty row")
    lengths = np.array([len(r) for r in rows], np.int64)
    slots = np.asarray(slots, np.int64)
    positions = np.asarray(positions, np.int64)
    if not backend.continues_prefill:  # one call (its prefill refuses positions > 0 itself)
        chunk = int(lengths.max())
    logits = np.zeros((len(rows), backend.vocab_size), np.float32)
    for start in range(0, int(lengths.max()), chunk):
        active = np.flatnonzero(lengths > start)  # rows with tokens left; the others are done
        take = np.minimum(lengths[active] - start, chunk)
        ids = np.zeros((len(active), int(take.max())), np.int64)
        for i, row in enumerate(active):
            ids[i, :take[i]] = rows[row][start:start + take[i]]
        out = backend.prefill(ids, take, slots[active], positions[active] + start)
        logits[active] = out
        if progress is not None:
            progress(int(take.sum()))
    return logits


def check_chunk(chunk) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise LinexportError(f"expected prefill_chunk to be an int >= 1 (tokens per prefill call), got {chunk!r}")
    return int(chunk)
