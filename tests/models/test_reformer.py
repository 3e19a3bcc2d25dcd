"""The Reformer baseline beyond what every block arch does (test_block_archs.py): LSH attention
against the naive fp64 definition, the attention layer against it, the reversible layers'
recomputing backward against plain autograd, and the fixed hash rotations."""

import pytest
import torch

from linexport.errors import LinexportError
from linexport.models.layers import rotary_angles
from linexport.models.ops.lsh_attention import chunk_lsh_attention, lsh_buckets
from linexport.models.ops.lsh_attention.naive import naive_lsh_attention
from linexport.models.reformer import ReformerConfig
from tests.conftest import rel_err
from tests.models.block_models import make_model


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
    model = make_model("reformer", "rotary-h2-b4-c4")
    attn = model.blocks[0].attn
    x = torch.randn(2, 30, 40)
    cos, sin = rotary_angles(torch.arange(30).expand(2, 30), 15, 10000.0)
    y, state = attn(x, torch.ones(2, 30, dtype=torch.bool), cos.unsqueeze(1), sin.unsqueeze(1))
    assert list(state) == ["key", "value"]
    q = attn.qk(x).double().view(2, 30, 3, 15).transpose(1, 2)
    v = attn.v(x).double().view(2, 30, 3, 15).transpose(1, 2)
    ang = torch.arange(30).double()[:, None] * 10000.0 ** (-torch.arange(7).double() / 7)
    rot = torch.polar(torch.ones_like(ang), ang)
    z = torch.complex(q[..., :7], q[..., 7:14]) * rot
    q = torch.cat([z.real, z.imag, q[..., 14:]], -1)
    k_hat = q / q.norm(dim=-1, keepdim=True)
    o = naive_lsh_attention(q, k_hat, v, attn.rotations.double(), 4, 4)
    assert rel_err(y, attn.out.double()(o.transpose(1, 2).reshape(2, 30, 45))) <= 1e-5
    assert rel_err(state["key"], k_hat) <= 1e-5


def test_reversible_backward_equals_plain_autograd():
    model = make_model("reformer", "rotary-h2-b4-c4").train()
    ids = torch.randint(0, 61, (2, 33))
    loss = model(ids).logsumexp(-1).mean()  # the reversible path: no stored activations
    loss.backward()
    rev = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(ids, return_state=True)  # the plain path, autograd through every block
    logits.logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        assert rel_err(rev[n], p.grad) <= 1e-5, n


def test_reversible_block_reconstructs_its_inputs():
    """What the recomputing backward relies on: x2 = y2 − MLP(norm2(y1)), x1 = y1 − Attn(norm1(x2))."""
    block = make_model("reformer", "rotary-h2-b4-c4").blocks[0]
    x1, x2 = torch.randn(2, 2, 20, 40).unbind(0)
    mask = torch.ones(2, 20, dtype=torch.bool)
    cos, sin = (t.unsqueeze(1) for t in rotary_angles(torch.arange(20).expand(2, 20), 15, 10000.0))
    with torch.no_grad():
        (y1, y2), _ = block((x1, x2), mask, cos, sin)
        r2 = y2 - block.mlp(block.norm2(y1))
        r1 = y1 - block.attn(block.norm1(r2), mask, cos, sin)[0]
    assert rel_err(r2, x2) <= 1e-5 and rel_err(r1, x1) <= 1e-5
    assert rel_err(y1, x1) > 1e-2  # the block did something


def test_fp16_copy_hashes_like_fp32():
    model = make_model("reformer", "rotary-h2-b4-c4")
    rotations = model.blocks[0].attn.rotations
    assert torch.equal(rotations.half().float(), rotations)
    k = torch.nn.functional.normalize(torch.randn(1, 3, 50, 15), dim=-1)
    assert torch.equal(lsh_buckets(k, rotations.half()), lsh_buckets(k, rotations))


def test_checkpoint_carries_the_rotations_and_buckets_must_be_even():
    model = make_model("reformer", "rotary-h2-b4-c4")
    assert "blocks.0.attn.rotations" in model.state_dict()  # a checkpoint carries the hash
    with pytest.raises(LinexportError, match="n_buckets must be even"):
        ReformerConfig(n_buckets=3)
