"""The slot-isolation checks, written once and run on every backend (ORT CPU fixed-state, ORT
KV-cache here; TensorRT in test_trt_backend.py, on a GPU): a sequence's state changes only when
that sequence advances, and the sequences left alone continue exactly as solo runs do."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from linexport.runtime import Generator, Model, SamplingParams

# Slot 1 stays free: a gap, so decoding {0, 2, 3} is not one contiguous run.
PROMPTS = {0: "import os\n", 2: "class A:\n    def f(self):", 3: "x = ["}


@dataclass
class _Row:
    position: int
    logits: np.ndarray
    generated: list = field(default_factory=list)


def run_alone(path, prompt, n, backend="ort", device="cpu") -> list[int]:
    """Greedy tokens of ``prompt`` decoded alone in a fresh one-slot model."""
    gen = Generator(Model(path, backend=backend, device=device))
    seq = gen.add(prompt, SamplingParams(max_new_tokens=n))
    while not gen.is_done():
        gen.step()
    return seq.generated


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _advance(backend, rows: dict, slots: list[int]):
    """One greedy decode step of exactly ``slots`` (in that order)."""
    tokens = [int(np.argmax(rows[s].logits)) for s in slots]
    logits = backend.decode(np.array(slots), np.array(tokens), np.array([rows[s].position for s in slots]))
    assert logits.shape == (len(slots), backend.vocab_size)
    for i, s in enumerate(slots):
        rows[s].generated.append(tokens[i])
        rows[s].position += 1
        rows[s].logits = logits[i].copy()


def check_decode_advances_only_named_slots(path, backend="ort", device="cpu"):
    b = Model(path, backend=backend, device=device, num_slots=4).backend
    slots = sorted(PROMPTS)
    encoded = [list(PROMPTS[s].encode()) for s in slots]
    lengths = np.array([len(e) for e in encoded])
    ids = np.zeros((len(slots), lengths.max()), np.int64)
    for i, e in enumerate(encoded):
        ids[i, :len(e)] = e
    logits = b.prefill(ids, lengths, slots)
    rows = {s: _Row(int(lengths[i]), logits[i].copy()) for i, s in enumerate(slots)}

    def advance_alone(active, count):
        others = [s for s in range(4) if s not in active]
        before = {s: b.get_state(s) for s in others}
        for _ in range(count):
            _advance(b, rows, active)
        for s in others:
            assert same_state(b.get_state(s), before[s]), f"slot {s} changed while {active} advanced {count}x"

    advance_alone([0], 7)  # odd: slot 0's state ends in the other pool of a ping-pong backend
    advance_alone([0], 4)  # even
    advance_alone([2], 5)
    advance_alone([0, 2, 3], 3)  # a gap at slot 1: not one contiguous run
    advance_alone([3, 2], 2)  # contiguous but out of order
    advance_alone([2, 3], 2)  # contiguous, in order, starting past slot 0
    for slot, prompt in PROMPTS.items():
        got = rows[slot].generated + [int(np.argmax(rows[slot].logits))]
        assert got == run_alone(path, prompt, len(got), backend, device), slot
    return b


def check_append_tokens_leaves_others_untouched(path, backend="ort", device="cpu"):
    gen = Generator(Model(path, backend=backend, device=device, num_slots=4))
    params = SamplingParams(max_new_tokens=12)
    a, gone, c, d = gen.add_many([PROMPTS[0], "zz", PROMPTS[2], PROMPTS[3]], params)
    gen.remove(gone)
    assert [a.slot, c.slot, d.slot] == [0, 2, 3]
    for _ in range(3):
        gen.step()
    before = {s.slot: gen.backend.get_state(s.slot) for s in (c, d)}
    gen.append_tokens(a, "\n    return 1")  # slot 0 alone: one continued prefill (KV: 13 decode steps)
    for s in (c, d):
        assert same_state(gen.backend.get_state(s.slot), before[s.slot]), f"slot {s.slot} changed"
    while not gen.is_done():
        gen.step()
    assert c.generated == run_alone(path, PROMPTS[2], 12, backend, device)
    assert d.generated == run_alone(path, PROMPTS[3], 12, backend, device)
    assert a.generated == run_alone(path, a.tokens[:a.prompt_len], 12, backend, device)


def check_fork_copies_on_the_backend(path, backend="ort", device="cpu"):
    gen = Generator(Model(path, backend=backend, device=device, num_slots=4))
    params = SamplingParams(max_new_tokens=12)
    a, gone, c, d = gen.add_many([PROMPTS[0], "zz", PROMPTS[2], PROMPTS[3]], params)
    gen.remove(gone)
    for _ in range(4):
        gen.step()
    b = gen.backend
    before = {s.slot: b.get_state(s.slot) for s in (a, c, d)}
    calls = []
    for name in ("get_state", "set_state", "copy_slot"):
        real = getattr(b, name)
        setattr(b, name, lambda *args, _real=real, _name=name: (calls.append((_name, args)), _real(*args))[1])
    fork = gen.fork(c)
    assert calls == [("copy_slot", (2, 1))], "fork must copy slot to slot, not through the host"
    for name in ("get_state", "set_state", "copy_slot"):
        delattr(b, name)
    assert fork.slot == 1
    for s in (a, c, d):
        assert same_state(b.get_state(s.slot), before[s.slot]), f"slot {s.slot} changed"
    assert same_state(b.get_state(1), before[2])
    while not gen.is_done():
        gen.step()
    alone = run_alone(path, PROMPTS[2], 12, backend, device)
    assert fork.generated == c.generated == alone
    assert a.generated == run_alone(path, PROMPTS[0], 12, backend, device)


def _padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(r) for r in rows], np.int64)
    ids = np.zeros((len(rows), max(1, int(lengths.max()))), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, lengths


def _close(got: dict, want: dict, what: str, rtol: float = 1e-5):
    from linexport.contract.checks import errors

    for name in want:
        _, rel = errors(got[name], want[name])
        assert rel <= rtol, f"{what}: state {name} relative error {rel:.2e} > {rtol:.0e}"


def check_continued_prefill_in_scattered_slots(path, backend="ort", device="cpu"):
    """prefill(slots, positions) continues each named slot: rows in scattered slots, named out of
    order, at different positions, one with nothing new (its state must not change), one fresh
    (position 0) in a slot that held another sequence (it must start from zeros). Equal to one
    prefill of the whole text in a separate model; the slots not named stay bit for bit."""
    rng = np.random.default_rng(3)
    V = Model(path, backend=backend, device=device).vocab_size
    text = {s: rng.integers(0, V, n).tolist() for s, n in {4: 40, 1: 17, 3: 9, 0: 23, 2: 31, 5: 12}.items()}
    more = {3: rng.integers(0, V, 30).tolist(), 1: [], 4: rng.integers(0, V, 5).tolist(),
            5: rng.integers(0, V, 21).tolist()}
    b = Model(path, backend=backend, device=device, num_slots=6).backend
    first = [4, 1, 3, 0, 2, 5]
    b.prefill(*_padded([text[s] for s in first]), first)
    before = {s: b.get_state(s) for s in range(6)}
    order = [3, 1, 4, 5]
    positions = np.array([len(text[s]) for s in order[:3]] + [0], np.int64)  # slot 5 starts afresh
    logits = b.prefill(*_padded([more[s] for s in order]), order, positions)
    for s in (0, 2):
        assert same_state(b.get_state(s), before[s]), f"slot {s} was not named but changed"
    assert same_state(b.get_state(1), before[1]), "a row of length 0 must pass its state through"

    ref = Model(path, backend=backend, device=device, num_slots=4).backend
    whole = [text[3] + more[3], text[1], text[4] + more[4], more[5]]
    want = ref.prefill(*_padded(whole), list(range(4)))
    for i, s in enumerate(order):
        _close(b.get_state(s), ref.get_state(i), f"slot {s} after the continued prefill")
        if more[s]:
            from linexport.contract.checks import errors

            assert errors(logits[i], want[i])[1] <= 1e-5, f"slot {s}: last-token logits"
    # And the continued slots decode on exactly like the one-prefill ones.
    pos = np.array([len(w) for w in whole], np.int64)
    tokens = np.argmax(want, -1)
    for _ in range(3):
        got = b.decode(np.array(order), tokens, pos)
        ref_logits = ref.decode(np.arange(4), tokens, pos)
        assert (np.argmax(got, -1) == np.argmax(ref_logits, -1)).all()
        tokens, pos = np.argmax(ref_logits, -1), pos + 1
    for s in (0, 2):
        assert same_state(b.get_state(s), before[s]), f"slot {s} changed while others decoded"


def check_chunked_ingestion_equals_one_prefill(path, backend="ort", device="cpu"):
    """Prompts ingested 7 tokens per call (ragged, 3 rows, scattered slots) equal one prefill;
    append_tokens of a long turn in chunks equals prefilling the whole conversation."""
    rng = np.random.default_rng(5)
    model = Model(path, backend=backend, device=device, num_slots=5, prefill_chunk=7)
    V = model.vocab_size
    prompts = [rng.integers(0, V, n).tolist() for n in (50, 7, 15)]
    gen = Generator(model)
    filler = gen.add_many([[1], [2]])  # slots 0 and 1 are taken: the prompts land in 2, 3, 4
    seqs = gen.add_many(prompts)
    assert [s.slot for s in seqs] == [2, 3, 4]
    ref = Model(path, backend=backend, device=device, num_slots=3, prefill_chunk=4096)
    want = ref.backend.prefill(*_padded(prompts), [0, 1, 2])
    for i, seq in enumerate(seqs):
        _close(model.backend.get_state(seq.slot), ref.backend.get_state(i), f"chunked prompt {i}")
        assert np.argmax(seq.logits) == np.argmax(want[i])
    before = {s.slot: model.backend.get_state(s.slot) for s in [*filler, seqs[0], seqs[2]]}
    turn = rng.integers(0, V, 26).tolist()
    gen.append_tokens(seqs[1], turn)  # 4 chunks of at most 7 from position 7
    for slot, state in before.items():
        assert same_state(model.backend.get_state(slot), state), f"slot {slot} changed by another's append"
    ref.backend.prefill(*_padded([prompts[1] + turn]), [0])
    _close(model.backend.get_state(seqs[1].slot), ref.backend.get_state(0), "after the chunked append")
    assert seqs[1].position == len(prompts[1]) + len(turn) == len(seqs[1].tokens)
