"""The generation loop: sequences in state slots, prefill once, then one decode step per token.

    gen = Generator(model, max_batch=4)
    seq = gen.add("def fib(n):", SamplingParams(max_new_tokens=64, temperature=0.7, seed=1))
    while not gen.is_done():
        for seq, token in gen.step():
            ...

Every call that changes state names the slots it advances: ``step`` the live sequences that
take a token, ``append_tokens`` only the sequence it feeds (one continued prefill, in chunks of
``prefill_chunk`` tokens: see runtime/ingest.py). A slot that is not named keeps its state bit
for bit, so a sequence's state changes only when that sequence advances, and nothing is saved
or restored around a step. Prompts are ingested chunk by chunk too, so a prompt of any length
costs the memory of one chunk; with a ``prefix_cache`` (runtime/prefix_cache.py) a prompt that
starts with a cached prefix restores that prefix's state and prefills only the rest.

Because the state is fixed-size, operations a KV-cache runtime must pay O(context) for are
O(state) here: ``snapshot``/``restore`` copy one slot to and from the host, ``fork`` copies
one slot on the backend's device, beam search reorders slots. The softmax baseline runs
through the same loop; its slots are KV caches, so there these operations cost O(context).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence as Seq
from dataclasses import dataclass, field

import numpy as np

from linexport.errors import LinexportError
from linexport.runtime.ingest import DEFAULT_PREFILL_CHUNK, check_chunk, ingest
from linexport.runtime.prefix_cache import PrefixCache
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
    def __init__(self, model, max_batch: int | None = None, prefill_chunk: int | None = None,
                 prefix_cache: PrefixCache | None = None):
        """``model``: a :class:`linexport.runtime.Model`; its backend's slots bound the batch.
        ``prefill_chunk``: tokens per prefill call (default: the Model's); ``prefix_cache``: a
        :class:`PrefixCache` that prompts are looked up in and added to (None: no caching)."""
        self.model = model
        self.backend = model.backend
        self.max_batch = max_batch or self.backend.num_slots
        if self.max_batch > self.backend.num_slots:
            raise LinexportError(f"max_batch {self.max_batch} exceeds the backend's "
                                 f"{self.backend.num_slots} state slots")
        self.prefill_chunk = check_chunk(prefill_chunk or getattr(model, "prefill_chunk", DEFAULT_PREFILL_CHUNK))
        if prefix_cache is not None and not isinstance(prefix_cache, PrefixCache):
            raise LinexportError(f"expected prefix_cache to be a PrefixCache or None, got {type(prefix_cache).__name__}")
        if prefix_cache is not None and not self.backend.continues_prefill:
            raise LinexportError("a prefix cache needs a prefill that continues from a state; this export's "
                                 "state is a KV cache (a baseline), whose prefill starts empty")
        self.prefix_cache = prefix_cache
        self._slots: list[Sequence | None] = [None] * self.max_batch
        self._ids = itertools.count()
        # Learned-position models hold at most this many tokens (None: no limit).
        self._max_positions = getattr(getattr(model, "manifest", None), "max_positions", None)

    # -- sequences ------------------------------------------------------------------------
    @property
    def active(self) -> list[Sequence]:
        return [s for s in self._slots if s is not None]

    def is_done(self) -> bool:
        return all(s is None for s in self._slots)

    def add(self, prompt, params: SamplingParams | None = None,
            progress: Callable[[int], None] | None = None) -> Sequence:
        """Prefills ``prompt`` (text or token ids) into a free slot; it decodes from the next step.
        ``progress(n)`` is told after each prefill chunk how many tokens it ingested."""
        return self.add_many([prompt], params, progress)[0]

    def add_many(self, prompts: Seq, params: SamplingParams | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Sequence]:
        """Prefills several prompts in one ragged batch (chunk by chunk; from the prefix cache
        where a prompt starts with a cached prefix)."""
        params = params or SamplingParams()
        encoded = [self._encode(p) for p in prompts]
        limit = self._max_positions
        if limit is not None and max(map(len, encoded), default=0) > limit:
            raise LinexportError(f"expected prompts of at most {limit} tokens (this model has {limit} learned "
                                 f"positions), got {max(map(len, encoded))}; shorten the prompt")
        free = [i for i, s in enumerate(self._slots) if s is None]
        if len(encoded) > len(free):
            raise LinexportError(f"{len(encoded)} new sequences but only {len(free)} free state slots "
                                 f"(max_batch={self.max_batch}); wait for sequences to finish or "
                                 "create the Generator with a larger max_batch")
        slots = free[:len(encoded)]
        logits = self._prefill_prompts(encoded, slots, progress)
        seqs = []
        for row, (slot, e) in enumerate(zip(slots, encoded)):
            seq = Sequence(next(self._ids), slot, params, list(e), len(e), len(e), logits[row].copy(),
                           np.random.default_rng(params.seed))
            self._slots[slot] = seq
            seqs.append(seq)
            if self.prefix_cache is not None:
                self.prefix_cache.insert(e, self.backend.get_state(slot), seq.logits)
            if params.max_new_tokens == 0:
                self._finish(seq, "length")
        return seqs

    def _prefill_prompts(self, encoded: list[list[int]], slots: list[int], progress) -> np.ndarray:
        """Ingests each prompt into its slot from scratch, or from the longest cached prefix."""
        logits = np.zeros((len(encoded), self.backend.vocab_size), np.float32)
        rows, row_slots, positions, where = [], [], [], []
        for row, (tokens, slot) in enumerate(zip(encoded, slots)):
            hit = self.prefix_cache.lookup(tokens) if self.prefix_cache is not None else None
            start = 0
            if hit is not None:
                self.backend.set_state(slot, hit.state)  # O(state), however long the prefix
                start = len(hit.tokens)
                logits[row] = hit.logits
                if progress is not None:
                    progress(start)
            if start < len(tokens):
                rows.append(tokens[start:])
                row_slots.append(slot)
                positions.append(start)
                where.append(row)
        if rows:
            logits[where] = ingest(self.backend, rows, row_slots, positions, self.prefill_chunk, progress)
        return logits

    def cache_prefix(self, prefix, progress: Callable[[int], None] | None = None) -> None:
        """Prefills ``prefix`` (text or token ids) and keeps its state in the prefix cache (in a
        free slot, given back at once), so later prompts that start with it skip its prefill."""
        if self.prefix_cache is None:
            raise LinexportError("cache_prefix needs a Generator created with a prefix_cache")
        seq = self.add(prefix, SamplingParams(max_new_tokens=1), progress)
        self.remove(seq)

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
            elif len(seq.generated) >= seq.params.max_new_tokens or self._full(seq):
                self._finish(seq, "length")
            else:
                to_feed.append(seq)
        if to_feed:
            self._decode(to_feed, [s.tokens[-1] for s in to_feed])
        return emitted

    def append_tokens(self, seq: Sequence, tokens, progress: Callable[[int], None] | None = None) -> None:
        """Feeds more input (e.g. the user's next turn) into a live sequence: one continued
        prefill (chunk by chunk), or one decode step per token where the export's prefill cannot
        continue (a KV-cache baseline). Only ``seq``'s slot advances; every other sequence is left
        as it was."""
        self._check_live(seq, "append tokens to")
        tokens = self._encode(tokens)
        limit = self._max_positions
        if limit is not None and seq.position + len(tokens) > limit:
            raise LinexportError(f"expected at most {limit - seq.position} more tokens for sequence {seq.id} "
                                 f"(it holds {seq.position} of this model's {limit} learned positions), got "
                                 f"{len(tokens)}; start a new sequence")
        if self.backend.continues_prefill:
            logits = ingest(self.backend, [tokens], [seq.slot], [seq.position], self.prefill_chunk, progress)
            seq.tokens.extend(tokens)
            seq.logits = logits[0].copy()
            seq.position += len(tokens)
        else:
            for token in tokens:
                seq.tokens.append(token)
                self._decode([seq], [token])
            if progress is not None:
                progress(len(tokens))
        seq.prompt_len = len(seq.tokens)

    def _decode(self, seqs: list[Sequence], tokens: list[int]):
        """One decode step advancing exactly ``seqs`` (by their slots) by ``tokens``."""
        # In slot order: a batch of adjacent slots is one contiguous run, the backends' zero-copy path.
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].slot)
        seqs = [seqs[i] for i in order]
        slots = np.array([s.slot for s in seqs], np.int64)
        ids = np.array([tokens[i] for i in order], np.int64)
        pos = np.array([s.position for s in seqs], np.int64)
        logits = self.backend.decode(slots, ids, pos)
        for row, seq in enumerate(seqs):
            seq.logits = logits[row].copy()
            seq.position += 1

    def _full(self, seq: Sequence) -> bool:
        """No learned position is left for the token just sampled (it is emitted, not folded)."""
        return self._max_positions is not None and seq.position >= self._max_positions

    def _check_live(self, seq: Sequence, action: str):
        """A finished sequence has given its slot back, and the slot may already hold another
        sequence: acting on it would read or write that other sequence's state."""
        if seq.done or not (0 <= seq.slot < len(self._slots) and self._slots[seq.slot] is seq):
            why = (f"it finished ({seq.finish_reason}) and its state slot {seq.slot} was given back"
                   if seq.done else "it is not a live sequence of this Generator")
            raise LinexportError(f"cannot {action} sequence {seq.id}: {why}. Snapshot a sequence while it "
                                 "is live (before its last step) to continue it later, and restore the "
                                 "snapshot into a slot")

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
        """A copy of the sequence's whole decoding state: O(state size), not O(context). Only a
        live sequence has a state to copy: a finished one is refused (see ``_check_live``)."""
        self._check_live(seq, "snapshot")
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
        """A second sequence continuing from the same point (e.g. to sample alternatives).

        The state is copied slot to slot on the backend (``copy_slot``: no host round trip).
        Without ``params`` the fork shares ``seq``'s params and random state, so it draws what
        ``seq`` would; with ``params``, its own (seeded by ``params.seed``)."""
        self._check_live(seq, "fork")
        free = [i for i, s in enumerate(self._slots) if s is None]
        if not free:
            raise LinexportError(f"no free state slot to fork into (max_batch={self.max_batch}); "
                                 "wait for a sequence to finish or create the Generator with a larger max_batch")
        slot = free[0]
        self.backend.copy_slot(seq.slot, slot)
        if params is None:
            params, rng = copy.copy(seq.params), np.random.default_rng()
            rng.bit_generator.state = seq.rng.bit_generator.state
        else:
            rng = np.random.default_rng(params.seed)
        fork = Sequence(next(self._ids), slot, params, list(seq.tokens), seq.prompt_len, seq.position,
                        seq.logits.copy(), rng)
        self._slots[slot] = fork
        return fork

    # -- convenience ----------------------------------------------------------------------
    def generate(self, prompt, params: SamplingParams | None = None,
                 callback: Callable[[str], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> Iterator[str]:
        """Streams the text of one sequence as it is generated (alone or beside others).
        ``progress``: told the tokens each prefill chunk of the prompt ingested (see ``add``)."""
        seq = self.add(prompt, params, progress)
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

    def beam_search(self, prompt, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                    stop_tokens: Seq[int] = ()) -> list[tuple[list[int], float]]:
        """Beam search by reordering state slots; returns up to ``num_beams`` hypotheses as
        (generated ids, log-probability) pairs, best first. Needs an idle generator with at
        least ``num_beams`` slots.

        Each step extends the live beams by every token and keeps the ``num_beams`` best
        extensions by log-probability. An extension that emits one of ``stop_tokens`` is a
        finished hypothesis (the stop token included) and stops growing; a live beam that
        reaches ``max_new_tokens`` is finished too. Finished and live hypotheses are ranked
        together by ``logprob / len ** length_penalty`` (len: generated tokens): 0 ranks by
        log-probability alone, which favours short hypotheses; larger values favour longer
        ones. The returned score is the log-probability itself, not the ranking value."""
        if not self.is_done():
            raise LinexportError("beam search needs an idle Generator (no active sequences)")
        if not 1 <= num_beams <= self.max_batch:
            raise LinexportError(f"num_beams must be in [1, {self.max_batch}] (the slots), got {num_beams}")
        if max_new_tokens < 0:
            raise LinexportError(f"expected max_new_tokens >= 0, got {max_new_tokens}")
        stops = sorted({int(t) for t in stop_tokens})
        if any(not 0 <= t < self.backend.vocab_size for t in stops):
            raise LinexportError(f"expected stop tokens in [0, {self.backend.vocab_size}), got {stops}")
        if max_new_tokens == 0:
            self._encode(prompt)  # the same input checks as a search that runs
            return [([], 0.0)]
        first = self.add(prompt, SamplingParams(max_new_tokens=max_new_tokens))
        position = first.position
        limit = self._max_positions
        if limit is not None and position + max_new_tokens - 1 > limit:
            self.remove(first)
            raise LinexportError(f"expected the prompt ({position} tokens) plus max_new_tokens - 1 to fit "
                                 f"this model's {limit} learned positions, got {position + max_new_tokens - 1}; "
                                 "lower max_new_tokens")
        self.remove(first)
        is_stop = np.zeros(self.backend.vocab_size, bool)
        is_stop[stops] = True
        live, finished = [([], 0.0)], []
        beam_slots = [first.slot]  # beam i's state lives in slot beam_slots[i]
        logits = first.logits[None]
        for step in range(max_new_tokens):
            scores = np.array([s for _, s in live])[:, None] + _log_softmax(logits)  # [beams, V]
            # Every stop extension among the best could push a live one out: look that much deeper.
            k = min(scores.size, num_beams + len(live) * len(stops))
            top = np.argpartition(-scores, k - 1, axis=None)[:k] if k < scores.size else np.arange(scores.size)
            top = top[np.lexsort((top, -scores.ravel()[top]))]  # by score, ties by index (deterministic)
            parents, tokens = [], []
            for flat in top:
                p, t = np.unravel_index(flat, scores.shape)
                hyp = (live[p][0] + [int(t)], float(scores[p, t]))
                if is_stop[t]:
                    finished.append(hyp)
                elif len(parents) < num_beams:
                    parents.append(int(p))
                    tokens.append(int(t))
            live = [(live[p][0] + [t], float(scores[p, t])) for p, t in zip(parents, tokens)]
            if not live or step == max_new_tokens - 1:
                break  # the last step's tokens need no decode: nothing reads their logits
            self.backend.permute_slots([beam_slots[p] for p in parents])
            beam_slots = list(range(len(live)))
            logits = self.backend.decode(np.array(beam_slots, np.int64), np.array(tokens, np.int64),
                                         np.full(len(tokens), position, np.int64))
            position += 1
        ranked = sorted(finished + live, key=lambda h: _normalized(h, length_penalty), reverse=True)
        return ranked[:num_beams]


def _normalized(hyp: tuple[list[int], float], length_penalty: float) -> float:
    tokens, logprob = hyp
    return logprob / (len(tokens) ** length_penalty) if tokens else logprob


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
