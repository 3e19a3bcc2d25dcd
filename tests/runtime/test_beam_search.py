"""Beam search against references that do not share its code: hand-computed log-probabilities
and a brute-force enumeration of every hypothesis, on a toy backend whose next-token
distribution is a known function of the token history (so every score can be recomputed)."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from linexport.errors import LinexportError
from linexport.runtime import Generator, Model
from linexport.runtime.backends.base import Backend
from tests.runtime.conftest import torch_greedy


class ToyBackend(Backend):
    """A 'model' whose state is the token history and whose logits are ``table(history)``.
    Slot semantics as the real backends: only named slots change."""

    def __init__(self, table, vocab_size: int, num_slots: int):
        self.table, self.vocab_size, self.num_slots = table, vocab_size, num_slots
        self.state_names = ["history"]
        self._hist = [() for _ in range(num_slots)]
        self.decoded_rows = 0

    def prefill(self, input_ids, lengths, slots, positions=None):
        out = []
        for row, slot in enumerate(slots):
            kept = self._hist[slot] if positions is not None and positions[row] else ()
            assert len(kept) == (0 if positions is None else positions[row])
            self._hist[slot] = kept + tuple(int(t) for t in input_ids[row, :lengths[row]])
            out.append(self.table(self._hist[slot]))
        return np.array(out, np.float32)

    def decode(self, slots, input_ids, positions):
        slots, ids, pos = self._check_decode_args(slots, input_ids, positions)
        out = []
        for s, t, p in zip(slots, ids, pos):
            assert p == len(self._hist[s]), "position must be the tokens already in the state"
            self._hist[s] = self._hist[s] + (int(t),)
            out.append(self.table(self._hist[s]))
        self.decoded_rows += len(slots)
        return np.array(out, np.float32)

    def get_state(self, slot):
        return {"history": np.array(self._hist[slot])}

    def set_state(self, slot, state):
        self._hist[slot] = tuple(state["history"].tolist())

    def copy_slot(self, src, dst):
        self._hist[dst] = self._hist[src]

    def permute_slots(self, order):
        order = self._check_order(order)
        self._hist[:len(order)] = [self._hist[o] for o in order]


def _generator(table, vocab_size, num_slots):
    return Generator(SimpleNamespace(backend=ToyBackend(table, vocab_size, num_slots), tokenizer=None))


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _brute_force(table, prompt, vocab_size, max_new, stops, length_penalty):
    """Every hypothesis (stopped by a stop token, or cut at max_new), ranked by
    logprob / len ** length_penalty."""
    hyps = []
    for n in range(1, max_new + 1):
        for tokens in itertools.product(range(vocab_size), repeat=n):
            if any(t in stops for t in tokens[:-1]) or (n < max_new and tokens[-1] not in stops):
                continue
            lp = sum(_log_softmax(table(tuple(prompt) + tokens[:i]))[t] for i, t in enumerate(tokens))
            hyps.append((list(tokens), lp))
    return sorted(hyps, key=lambda h: h[1] / len(h[0]) ** length_penalty, reverse=True)


P = np.log([0.6, 0.1, 0.3])  # tokens 0, 1 and the stop token 2, whatever came before


def test_stop_tokens_finish_hypotheses_and_length_penalty_ranks_them():
    """By hand (P = 0.6, 0.1, 0.3 at every step, stop token 2, 3 tokens at most, one beam):
    the beam goes 0, 0, 0 and leaves finished [2] (log .3 = -1.204), [0, 2] (-1.715) and
    [0, 0, 2] (-2.226) behind; the live [0, 0, 0] has 3 log .6 = -1.532.
    length_penalty 0 ranks by log-probability: [2] first. length_penalty 1 ranks by
    log-probability per token: [0, 0, 0] (-0.511) before [0, 0, 2] (-0.742) before [0, 2] (-0.857)."""
    def table(history):
        return P

    gen = _generator(table, 3, 1)
    by_logprob = gen.beam_search([1], num_beams=1, max_new_tokens=3, length_penalty=0.0, stop_tokens=[2])
    assert [h[0] for h in by_logprob] == [[2]]  # one beam: one hypothesis back
    assert by_logprob[0][1] == pytest.approx(np.log(0.3))
    per_token = gen.beam_search([1], num_beams=1, max_new_tokens=3, length_penalty=1.0, stop_tokens=[2])
    assert per_token[0][0] == [0, 0, 0] and per_token[0][1] == pytest.approx(3 * np.log(0.6))
    # With room for every hypothesis, the whole ranking is visible.
    gen = _generator(table, 3, 8)
    ranked = gen.beam_search([1], num_beams=8, max_new_tokens=3, length_penalty=1.0, stop_tokens=[2])
    assert [h[0] for h in ranked[:3]] == [[0, 0, 0], [0, 0, 2], [0, 2]]
    assert all(2 not in h[0][:-1] for h in ranked), "nothing may follow a stop token"


def _random_table(vocab_size):
    def table(history):
        seed = int("".join(str(t) for t in history[-6:]) or "0", vocab_size + 1)
        return np.random.default_rng(seed).normal(0, 1.5, vocab_size).astype(np.float32)

    return table


@pytest.mark.parametrize("length_penalty", [0.0, 0.5, 1.0, 2.0])
def test_exhaustive_beam_equals_brute_force(length_penalty):
    """Vocab 3 with one stop token, 4 tokens: 16 beams never prune (each step keeps every live
    extension), so beam search must return the brute-force ranking's top 16 exactly."""
    table, prompt, stops = _random_table(3), [0, 1], {2}
    gen = _generator(table, 3, 16)
    got = gen.beam_search(prompt, num_beams=16, max_new_tokens=4, length_penalty=length_penalty, stop_tokens=[2])
    want = _brute_force(table, prompt, 3, 4, stops, length_penalty)[:16]
    assert [h[0] for h in got] == [h[0] for h in want]
    np.testing.assert_allclose([h[1] for h in got], [h[1] for h in want], rtol=1e-5, atol=1e-5)


