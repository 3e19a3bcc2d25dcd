"""The linear-attention LM: parallel forward == recurrent steps, prefill + steps == parallel,
chunk-size independence, ragged batches, and the attention against the naive oracle."""

import dataclasses

import pytest
import torch

from linexport.errors import LinexportError
from linexport.models.linear import LinearConfig, LinearLM
from linexport.models.ops.causal_linear_attention import feature_map
from linexport.models.ops.causal_linear_attention.naive import naive_causal_linear_attention
from tests.conftest import rel_err, run_steps

CHUNK = 16

CONFIGS = {
    "rotary-elu-d15": dict(n_heads=3, head_dim=15, pos_emb="rotary", feature_map="elu"),
    "learned-relu-d8": dict(n_heads=2, head_dim=8, pos_emb="learned", feature_map="relu", tie_embeddings=False),
    "rotary-relu-d33": dict(n_heads=1, head_dim=33, pos_emb="rotary", feature_map="relu"),
}


def make_model(name, **overrides):
    kwargs = dict(vocab_size=61, d_model=40, n_layers=2, d_ff=56, chunk_size=CHUNK, max_seq_len=2048)
    cfg = LinearConfig(**{**kwargs, **CONFIGS[name], **overrides})
    model = LinearLM(cfg).eval()
    with torch.no_grad():  # larger weights than the init so attention is far from uniform
        for p in model.parameters():
            p.mul_(4.0) if p.dim() == 2 else None
    return model


@pytest.mark.parametrize("T", [1, CHUNK - 1, CHUNK, CHUNK + 1, 97, 1025], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_parallel_equals_recurrent(name, T):
    model = make_model(name)
    ids = torch.randint(0, 61, (3, T))
    logits, state = model(ids, return_state=True)
    rec_logits, rec_state = run_steps(model, ids)
    assert rel_err(rec_logits, logits) <= 1e-5
    for key in state:
        assert rel_err(rec_state[key], state[key]) <= 1e-5, key


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_prefill_then_steps_equals_parallel(name):
    model = make_model(name)
    ids = torch.randint(0, 61, (2, 45))
    T = 21  # prefill ends mid-chunk; the steps cross two chunk boundaries
    last, state = model.prefill(ids[:, :T])
    step_logits, _ = run_steps(model, ids[:, T:], state, start=T)
    full = model(ids)
    assert rel_err(last, full[:, T - 1]) <= 1e-5
    assert rel_err(step_logits, full[:, T:]) <= 1e-5


@torch.no_grad()
def test_results_independent_of_chunk_size():
    ref = make_model("rotary-elu-d15")
    ids = torch.randint(0, 61, (2, 200))
    expected = ref(ids)
    for chunk in (1, 5, 64, 512):
        other = LinearLM(dataclasses.replace(ref.config, chunk_size=chunk)).eval()
        other.load_state_dict(ref.state_dict())
        assert rel_err(other(ids), expected) <= 1e-5, chunk


@torch.no_grad()
def test_ragged_batch_matches_unpadded():
    model = make_model("rotary-elu-d15")
    lengths = torch.tensor([37, 5, 16])
    seqs = [torch.randint(0, 61, (1, n)) for n in lengths.tolist()]
    padded = torch.zeros(3, 37, dtype=torch.int64)
    for i, s in enumerate(seqs):
        padded[i, :s.shape[1]] = s[0]
        padded[i, s.shape[1]:] = 7  # garbage in the padding must not leak into the state
    last, state = model.prefill(padded, lengths)
    for i, s in enumerate(seqs):
        ref_last, ref_state = model.prefill(s)
        assert rel_err(last[i], ref_last[0]) <= 1e-5
        for key in state:
            assert rel_err(state[key][i], ref_state[key][0]) <= 1e-5


@torch.no_grad()
def test_attention_layer_matches_naive_reference():
    model = make_model("rotary-elu-d15")
    attn = model.blocks[0].attn
    x = torch.randn(2, 50, 40)
    from linexport.models.layers import rotary_angles

    cos, sin = rotary_angles(torch.arange(50).expand(2, 50), 15, 10000.0)
    y, state = attn(x, torch.ones(2, 50, dtype=torch.bool), cos.unsqueeze(1), sin.unsqueeze(1))
    # Independent recomputation: projections by hand, rotation as complex multiplication.
    q, k, v = (attn.qkv(x).double().view(2, 50, 3, 3, 15).permute(2, 0, 3, 1, 4))
    ang = torch.arange(50).double()[:, None] * 10000.0 ** (-torch.arange(7).double() / 7)
    rot = torch.polar(torch.ones_like(ang), ang)

    def rotate(t):
        z = torch.complex(t[..., :7], t[..., 7:14]) * rot
        return torch.cat([z.real, z.imag, t[..., 14:]], -1)

    o, ref_state = naive_causal_linear_attention(feature_map(rotate(q), "elu"),
                                                 feature_map(rotate(k), "elu"), v, 1e-6)
    ref_y = attn.out.double()(o.transpose(1, 2).reshape(2, 50, 45))
    assert rel_err(y, ref_y) <= 1e-5
    assert rel_err(state, ref_state) <= 1e-5


def test_state_is_fixed_size_fp32():
    model = make_model("rotary-elu-d15")
    specs = model.state_specs()
    assert [s.name for s in specs] == ["0.kv", "1.kv"]
    assert all(s.shape == ("batch", 3, 15, 16) and s.dtype == torch.float32 for s in specs)
    with torch.no_grad():
        _, state = model.prefill(torch.randint(0, 61, (2, 300)))
    assert {k: tuple(v.shape) for k, v in state.items()} == {"0.kv": (2, 3, 15, 16), "1.kv": (2, 3, 15, 16)}


@pytest.mark.parametrize("bad,match", [
    (lambda: torch.tensor([[1, 2, 99]]), r"token ids must be in \[0, 61\)"),
    (lambda: torch.tensor([[1, -1]]), r"token ids must be in"),
    (lambda: torch.zeros(2, 0, dtype=torch.int64), "at least one token"),
    (lambda: torch.tensor([1, 2, 3]), r"expected input_ids int64 \[batch, seq\]"),
    (lambda: torch.tensor([[1.0, 2.0]]), r"expected input_ids int64"),
], ids=["id-too-large", "negative-id", "empty", "1d", "float"])
def test_bad_inputs_raise_clear_errors(bad, match):
    with pytest.raises(LinexportError, match=match):
        make_model("rotary-elu-d15")(bad())


def test_bad_lengths_and_too_long_for_learned_positions():
    model = make_model("learned-relu-d8", max_seq_len=32)
    with pytest.raises(LinexportError, match=r"lengths must be in \[1, 4\]"):
        model(torch.ones(2, 4, dtype=torch.int64), torch.tensor([4, 5]))
    with pytest.raises(LinexportError, match="max_seq_len=32"):
        model(torch.ones(1, 40, dtype=torch.int64))


def test_invalid_config_is_rejected():
    with pytest.raises(LinexportError, match="n_heads must be >= 1"):
        LinearConfig(n_heads=0)
