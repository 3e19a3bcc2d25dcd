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
    gen.append_tokens(a, "\n    return 1")  # 13 single-token steps of slot 0 alone: an odd count
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
