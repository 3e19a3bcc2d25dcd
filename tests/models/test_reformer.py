"""The Reformer baseline: parallel LSH attention == recurrent steps over its KV cache, prefill +
steps == parallel, ragged batches, the attention against the naive fp64 definition, and the
reversible layers' recomputing backward against plain autograd."""

import pytest
import torch

from linexport.errors import LinexportError
from linexport.models import build_model
from linexport.models.layers import rotary_angles
from linexport.models.ops.lsh_attention import chunk_lsh_attention, lsh_buckets
from linexport.models.ops.lsh_attention.naive import naive_lsh_attention
from linexport.models.reformer import ReformerConfig, ReformerLM
from tests.conftest import rel_err, run_steps

CONFIGS = {
    "rotary-h2-b4-c4": dict(n_heads=3, head_dim=15, n_hashes=2, n_buckets=4, bucket_size=4),
    "learned-h1-b8-c3": dict(n_heads=2, head_dim=8, n_hashes=1, n_buckets=8, bucket_size=3,
                             pos_emb="learned", tie_embeddings=False),
    "rotary-h3-b2-c5": dict(n_heads=1, head_dim=33, n_hashes=3, n_buckets=2, bucket_size=5),
}
SIZES = dict(vocab_size=61, d_model=40, n_layers=2, d_ff=56, max_seq_len=2048)


def make_model(name, **overrides):
    model = ReformerLM(ReformerConfig(**{**SIZES, **CONFIGS[name], **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0) if p.dim() == 2 else None
    return model


@pytest.mark.parametrize("T", [1, 15, 97], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_parallel_equals_recurrent(name, T):
    model = make_model(name)
    ids = torch.randint(0, 61, (3, T))
    logits, state = model(ids, return_state=True)
    rec_logits, rec_state = run_steps(model, ids)
    assert rel_err(rec_logits, logits) <= 1e-5
    for key in state:
        assert rec_state[key].shape == state[key].shape
        assert rel_err(rec_state[key], state[key]) <= 1e-5, key


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_prefill_then_steps_equals_parallel(name):
    model = make_model(name)
    ids = torch.randint(0, 61, (2, 45))
    last, state = model.prefill(ids[:, :21])
    step_logits, _ = run_steps(model, ids[:, 21:], state, start=21)
    full = model(ids)
    assert rel_err(last, full[:, 20]) <= 1e-5
    assert rel_err(step_logits, full[:, 21:]) <= 1e-5


@torch.no_grad()
def test_ragged_prefill_and_decode_match_each_sequence_alone():
    model = make_model("rotary-h2-b4-c4")
    lengths = torch.tensor([37, 5, 16])
    seqs = [torch.randint(0, 61, (n,)) for n in lengths.tolist()]
    padded = torch.full((3, 37), 7, dtype=torch.int64)
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    more = torch.randint(0, 61, (3, 6))
    last, state = model.prefill(padded, lengths)
    steps = []
    for t in range(6):
        out, state = model.step(more[:, t], lengths + t, state)
        steps.append(out)
    for i, s in enumerate(seqs):
        full = model(torch.cat([s, more[i]])[None])
        assert rel_err(last[i], full[0, len(s) - 1]) <= 1e-5
        for t in range(6):
            assert rel_err(steps[t][i], full[0, len(s) + t]) <= 1e-5, (i, t)


@pytest.mark.parametrize("n_hashes,n_buckets,chunk", [(1, 2, 3), (2, 4, 4), (3, 8, 2)])
@torch.no_grad()
def test_lsh_attention_matches_naive_definition(n_hashes, n_buckets, chunk):
    H, T, D = 2, 40, 6
    q = torch.randn(2, H, T, D, dtype=torch.float64) * 2
    k_hat = torch.nn.functional.normalize(q, dim=-1)
    v = torch.randn(2, H, T, D, dtype=torch.float64)
    rotations = torch.randn(H, n_hashes, D, n_buckets // 2)
    ref = naive_lsh_attention(q, k_hat, v, rotations, n_buckets, chunk)
    o = chunk_lsh_attention(q.float(), k_hat.float(), v.float(), rotations, n_buckets, chunk)
    assert rel_err(o, ref) <= 1e-5
    # Not plain causal softmax in disguise: the windows drop most keys at this T.
    full = torch.softmax((q @ k_hat.transpose(-1, -2) / D ** 0.5).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")), -1) @ v
    assert rel_err(ref, full) > 1e-2


@torch.no_grad()
def test_attention_layer_matches_naive_reference():
    model = make_model("rotary-h2-b4-c4")
    attn = model.blocks[0].attn
    x = torch.randn(2, 30, 40)
    cos, sin = rotary_angles(torch.arange(30).expand(2, 30), 15, 10000.0)
    y, key, _ = attn(x, torch.ones(2, 30, dtype=torch.bool), cos.unsqueeze(1), sin.unsqueeze(1))
    q = attn.qk(x).double().view(2, 30, 3, 15).transpose(1, 2)
    v = attn.v(x).double().view(2, 30, 3, 15).transpose(1, 2)
    ang = torch.arange(30).double()[:, None] * 10000.0 ** (-torch.arange(7).double() / 7)
    rot = torch.polar(torch.ones_like(ang), ang)
    z = torch.complex(q[..., :7], q[..., 7:14]) * rot
    q = torch.cat([z.real, z.imag, q[..., 14:]], -1)
    k_hat = q / q.norm(dim=-1, keepdim=True)
    o = naive_lsh_attention(q, k_hat, v, attn.rotations.double(), 4, 4)
    assert rel_err(y, attn.out.double()(o.transpose(1, 2).reshape(2, 30, 45))) <= 1e-5
    assert rel_err(key, k_hat) <= 1e-5


def test_reversible_backward_equals_plain_autograd():
    model = make_model("rotary-h2-b4-c4").train()
    ids = torch.randint(0, 61, (2, 33))
    loss = model(ids).logsumexp(-1).mean()  # the reversible path: no stored activations
    loss.backward()
    rev = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(ids, return_state=True)  # the plain path, autograd through every block
    logits.logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        assert rel_err(rev[n], p.grad) <= 1e-5, n


def test_fp16_copy_hashes_like_fp32():
    model = make_model("rotary-h2-b4-c4")
    rotations = model.blocks[0].attn.rotations
    assert torch.equal(rotations.half().float(), rotations)
    k = torch.nn.functional.normalize(torch.randn(1, 3, 50, 15), dim=-1)
    assert torch.equal(lsh_buckets(k, rotations.half()), lsh_buckets(k, rotations))


def test_registry_state_specs_and_config_errors():
    model = build_model("reformer", {**SIZES, **CONFIGS["rotary-h2-b4-c4"]})
    assert model.arch == "reformer"
    assert [s.shape for s in model.state_specs()] == [("batch", 3, "past_seq", 15)] * 4
    assert "blocks.0.attn.rotations" in model.state_dict()  # a checkpoint carries the hash
    with pytest.raises(LinexportError, match="n_buckets must be even"):
        ReformerConfig(n_buckets=3)
    with pytest.raises(LinexportError, match=r"expected positions in \[0, 0\]"):
        model.step(torch.tensor([1]), torch.tensor([1]), model.initial_state(1))
