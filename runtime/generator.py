"""The generation loop: sequences in state slots, prefill once, then one decode step per token.

    gen = Generator(model, max_batch=4)
    seq = gen.add("def fib(n):", SamplingParams(max_new_tokens=64, temperature=0.7, seed=1))
    while not gen.is_done():
        for seq, token in gen.step():
            ...

Because the state is fixed-size, operations a KV-cache runtime must pay O(context) for are
O(state) here: ``snapshot``/``restore``/``fork`` copy one slot, beam search reorders slots.
The softmax baseline runs through the same loop; its slots are KV caches, so there these
operations (and keeping bystander rows in ``_decode``) do cost O(context).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence as Seq
from dataclasses import dataclass, field

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.sampling import SamplingParams, sample_token


@dataclass
class Sequence:
    """One sequence being decoded. ``position`` = tokens already folded into its state."""

    id: int
    slot: int
    params: SamplingParams
    tokens: list[int]
    prompt_len: int
    position: int
    logits: np.ndarray  # next-token logits [V]
    rng: np.random.Generator
    done: bool = False
    finish_reason: str | None = None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]


@dataclass
class Snapshot:
    """Everything needed to resume a sequence later, independent of its slot."""

    state: dict[str, np.ndarray]
    params: SamplingParams
    tokens: list[int]
    prompt_len: int
    position: int
    logits: np.ndarray
    rng_state: dict = field(repr=False, default_factory=dict)


class Generator:
    def __init__(self, model, max_batch: int | None = None):
        """``model``: a :class:`linexport.runtime.Model`; its backend's slots bound the batch."""
        self.model = model
        self.backend = model.backend
        self.max_batch = max_batch or self.backend.num_slots
        if self.max_batch > self.backend.num_slots:
            raise LinexportError(f"max_batch {self.max_batch} exceeds the backend's "
                                 f"{self.backend.num_slots} state slots")
        self._slots: list[Sequence | None] = [None] * self.max_batch
        self._ids = itertools.count()

    # -- sequences ------------------------------------------------------------------------
    @property
    def active(self) -> list[Sequence]:
        return [s for s in self._slots if s is not None]

    def is_done(self) -> bool:
        return all(s is None for s in self._slots)

    def add(self, prompt, params: SamplingParams | None = None) -> Sequence:
        """Prefills ``prompt`` (text or token ids) into a free slot; it decodes from the next step."""
        return self.add_many([prompt], params)[0]

    def add_many(self, prompts: Seq, params: SamplingParams | None = None) -> list[Sequence]:
        """Prefills several prompts in one ragged batch."""
        params = params or SamplingParams()
        encoded = [self._encode(p) for p in prompts]
        free = [i for i, s in enumerate(self._slots) if s is None]
        if len(encoded) > len(free):
            raise LinexportError(f"{len(encoded)} new sequences but only {len(free)} free state slots "
                                 f"(max_batch={self.max_batch}); wait for sequences to finish or "
                                 "create the Generator with a larger max_batch")
        lengths = np.array([len(e) for e in encoded], np.int64)
        ids = np.zeros((len(encoded), int(lengths.max())), np.int64)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = e
        slots = free[:len(encoded)]
        logits = self.backend.prefill(ids, lengths, slots)
        seqs = []
        for row, (slot, e) in enumerate(zip(slots, encoded)):
            seq = Sequence(next(self._ids), slot, params, list(e), len(e), len(e), logits[row].copy(),
                           np.random.default_rng(params.seed))
            self._slots[slot] = seq
            seqs.append(seq)
            if params.max_new_tokens == 0:
                self._finish(seq, "length")
        return seqs

    def remove(self, seq: Sequence):
        if 0 <= seq.slot < len(self._slots) and self._slots[seq.slot] is seq:
            self._slots[seq.slot] = None

    # -- decoding -------------------------------------------------------------------------
    def step(self) -> list[tuple[Sequence, int]]:
        """Picks one token for every active sequence and folds it into the state."""
        emitted, to_feed = [], []
        for seq in self.active:
            token = sample_token(seq.logits, seq.params, seq.rng, self._seen(seq))
            seq.tokens.append(token)
            emitted.append((seq, token))
            if token in seq.params.stop_tokens:
                self._finish(seq, "stop")
            elif len(seq.generated) >= seq.params.max_new_tokens:
                self._finish(seq, "length")
            else:
                to_feed.append(seq)
        if to_feed:
            self._decode({s.slot: s for s in to_feed})
        return emitted

    def append_tokens(self, seq: Sequence, tokens) -> None:
        """Feeds more input (e.g. the user's next turn) into a live sequence, one step per token."""
        for token in self._encode(tokens):
            seq.tokens.append(token)
            self._decode({seq.slot: seq}, feed=lambda s: token)
        seq.prompt_len = len(seq.tokens)

    def _decode(self, by_slot: dict[int, Sequence], feed: Callable | None = None):
        n = max(by_slot) + 1
        ids = np.zeros(n, np.int64)
        pos = np.zeros(n, np.int64)
        for slot, seq in by_slot.items():
            ids[slot] = feed(seq) if feed else seq.tokens[-1]
            pos[slot] = seq.position
        # Rows of other live sequences inside 0..n-1 must not advance: save and restore them.
        bystanders = {s.slot: self.backend.get_state(s.slot) for s in self.active[:]
                      if s.slot < n and s.slot not in by_slot}
        logits = self.backend.decode(ids, pos)
        for slot, state in bystanders.items():
            self.backend.set_state(slot, state)
        for slot, seq in by_slot.items():
            seq.logits = logits[slot].copy()
            seq.position += 1

    def _finish(self, seq: Sequence, reason: str):
        seq.done, seq.finish_reason = True, reason
        self.remove(seq)

    def _seen(self, seq: Sequence) -> np.ndarray | None:
        if seq.params.repetition_penalty == 1.0:
            return None
        return np.unique(np.asarray(seq.tokens, np.int64))

    def _encode(self, prompt) -> list[int]:
        ids = self.model.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise LinexportError("expected a non-empty prompt, got an empty one")
        bad = [t for t in ids if not 0 <= t < self.backend.vocab_size]
        if bad:
            raise LinexportError(f"token ids must be in [0, {self.backend.vocab_size}), got {bad[:5]}")
        return ids

    # -- state operations -----------------------------------------------------------------
    def snapshot(self, seq: Sequence) -> Snapshot:
        """A copy of the sequence's whole decoding state: O(state size), not O(context)."""
        return Snapshot(self.backend.get_state(seq.slot), copy.copy(seq.params), list(seq.tokens),
                        seq.prompt_len, seq.position, seq.logits.copy(), seq.rng.bit_generator.state)

    def restore(self, snap: Snapshot) -> Sequence:
        """Resumes a snapshot in a free slot as a new sequence."""
        free = [i for i, s in enumerate(self._slots) if s is None]
        if not free:
            raise LinexportError(f"no free state slot to restore into (max_batch={self.max_batch})")
        slot = free[0]
        self.backend.set_state(slot, snap.state)
        rng = np.random.default_rng()
        rng.bit_generator.state = snap.rng_state
        seq = Sequence(next(self._ids), slot, copy.copy(snap.params), list(snap.tokens), snap.prompt_len,
                       snap.position, snap.logits.copy(), rng)
        self._slots[slot] = seq
        return seq

    def fork(self, seq: Sequence, params: SamplingParams | None = None) -> Sequence:
        """A second sequence continuing from the same point (e.g. to sample alternatives)."""
        snap = self.snapshot(seq)
        if params is not None:
            snap.params = params
            snap.rng_state = np.random.default_rng(params.seed).bit_generator.state
        return self.restore(snap)

    # -- convenience ----------------------------------------------------------------------
    def generate(self, prompt, params: SamplingParams | None = None,
                 callback: Callable[[str], None] | None = None) -> Iterator[str]:
        """Streams the text of one sequence as it is generated (alone or beside others)."""
        seq = self.add(prompt, params)
        decode = self.model.tokenizer.stream_decoder()
        emitted = []
        while not (seq.done and len(seq.generated) == 0):
            for s, token in self.step():
                if s is seq:
                    piece = decode(token)
                    if piece:
                        emitted.append(piece)
                        if callback:
                            callback(piece)
                        yield piece
            if seq.done:
                break
        # The stream decoder holds back an incomplete character; at the end it is what the
        # whole-text decode makes of it (e.g. U+FFFD), so the stream equals decode(generated).
        whole, text = self.model.tokenizer.decode(seq.generated), "".join(emitted)
        if len(whole) > len(text) and whole.startswith(text):
            if callback:
                callback(whole[len(text):])
            yield whole[len(text):]

    def beam_search(self, prompt, num_beams: int, max_new_tokens: int,
                    length_penalty: float = 1.0) -> list[tuple[list[int], float]]:
        """Beam search by reordering state slots; returns (generated ids, score) best first.
        Needs an idle generator with at least ``num_beams`` slots."""
        if not self.is_done():
            raise LinexportError("beam search needs an idle Generator (no active sequences)")
        if not 1 <= num_beams <= self.max_batch:
            raise LinexportError(f"num_beams must be in [1, {self.max_batch}] (the slots), got {num_beams}")
        first = self.add(prompt, SamplingParams(max_new_tokens=max_new_tokens))
        position = first.position
        self.remove(first)
        beams = [([], 0.0)]  # the first reorder copies slot 0 into every beam's slot
        logits = first.logits[None]
        for _ in range(max_new_tokens):
            logp = _log_softmax(logits)  # [beams, V]
            scores = np.array([s for _, s in beams])[:, None] + logp
            flat = np.argsort(-scores, axis=None, kind="stable")[:num_beams]
            parents, tokens = np.unravel_index(flat, scores.shape)
            beams = [(beams[p][0] + [int(t)], float(scores[p, t])) for p, t in zip(parents, tokens)]
            self.backend.permute_slots([int(p) for p in parents])
            logits = self.backend.decode(np.array(tokens, np.int64), np.full(len(tokens), position, np.int64))
            position += 1
        return sorted(beams, key=lambda b: b[1] / (len(b[0]) ** length_penalty), reverse=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
