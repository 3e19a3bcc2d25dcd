"""The GAU/FLASH LM: parallel == recurrent, prefill + steps == parallel (rows at different
positions too), ragged batches, the mixed-chunk op and the model against the naive definition,
and the exact fixed-size state."""

import dataclasses

import pytest
import torch

import linexport.models.flash as flash_module
from linexport.errors import LinexportError
from linexport.models.checkpoint import load_checkpoint, save_checkpoint
from linexport.models.config import config_from_dict
from linexport.models.flash import FlashConfig, FlashLM
from linexport.models.ops.mixed_chunk_attention import chunk_mixed_attention, step_mixed_attention
from linexport.models.ops.mixed_chunk_attention.naive import naive_mixed_chunk_attention, naive_mixed_chunk_state
from tests.conftest import rel_err, run_steps

V = 53
CONFIGS = {
    "default-options-c8": dict(),
    "layernorm-laplace-noshift-c8": dict(norm="layernorm", attn_fn="laplace", shift_tokens=False),
    "no-bias-no-abs-odd-dims-c8": dict(rel_pos_bias=False, abs_pos_emb=False, d_model=27, qk_dim=11,
                                       rotary_dim=6, expansion=1.3),
    "odd-chunk5-no-rotary": dict(chunk_size=5, rotary_dim=0, d_model=22, qk_dim=9, expansion=2.0),
}
# T relative to the chunk size C: one token, around one chunk, and long odd lengths.
LENGTHS = {"T1": lambda C: 1, "T=C-1": lambda C: C - 1, "T=C": lambda C: C, "T=C+1": lambda C: C + 1,
           "T97": lambda C: 97, "T1025": lambda C: 1025}


def make_model(name, **overrides):
    kwargs = dict(vocab_size=V, d_model=24, n_layers=2, qk_dim=12, expansion=1.5, chunk_size=8, rotary_dim=8)
    model = FlashLM(FlashConfig(**{**kwargs, **CONFIGS[name], **overrides})).eval()
    with torch.no_grad():  # weights big enough that every part of the layer matters
        for pname, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(3.0)
            if "rel_pos_bias" in pname:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("length", list(LENGTHS))
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_parallel_equals_recurrent(name, length):
    model = make_model(name)
    T = LENGTHS[length](model.config.chunk_size)
    ids = torch.randint(0, V, (2, T))
    logits, state = model(ids, return_state=True)
    rec, rec_state = run_steps(model, ids)
    assert rel_err(rec, logits) <= 1e-5
    assert rec_state.keys() == state.keys()
    for key in state:
        assert rel_err(rec_state[key], state[key]) <= 1e-5, key


@pytest.mark.parametrize("split", [3, 8, 15, 21])
@pytest.mark.parametrize("name", ["default-options-c8", "odd-chunk5-no-rotary"])
@torch.no_grad()
def test_prefill_then_steps_equals_parallel(name, split):
    model = make_model(name)
    ids = torch.randint(0, V, (3, 40))  # 40 - split steps: every split crosses chunk boundaries
    last, state = model.prefill(ids[:, :split])
    steps, _ = run_steps(model, ids[:, split:], state, start=split)
    full = model(ids)
    assert rel_err(last, full[:, split - 1]) <= 1e-5
    assert rel_err(steps, full[:, split:]) <= 1e-5


def _ragged(lengths, total):
    """Per-row sequences of ``total`` tokens and a right-padded batch of their first ``lengths``
    tokens whose padding is random garbage (it must not leak into anything)."""
    seqs = torch.randint(0, V, (len(lengths), total))
    padded = torch.randint(0, V, (len(lengths), max(lengths)))
    for i, n in enumerate(lengths):
        padded[i, :n] = seqs[i, :n]
    return seqs, padded


