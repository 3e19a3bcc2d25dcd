"""Per-token decode latency at a given context length.

The context is real: one sequence of ``context`` tokens is prefilled, so whatever the model
keeps (a fixed-size recurrent state now, a growing KV cache in models to come) holds exactly
that many tokens. Its state is copied into the other ``batch - 1`` slots rather than prefilled
``batch`` times: the rows are then at the same context, and a batch x 16384 prefill would need
far more memory than the decode being measured. The context goes in chunks of at most
``chunk`` tokens (continued prefills: a TensorRT engine takes at most its profile's length).
"""

from __future__ import annotations

import time

import numpy as np

from linexport.runtime.ingest import DEFAULT_PREFILL_CHUNK, ingest

LATENCY_DOC = ("ms_per_token: wall time of one backend.decode call advancing all `batch` rows by one "
               "token (graph run plus copying the logits to the host; sampling excluded), median over "
               "`steps` calls after `warmup` untimed ones; every row holds `context` prefilled tokens")


def measure_decode(backend, vocab_size: int, context: int, batch: int, steps: int, warmup: int,
                   chunk: int = DEFAULT_PREFILL_CHUNK) -> dict:
    """``backend``: a runtime Backend with at least ``batch`` slots. Returns the raw timings."""
    prompt = np.random.default_rng(context).integers(0, vocab_size, context, dtype=np.int64)
    start = time.perf_counter()
    logits = ingest(backend, [prompt], [0], [0], chunk)
    prefill_s = time.perf_counter() - start
    for slot in range(1, batch):
        backend.copy_slot(0, slot)
    # Feed the model's own greedy tokens, as generation would; picking them is not timed.
    ids = np.repeat(logits.argmax(-1), batch).astype(np.int64)
    slots = np.arange(batch)  # one contiguous run: the backends' zero-copy decode path
    timed = []
    for i in range(warmup + steps):
        positions = np.full(batch, context + i, np.int64)
        start = time.perf_counter()
        logits = backend.decode(slots, ids, positions)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            timed.append(elapsed)
        ids = logits.argmax(-1).astype(np.int64)
    ms = [1e3 * t for t in timed]
    median = float(np.median(ms))
    return {"context": context, "status": "ok", "ms_per_token": median, "ms_samples": ms,
            "rows_tokens_per_s": 1e3 * batch / median, "context_prefill_seconds": prefill_s}
