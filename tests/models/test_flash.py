"""The GAU/FLASH LM: parallel == recurrent, prefill + steps == parallel, ragged batches, the
mixed-chunk op against its naive definition, and the exact fixed-size state."""

import pytest
import torch

from linexport.errors import LinexportError
from linexport.models.checkpoint import load_checkpoint, save_checkpoint
from linexport.models.flash import FlashConfig, FlashLM
from linexport.models.ops.mixed_chunk_attention import chunk_mixed_attention, step_mixed_attention
from linexport.models.ops.naive import naive_mixed_chunk_attention
from tests.conftest import rel_err, run_steps

C = 8
CONFIGS = {
    "default-options": dict(),
    "layernorm-laplace-noshift": dict(norm="layernorm", attn_fn="laplace", shift_tokens=False),
    "no-bias-no-abs-odd-dims": dict(rel_pos_bias=False, abs_pos_emb=False, d_model=27, qk_dim=11,
                                    rotary_dim=6, expansion=1.3),
}


def make_model(name, **overrides):
    kwargs = dict(vocab_size=53, d_model=24, n_layers=2, qk_dim=12, expansion=1.5, chunk_size=C, rotary_dim=8)
    model = FlashLM(FlashConfig(**{**kwargs, **CONFIGS[name], **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
            elif p.shape == (32, 1):  # relative position bias: make it matter
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("T", [1, C - 1, C, C + 1, 97, 1025], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_parallel_equals_recurrent(name, T):
    model = make_model(name)
    ids = torch.randint(0, 53, (2, T))
    logits, state = model(ids, return_state=True)
    rec, rec_state = run_steps(model, ids)
    assert rel_err(rec, logits) <= 1e-5
    for key in state:
        assert rel_err(rec_state[key], state[key]) <= 1e-5, key


@pytest.mark.parametrize("split", [3, C, 2 * C - 1, 21])
@torch.no_grad()
def test_prefill_then_steps_equals_parallel(split):
    model = make_model("default-options")
    ids = torch.randint(0, 53, (3, 40))
    last, state = model.prefill(ids[:, :split])
    steps, _ = run_steps(model, ids[:, split:], state, start=split)
    full = model(ids)
    assert rel_err(last, full[:, split - 1]) <= 1e-5
    assert rel_err(steps, full[:, split:]) <= 1e-5


@torch.no_grad()
def test_ragged_batch_matches_unpadded():
    model = make_model("default-options")
    lengths = torch.tensor([29, 8, 5, 16])  # partial, exactly one chunk, < one chunk, two chunks
    seqs = [torch.randint(0, 53, (1, n)) for n in lengths.tolist()]
    padded = torch.full((4, 29), 9, dtype=torch.int64)  # garbage padding must not leak
    for i, s in enumerate(seqs):
        padded[i, :s.shape[1]] = s[0]
    last, state = model.prefill(padded, lengths)
    for i, s in enumerate(seqs):
        ref_last, ref_state = model.prefill(s)
        assert rel_err(last[i], ref_last[0]) <= 1e-5
        for key in state:
            torch.testing.assert_close(state[key][i], ref_state[key][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attn_fn", ["relu2", "laplace"])
@pytest.mark.parametrize("T", [1, 7, 8, 9, 30])
def test_mixed_chunk_op_matches_naive(attn_fn, T):
    g = torch.Generator().manual_seed(T)
    qq, qk, lq, lk = (torch.randn(2, T, 5, generator=g, dtype=torch.float64) for _ in range(4))
    v = torch.randn(2, T, 7, generator=g, dtype=torch.float64)
    bias = torch.randn(C, C, generator=g, dtype=torch.float64)
    ref = naive_mixed_chunk_attention(qq, qk, lq, lk, v, bias, C, attn_fn)
    out, _ = chunk_mixed_attention(qq, qk, lq, lk, v, bias, C, attn_fn)
    assert rel_err(out, ref) <= 1e-5
    state = tuple(torch.zeros(s) for s in ((2, 5, 7), (2, 5, 7), (2, C, 5), (2, C, 7)))
    outs = []
    for t in range(T):
        o, state = step_mixed_attention(qq[:, t], qk[:, t], lq[:, t], lk[:, t], v[:, t], bias,
                                        torch.full((2,), t), state, attn_fn)
        outs.append(o)
    assert rel_err(torch.stack(outs, 1), ref) <= 1e-5


def test_state_is_fixed_size():
    model = make_model("default-options")
    specs = {s.name: s.shape for s in model.state_specs()}
    assert specs["0.lin_kv"] == ("batch", 12, 36) and specs["0.k_buf"] == ("batch", C, 12)
    assert specs["1.v_buf"] == ("batch", C, 36) and specs["1.shift"] == ("batch", 12)
    with torch.no_grad():
        _, short = model.prefill(torch.randint(0, 53, (2, 5)))
        _, long = model.prefill(torch.randint(0, 53, (2, 300)))
    assert {k: v.shape for k, v in short.items()} == {k: v.shape for k, v in long.items()}
    assert all(v.dtype == torch.float32 for v in long.values())


def test_checkpoint_round_trip(tmp_path):
    model = make_model("no-bias-no-abs-odd-dims")
    save_checkpoint(model, tmp_path / "f.pt")
    loaded, meta = load_checkpoint(tmp_path / "f.pt")
    assert meta["arch"] == "flash" and loaded.config == model.config
    ids = torch.randint(0, 53, (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("kwargs,match", [
    (dict(rotary_dim=7), "rotary_dim must be even"),
    (dict(rotary_dim=64), "rotary_dim must be even and in"),
    (dict(d_model=25), "even d_model"),
    (dict(chunk_size=0), "chunk_size must be >= 1"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(LinexportError, match=match):
        FlashConfig(**{**dict(d_model=24, qk_dim=12, rotary_dim=8), **kwargs})