@torch.no_grad()
def test_ragged_batch_matches_unpadded():
    model = make_model("default-options-c8")
    lengths = [29, 8, 5, 16]  # partial chunk, exactly one chunk, < one chunk, two chunks
    seqs, padded = _ragged(lengths, 29)
    last, state = model.prefill(padded, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        ref_last, ref_state = model.prefill(seqs[i:i + 1, :n])
        assert rel_err(last[i], ref_last[0]) <= 1e-5
        for key in state:
            torch.testing.assert_close(state[key][i], ref_state[key][0], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_steps_with_rows_at_different_positions():
    """After a ragged prefill every row decodes from its own position, so rows reach (and fold)
    their chunk boundaries at different steps — the decode graph's situation."""
    model = make_model("default-options-c8")
    lengths, k = [13, 8, 1, 22], 11
    seqs, padded = _ragged(lengths, max(lengths) + k)
    _, state = model.prefill(padded, torch.tensor(lengths))
    position = torch.tensor(lengths)
    for t in range(k):
        tokens = seqs.gather(1, position.view(-1, 1)).squeeze(1)
        logits, state = model.step(tokens, position, state)
        for i in range(len(lengths)):
            expected = model(seqs[i:i + 1, :lengths[i] + t + 1])[0, -1]
            assert rel_err(logits[i], expected) <= 1e-5, (i, t)
        position = position + 1


def _random_op_inputs(T, B=2, S=5, E=7, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    qq, qk, lq, lk = (torch.randn(B, T, S, generator=g, dtype=torch.float64) for _ in range(4))
    v = torch.randn(B, T, E, generator=g, dtype=torch.float64)
    bias = torch.randn(C, C, generator=g, dtype=torch.float64)
    return qq, qk, lq, lk, v, bias


def _assert_state_is_naive(state, qk, lk, v, C, lengths, tol):
    for b, n in enumerate(lengths):
        expected = naive_mixed_chunk_state(qk[b], lk[b], v[b], C, n)
        for name, got, ref in zip(("lin_kv", "pending", "k_buf", "v_buf"), state, expected):
            assert (got[b] - ref).abs().max() <= tol * ref.abs().max().clamp(min=1.0), (name, b, n)


@pytest.mark.parametrize("attn_fn", ["relu2", "laplace"])
@pytest.mark.parametrize("T", [1, 7, 8, 9, 30], ids=lambda t: f"T{t}")
def test_mixed_chunk_op_matches_naive(attn_fn, T):
    """fp64 in, fp64 math: the chunked and step forms agree with the definition to rounding."""
    C = 8
    qq, qk, lq, lk, v, bias = _random_op_inputs(T, C=C, seed=T)
    ref = naive_mixed_chunk_attention(qq, qk, lq, lk, v, bias, C, attn_fn)
    out, state = chunk_mixed_attention(qq, qk, lq, lk, v, bias, C, attn_fn)
    assert out.dtype == torch.float64 and rel_err(out, ref) <= 1e-12
    _assert_state_is_naive(state, qk, lk, v, C, [T, T], 1e-12)

    step_state = tuple(torch.zeros(s, dtype=torch.float64) for s in ((2, 5, 7), (2, 5, 7), (2, C, 5), (2, C, 7)))
    outs = []
    for t in range(T):
        o, step_state = step_mixed_attention(qq[:, t], qk[:, t], lq[:, t], lk[:, t], v[:, t], bias,
                                             torch.full((2,), t), step_state, attn_fn)
        outs.append(o)
    assert rel_err(torch.stack(outs, 1), ref) <= 1e-12
    _assert_state_is_naive(step_state, qk, lk, v, C, [T, T], 1e-12)

    out32, _ = chunk_mixed_attention(*(t.float() for t in (qq, qk, lq, lk, v, bias)), C, attn_fn)
    assert out32.dtype == torch.float32 and rel_err(out32, ref) <= 1e-5


def test_mixed_chunk_op_state_with_lengths():
    """Padding after each row's length changes neither its outputs nor its state."""
    C, lengths = 8, [19, 16, 1, 8, 7]
    qq, qk, lq, lk, v, bias = _random_op_inputs(19, B=len(lengths), C=C)
    out, state = chunk_mixed_attention(qq, qk, lq, lk, v, bias, C, "relu2", torch.tensor(lengths))
    _assert_state_is_naive(state, qk, lk, v, C, lengths, 1e-12)
    for b, n in enumerate(lengths):
        ref = naive_mixed_chunk_attention(*(t[b:b + 1, :n] for t in (qq, qk, lq, lk, v)), bias, C, "relu2")
        assert rel_err(out[b:b + 1, :n], ref) <= 1e-12


def _naive_chunk_mixed_attention(quad_q, quad_k, lin_q, lin_k, v, bias, chunk_size, attn_fn, lengths):
    """Drop-in for the model's chunked op, computed from the definition (fp64 loops)."""
    out = naive_mixed_chunk_attention(quad_q, quad_k, lin_q, lin_k, v, bias, chunk_size, attn_fn)
    rows = [naive_mixed_chunk_state(quad_k[b], lin_k[b], v[b], chunk_size, int(n)) for b, n in enumerate(lengths)]
    return out, tuple(torch.stack(parts) for parts in zip(*rows))


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_model_forward_matches_naive_attention(name, monkeypatch):
    """The model's forward (fp64 and fp32) against the same model whose attention is the naive
    definition in fp64: logits and the prefill state."""
    model = make_model(name)
    T = 2 * model.config.chunk_size + 3
    ids = torch.randint(0, V, (2, T))
    logits32, state32 = model(ids, return_state=True)
    model64 = make_model(name).double()
    model64.load_state_dict(model.state_dict())
    logits64, state64 = model64(ids, return_state=True)
    monkeypatch.setattr(flash_module, "chunk_mixed_attention", _naive_chunk_mixed_attention)
    ref, ref_state = model64(ids, return_state=True)
    assert ref.dtype == torch.float64 and ref.abs().max() > 1.0
    assert rel_err(logits64, ref) <= 1e-12
    assert rel_err(logits32, ref) <= 1e-5
    for key in ref_state:
        assert rel_err(state64[key], ref_state[key]) <= 1e-12, key
        assert rel_err(state32[key], ref_state[key]) <= 1e-5, key


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_is_fixed_size_and_matches_specs(name):
    model = make_model(name)
    c = model.config
    specs = {s.name: s for s in model.state_specs()}
    names = ["lin_kv", "pending", "k_buf", "v_buf"] + (["shift"] if c.shift_tokens else [])
    assert list(specs) == [f"{i}.{n}" for i in range(c.n_layers) for n in names]
    S, E, C = c.qk_dim, c.hidden_dim, c.chunk_size
    expected = {"lin_kv": (S, E), "pending": (S, E), "k_buf": (C, S), "v_buf": (C, E), "shift": ((c.d_model + 1) // 2,)}
    for key, spec in specs.items():
        assert spec.shape == ("batch", *expected[key.split(".")[1]]) and spec.dtype == torch.float32
    with torch.no_grad():
        _, short = model.prefill(torch.randint(0, V, (3, 2)))
        _, long = model.prefill(torch.randint(0, V, (3, 300)))
        _, stepped = model.step(torch.zeros(3, dtype=torch.int64), torch.tensor([0, 7, 300]), model.initial_state(3))
    for state in (short, long, stepped):
        assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
            k: (torch.Size((3, *s.shape[1:])), torch.float32) for k, s in specs.items()}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_round_trip(name, suffix, tmp_path):
    model = make_model(name)
    assert config_from_dict(FlashConfig, dataclasses.asdict(model.config)) == model.config
    save_checkpoint(model, tmp_path / f"f{suffix}")
    loaded, meta = load_checkpoint(tmp_path / f"f{suffix}")
    assert meta["arch"] == "flash" and loaded.config == model.config
    ids = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("kwargs,match", [
    (dict(rotary_dim=7), "rotary_dim must be even"),
    (dict(rotary_dim=64), "rotary_dim must be even and in"),
    (dict(d_model=25), "even d_model"),
    (dict(chunk_size=0), "chunk_size must be >= 1"),
    (dict(expansion=0.01), "expansion must give a hidden size >= 1"),
    (dict(rel_pos_buckets=32, rel_pos_max_distance=16), "rel_pos_max_distance must exceed"),
], ids=["odd-rotary", "rotary-over-qk", "odd-d-with-sinusoid", "chunk0", "tiny-expansion", "bucket-distance"])
def test_bad_configs(kwargs, match):
    with pytest.raises(LinexportError, match=match):
        FlashConfig(**{**dict(d_model=24, qk_dim=12, rotary_dim=8), **kwargs})
    with pytest.raises(LinexportError, match=match):
        config_from_dict(FlashConfig, {**dataclasses.asdict(FlashConfig(d_model=24, qk_dim=12, rotary_dim=8)),
                                       **kwargs})