def test_length_penalty_changes_the_brute_force_winner_too():
    """The case above is not vacuous: on this table the best hypothesis differs between
    length_penalty 0 and 2, in the reference and in beam search alike."""
    table, prompt = _random_table(3), [0, 1]
    best = {}
    for lp in (0.0, 2.0):
        ref = _brute_force(table, prompt, 3, 4, {2}, lp)[0][0]
        got = _generator(table, 3, 16).beam_search(prompt, 16, 4, length_penalty=lp, stop_tokens=[2])[0][0]
        assert got == ref
        best[lp] = got
    assert best[0.0] != best[2.0] and len(best[0.0]) < len(best[2.0])


def test_zero_new_tokens_is_the_empty_hypothesis():
    gen = _generator(lambda h: P, 3, 2)
    assert gen.beam_search([1], num_beams=2, max_new_tokens=0) == [([], 0.0)]
    assert gen.is_done() and gen.backend.decoded_rows == 0
    with pytest.raises(LinexportError, match="expected max_new_tokens >= 0, got -1"):
        gen.beam_search([1], num_beams=2, max_new_tokens=-1)
    with pytest.raises(LinexportError, match=r"expected stop tokens in \[0, 3\), got \[7\]"):
        gen.beam_search([1], num_beams=2, max_new_tokens=2, stop_tokens=[7])


def test_stop_tokens_on_a_real_model(runtime_exports):
    """On the linear export: a hypothesis ends at the first stop token it emits, and every
    score is the PyTorch log-probability of its tokens."""
    path, model = runtime_exports["linear"]
    prompt = list(b"def add(a, b):\n    return")
    greedy = torch_greedy(model, prompt, 6)
    stop = greedy[1]
    beams = Generator(Model(path, num_slots=3)).beam_search(prompt, 3, 6, length_penalty=1.0, stop_tokens=[stop])
    with torch.no_grad():
        for tokens, score in beams:
            assert stop not in tokens[:-1]
            assert len(tokens) == 6 or tokens[-1] == stop
            lp = torch.log_softmax(model(torch.tensor([prompt + tokens]))[0].double(), -1)
            assert score == pytest.approx(sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens)),
                                          abs=1e-3)
