"""Next-token selection in numpy: greedy, temperature, top-k, top-p, repetition penalty.

Each sequence owns its own ``numpy.random.Generator`` so a seeded sequence draws the same
tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from linexport.errors import LinexportError


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already seen
    seed: int | None = None
    stop_tokens: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for name in ("max_new_tokens", "top_k"):
            _require_int(getattr(self, name), name)
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(value):
                raise LinexportError(f"{name} must be a finite number, got {value!r}")
        if self.seed is not None:
            _require_int(self.seed, "seed")
            if self.seed < 0:
                raise LinexportError(f"seed must be None or an int >= 0, got {self.seed}")
        checks = [
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
        ]
        for ok, message in checks:
            if not ok:
                raise LinexportError(message)
        if isinstance(self.stop_tokens, (str, bytes)) or not hasattr(self.stop_tokens, "__iter__"):
            raise LinexportError(f"stop_tokens must be a sequence of int token ids, got {self.stop_tokens!r}")
        self.stop_tokens = tuple(_require_int(t, "stop_tokens entry") for t in self.stop_tokens)
        if any(t < 0 for t in self.stop_tokens):
            raise LinexportError(f"stop_tokens must be token ids >= 0, got {list(self.stop_tokens)}")


def _require_int(value, name: str) -> int:
    """An int (or numpy integer), not a bool and not a float: 65.7 as a token id is a mistake,
    not token 65."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise LinexportError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL-style: seen tokens' positive logits are divided by ``penalty``, negative multiplied."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    logits = logits.copy()
    vals = logits[seen]
    logits[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                 seen: np.ndarray | None = None) -> int:
    """logits [V] (any float dtype) -> token id."""
    logits = logits.astype(np.float64)
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    logits = logits / params.temperature
    if 0 < params.top_k < logits.size:
        kth = np.partition(logits, -params.top_k)[-params.top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = order[: int(np.searchsorted(cum, params.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(probs.size, p=probs))
