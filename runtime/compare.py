"""`linexport compare`: one export run by two backends on the same inputs, output by output.

Both backends get the same ragged batch of random prompts: prefill (logits and every state),
then ``steps`` decode steps on the same greedy tokens (chosen from the reference), comparing
logits at every step and the states after the last. Typical use: TensorRT engines against
ONNX Runtime running the graphs they were built from.

Tolerances (relative, ``max|a - b| / max|b|``): fp32 graphs must agree to ``FP32_REL_TOL``.
fp16 graphs run in fp16 on both sides but with different kernels and summation orders; each
layer rounds to fp16 (unit roundoff 4.9e-4) and the two sides' roundings do not cancel, so
they are allowed ``FP16_REL_TOL``. States are fp32 on both sides but are sums of fp16
activations, so they share that allowance.
"""

from __future__ import annotations

import numpy as np

from linexport.errors import LinexportError
from linexport.contract.checks import FP32_REL_TOL, Check, errors

FP16_REL_TOL = 2e-2
DEFAULT_TOL = {"fp32": FP32_REL_TOL, "fp16": FP16_REL_TOL}


def compare_backends(reference, candidate, precision: str, batch: int = 3, seq: int = 37, steps: int = 8,
                     seed: int = 0, rel_tol: float | None = None) -> list[Check]:
    """``reference`` and ``candidate``: runtime backends over the same export (each with at least
    ``batch`` state slots). Returns one Check per output of each phase."""
    if reference.vocab_size != candidate.vocab_size or reference.state_names != candidate.state_names:
        raise LinexportError(f"expected two backends over one model, got vocab {reference.vocab_size} vs "
                             f"{candidate.vocab_size} and states {reference.state_names} vs {candidate.state_names}")
    for backend in (reference, candidate):
        if backend.num_slots < batch:
            raise LinexportError(f"expected backends with at least {batch} slots, got {backend.num_slots}")
    if batch < 1 or seq < 1 or steps < 0:
        raise LinexportError(f"expected batch >= 1, seq >= 1, steps >= 0, got {batch}, {seq}, {steps}")
    tol = rel_tol if rel_tol is not None else DEFAULT_TOL[precision]
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, reference.vocab_size, (batch, seq), dtype=np.int64)
    # Ragged: full, about half, and single-token prompts (padding must not leak into states).
    lengths = np.linspace(seq, 1, batch).round().astype(np.int64)
    slots = list(range(batch))

    checks = []

    def check(what, got, ref):
        checks.append(Check(what, *errors(got, ref), tol))

    ref_logits = reference.prefill(ids, lengths, slots)
    got_logits = candidate.prefill(ids, lengths, slots)
    check("prefill logits", got_logits, ref_logits)
    _check_states(check, "prefill", reference, candidate, slots)

    worst = None
    positions = lengths.copy()
    for step in range(steps):
        tokens = ref_logits.argmax(-1).astype(np.int64)
        ref_logits = reference.decode(slots, tokens, positions)
        got = candidate.decode(slots, tokens, positions)
        err = errors(got, ref_logits)
        worst = err if worst is None or err[1] > worst[1] else worst
        positions += 1
    if steps:
        checks.append(Check(f"decode x{steps} logits (worst step)", *worst, tol))
        _check_states(check, f"decode x{steps}", reference, candidate, slots)
    return checks


def _check_states(check, phase, reference, candidate, slots):
    ref = [reference.get_state(s) for s in slots]
    got = [candidate.get_state(s) for s in slots]
    for name in reference.state_names:
        # Per slot: a KV cache's length differs between slots of a ragged batch.
        pairs = [(g[name], r[name]) for g, r in zip(got, ref)]
        mismatched = [(g, r) for g, r in pairs if np.shape(g) != np.shape(r)]
        if mismatched:  # errors() rates a shape mismatch infinite
            check(f"{phase} present.{name}", *mismatched[0])
            continue
        check(f"{phase} present.{name}", np.concatenate([np.ravel(g) for g, _ in pairs]),
              np.concatenate([np.ravel(r) for _, r in pairs]))
