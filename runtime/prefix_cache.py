"""A prefix cache: the state after a token prefix, kept so that a new sequence starting with that
prefix (a system prompt, an earlier turn of a chat) restores it and prefills only the rest.

Because the state is fixed-size, an entry costs O(state) bytes and a hit O(state) to restore,
however long the prefix — a KV cache would cost O(prefix) for both. The cache is bounded in
bytes and evicts the least recently used entry first.

    cache = PrefixCache(max_bytes=256 << 20)
    gen = Generator(model, prefix_cache=cache)
    gen.cache_prefix(system_prompt)   # or let prompts fill it: each prompt's state is kept
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from linexport.errors import LinexportError


@dataclass(frozen=True)
class CachedPrefix:
    tokens: tuple[int, ...]
    state: dict[str, np.ndarray]  # one slot's state after the prefix (host arrays; never modified)
    logits: np.ndarray  # the next-token logits [V] after the prefix

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.state.values()) + self.logits.nbytes + 8 * len(self.tokens)


class PrefixCache:
    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
            raise LinexportError(f"expected PrefixCache max_bytes to be an int >= 1, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[int, ...], CachedPrefix] = OrderedDict()  # oldest first
        self._lengths: Counter[int] = Counter()  # prefix length -> entries of that length
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens) -> bool:
        return tuple(int(t) for t in tokens) in self._entries

    def lookup(self, tokens: Sequence[int]) -> CachedPrefix | None:
        """The longest cached prefix of ``tokens`` (it may be all of them), now the most recently
        used; None if none is cached. Cost: one hash per distinct cached prefix length."""
        tokens = tuple(int(t) for t in tokens)
        for length in sorted(self._lengths, reverse=True):
            if length <= len(tokens):
                entry = self._entries.get(tokens[:length])
                if entry is not None:
                    self._entries.move_to_end(entry.tokens)
                    self.hits += 1
                    return entry
        self.misses += 1
        return None

    def insert(self, tokens: Sequence[int], state: dict[str, np.ndarray], logits: np.ndarray) -> bool:
        """Keeps (a copy of) the state after ``tokens``, evicting least recently used entries
        until it fits. An entry larger than the whole cache is not kept (returns False)."""
        tokens = tuple(int(t) for t in tokens)
        if not tokens:
            raise LinexportError("expected a non-empty prefix to cache")
        entry = CachedPrefix(tokens, {k: np.array(v, copy=True) for k, v in state.items()},
                             np.array(logits, np.float32, copy=True))
        for v in (*entry.state.values(), entry.logits):
            v.flags.writeable = False  # a restore copies out of it; nothing writes into an entry
        if entry.nbytes > self.max_bytes:
            return False
        if tokens in self._entries:
            self._remove(tokens)
        while self.nbytes + entry.nbytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
        self._entries[tokens] = entry
        self._lengths[len(tokens)] += 1
        self.nbytes += entry.nbytes
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._lengths.clear()
        self.nbytes = 0

    def _remove(self, tokens: tuple[int, ...]) -> None:
        entry = self._entries.pop(tokens)
        self.nbytes -= entry.nbytes
        self._lengths[len(tokens)] -= 1
        if not self._lengths[len(tokens)]:
            del self._lengths[len(tokens)]
