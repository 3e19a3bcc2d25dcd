"""Appending tokens to a live sequence (a chat's next turn): one continued prefill against one
decode step per token, measured in the same process on the same state.

A sequence of ``context`` tokens is ingested into slot 0 and its state snapshotted
(``get_state``). From that snapshot each time (``set_state``), the same ``tokens`` new tokens go
in either as a chunked continued prefill (``runtime.ingest``, ``chunk`` tokens a call) or as
``tokens`` decode steps. Both must end in the same next-token argmax, or the two timings did
not do the same work and a LinexportError says so. A KV-cache baseline's prefill cannot
continue: only its token-by-token time exists.
"""

from __future__ import annotations

import time

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.ingest import ingest

APPEND_DOC = ("append: `tokens` new tokens fed to a live sequence of `context` tokens, from the same state "
              "snapshot each run. continued_seconds: one chunked continued prefill (runtime.ingest, `chunk` "
              "tokens per call); token_by_token_seconds: `tokens` backend.decode calls; each the median of "
              "`repeats` timed runs after one untimed one; speedup = token_by_token_seconds / "
              "continued_seconds. continued_seconds is null (with continued_reason) for a KV-cache "
              "baseline, whose prefill cannot continue")
NOT_CONTINUED = "not available: this export's prefill starts from an empty KV cache, it appends by decode steps"


def measure_append(backend, vocab_size: int, context: int, tokens: int, chunk: int, repeats: int) -> dict:
    """``backend``: a runtime Backend (slot 0 is used). Returns the raw timings."""
    rng = np.random.default_rng(context)
    prompt = rng.integers(0, vocab_size, context, dtype=np.int64)
    new = rng.integers(0, vocab_size, tokens, dtype=np.int64)
    start = time.perf_counter()
    ingest(backend, [prompt], [0], [0], chunk)
    prefill_s = time.perf_counter() - start
    snapshot = backend.get_state(0)

    def continued():
        return ingest(backend, [new], [0], [context], chunk)[0]

    def token_by_token():
        slots, positions = np.zeros(1, np.int64), np.arange(context, context + tokens, dtype=np.int64)
        for i in range(tokens):
            logits = backend.decode(slots, new[i:i + 1], positions[i:i + 1])
        return logits[0]

    def timed(append):
        samples = []
        for i in range(1 + max(1, repeats)):  # the first run is untimed: sessions and arenas warm up
            backend.set_state(0, snapshot)
            start = time.perf_counter()
            logits = append()
            if i:
                samples.append(time.perf_counter() - start)
        return samples, logits

    row = {"context": context, "tokens": tokens, "chunk": chunk, "status": "ok",
           "context_prefill_seconds": prefill_s}
    step_samples, step_logits = timed(token_by_token)
    row.update(token_by_token_seconds=float(np.median(step_samples)), token_by_token_samples=step_samples,
               next_token=int(step_logits.argmax()))
    if not backend.continues_prefill:
        return {**row, "continued_seconds": None, "continued_samples": [], "continued_reason": NOT_CONTINUED,
                "speedup": None}
    samples, logits = timed(continued)
    if int(logits.argmax()) != row["next_token"]:
        raise LinexportError(f"append: the continued prefill's next token ({int(logits.argmax())}) differs from "
                             f"the decode steps' ({row['next_token']}) after the same {tokens} tokens at context "
                             f"{context}: the two paths did not compute the same thing (max |logit difference| "
                             f"{float(np.abs(logits - step_logits).max()):.3g})")
    median = float(np.median(samples))
    return {**row, "continued_seconds": median, "continued_samples": samples, "continued_reason": None,
            "speedup": row["token_by_token_seconds"] / median}
