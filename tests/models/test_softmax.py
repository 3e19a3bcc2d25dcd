"""The softmax baseline: parallel forward == recurrent steps over the KV cache, prefill + steps ==
parallel, ragged batches in prefill and decode, parameter parity with LinearLM, and the
attention against the naive fp64 oracle."""

import pytest
import torch

from linexport.errors import LinexportError
from linexport.models import build_model
from linexport.models.base import PAST_SEQ
from linexport.models.layers import rotary_angles
from linexport.models.linear import LinearConfig, LinearLM
from linexport.models.ops.softmax_attention.naive import naive_causal_softmax_attention
from linexport.models.softmax import SoftmaxConfig, SoftmaxLM
from tests.conftest import rel_err, run_steps

CONFIGS = {
    "rotary-d15": dict(n_heads=3, head_dim=15, pos_emb="rotary"),
    "learned-d8": dict(n_heads=2, head_dim=8, pos_emb="learned", tie_embeddings=False),
    "rotary-d33": dict(n_heads=1, head_dim=33, pos_emb="rotary"),
}
SIZES = dict(vocab_size=61, d_model=40, n_layers=2, d_ff=56, max_seq_len=2048)


def make_model(name, **overrides):
    model = SoftmaxLM(SoftmaxConfig(**{**SIZES, **CONFIGS[name], **overrides})).eval()
    with torch.no_grad():  # larger weights than the init so attention is far from uniform
        for p in model.parameters():
            p.mul_(4.0) if p.dim() == 2 else None
    return model


@pytest.mark.parametrize("T", [1, 15, 97, 300], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_parallel_equals_recurrent(name, T):
    model = make_model(name)
    ids = torch.randint(0, 61, (3, T))
    logits, state = model(ids, return_state=True)
    rec_logits, rec_state = run_steps(model, ids)
    assert rel_err(rec_logits, logits) <= 1e-5
    assert rec_state.keys() == state.keys()
    for key in state:
        assert rec_state[key].shape == state[key].shape == (3, model.config.n_heads, T, model.config.head_dim)
        assert rel_err(rec_state[key], state[key]) <= 1e-5, key


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_prefill_then_steps_equals_parallel(name):
    model = make_model(name)
    ids = torch.randint(0, 61, (2, 45))
    T = 21
    last, state = model.prefill(ids[:, :T])
    step_logits, _ = run_steps(model, ids[:, T:], state, start=T)
    full = model(ids)
    assert rel_err(last, full[:, T - 1]) <= 1e-5
    assert rel_err(step_logits, full[:, T:]) <= 1e-5


def _padded(seqs, width, fill=7):
    out = torch.full((len(seqs), width), fill, dtype=torch.int64)  # garbage in the padding
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


@torch.no_grad()
def test_ragged_prefill_and_decode_match_each_sequence_alone():
    model = make_model("rotary-d15")
    lengths = torch.tensor([37, 5, 16])
    seqs = [torch.randint(0, 61, (n,)) for n in lengths.tolist()]
    more = torch.randint(0, 61, (3, 9))  # decoded after the prompts, from ragged positions
    last, state = model.prefill(_padded(seqs, 37), lengths)
    step_logits = []
    for t in range(more.shape[1]):
        out, state = model.step(more[:, t], lengths + t, state)
        step_logits.append(out)
    for i, s in enumerate(seqs):
        n = len(s)
        ref_last, ref_state = model.prefill(s[None])
        assert rel_err(last[i], ref_last[0]) <= 1e-5
        full = model(torch.cat([s, more[i]])[None])
        for t in range(more.shape[1]):
            assert rel_err(step_logits[t][i], full[0, n + t]) <= 1e-5, (i, t)
        for key in state:
            # The cache holds row i's tokens at [0, n + 9) and zeros after them.
            assert state[key].shape[2] == 37 + 9
            assert rel_err(state[key][i, :, :n], ref_state[key][0]) <= 1e-5
            assert not state[key][i, :, n + 9:].any()


@torch.no_grad()
def test_cache_after_steps_equals_prefill_of_the_extended_batch():
    """Zero padding makes the cache a function of the real tokens: prefill(T) + k steps is
    prefill(T + k) exactly, padding included (what `linexport verify` compares)."""
    model = make_model("learned-d8")
    lengths = torch.tensor([12, 3])
    ids = torch.randint(0, 61, (2, 12))
    extra = torch.randint(0, 61, (2, 4))
    _, state = model.prefill(ids, lengths)
    for t in range(4):
        _, state = model.step(extra[:, t], lengths + t, state)
    ext = torch.zeros(2, 16, dtype=torch.int64)
    for b, n in enumerate(lengths.tolist()):
        ext[b, :n], ext[b, n:n + 4] = ids[b, :n], extra[b]
    _, ref = model.prefill(ext, lengths + 4)
    for key in state:
        assert rel_err(state[key], ref[key]) <= 1e-5, key


@torch.no_grad()
def test_decode_from_the_empty_initial_state():
    model = make_model("rotary-d33")
    state = model.initial_state(2)
    assert all(t.shape == (2, 1, 0, 33) and t.dtype == torch.float32 for t in state.values())
    ids = torch.randint(0, 61, (2, 6))
    logits, state = run_steps(model, ids, state)
    assert rel_err(logits, model(ids)) <= 1e-5


@torch.no_grad()
def test_attention_layer_matches_naive_reference():
    model = make_model("rotary-d15")
    attn = model.blocks[0].attn
    x = torch.randn(2, 50, 40)
    cos, sin = rotary_angles(torch.arange(50).expand(2, 50), 15, 10000.0)
    y, key, value = attn(x, torch.ones(2, 50, dtype=torch.bool), cos.unsqueeze(1), sin.unsqueeze(1))
    # Independent recomputation in fp64: projections by hand, rotation as complex multiplication.
    q, k, v = attn.qkv(x).double().view(2, 50, 3, 3, 15).permute(2, 0, 3, 1, 4)
    ang = torch.arange(50).double()[:, None] * 10000.0 ** (-torch.arange(7).double() / 7)
    rot = torch.polar(torch.ones_like(ang), ang)

    def rotate(t):
        z = torch.complex(t[..., :7], t[..., 7:14]) * rot
        return torch.cat([z.real, z.imag, t[..., 14:]], -1)

    o = naive_causal_softmax_attention(rotate(q), rotate(k), v)
    ref_y = attn.out.double()(o.transpose(1, 2).reshape(2, 50, 45))
    assert rel_err(y, ref_y) <= 1e-5
    assert rel_err(key, rotate(k)) <= 1e-5 and rel_err(value, v) <= 1e-5


def test_naive_reference_is_not_uniform_averaging():
    """The oracle itself: one query attending to two keys, worked by hand."""
    q = torch.tensor([[[[0.0, 0.0], [2.0, 0.0]]]], dtype=torch.float64)  # [1, 1, 2, 2]
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    o = naive_causal_softmax_attention(q, k, v)
    w = torch.softmax(torch.tensor([2.0 / 2 ** 0.5, 0.0], dtype=torch.float64), 0)
    assert torch.allclose(o[0, 0, 0], v[0, 0, 0]) and torch.allclose(o[0, 0, 1], w)


def test_same_parameters_as_the_linear_model_of_the_same_size():
    for name, overrides in CONFIGS.items():
        sizes = {**SIZES, **overrides}
        linear = LinearLM(LinearConfig(**sizes))
        softmax = SoftmaxLM(SoftmaxConfig(**sizes))
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
        assert shapes(softmax) == shapes(linear), name


def test_state_specs_and_registry():
    model = build_model("softmax", {**SIZES, **CONFIGS["rotary-d15"]})
    assert isinstance(model, SoftmaxLM) and model.arch == "softmax"
    specs = model.state_specs()
    assert [s.name for s in specs] == ["0.key", "0.value", "1.key", "1.value"]
    assert all(s.shape == ("batch", 3, PAST_SEQ, 15) and s.dtype == torch.float32 for s in specs)


@torch.no_grad()
def test_bad_positions_and_inputs_raise_clear_errors():
    model = make_model("learned-d8", max_seq_len=32)
    _, state = model.prefill(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(LinexportError, match=r"expected positions in \[0, 4\]"):
        model.step(torch.tensor([1, 1]), torch.tensor([4, 5]), state)
    with pytest.raises(LinexportError, match="max_seq_len=32"):
        model(torch.ones(1, 40, dtype=torch.int64))
    with pytest.raises(LinexportError, match=r"token ids must be in \[0, 61\)"):
        model(torch.tensor([[1, 99]]))
    with pytest.raises(LinexportError, match="n_heads must be >= 1"):
        SoftmaxConfig(n_heads=0)
