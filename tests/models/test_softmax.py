"""The softmax baseline beyond what every block arch does (test_block_archs.py): the attention
against the naive fp64 oracle, the oracle itself, and parameter parity with LinearLM."""

import torch

from linexport.models.layers import rotary_angles
from linexport.models.linear import LinearConfig, LinearLM
from linexport.models.ops.softmax_attention.naive import naive_causal_softmax_attention
from linexport.models.softmax import SoftmaxConfig, SoftmaxLM
from tests.conftest import rel_err
from tests.models.block_models import SIZES, VARIANTS, make_model


@torch.no_grad()
def test_attention_layer_matches_naive_reference():
    model = make_model("softmax", "rotary-d15")
    attn = model.blocks[0].attn
    x = torch.randn(2, 50, 40)
    cos, sin = rotary_angles(torch.arange(50).expand(2, 50), 15, 10000.0)
    y, state = attn(x, torch.ones(2, 50, dtype=torch.bool), cos.unsqueeze(1), sin.unsqueeze(1))
    assert list(state) == ["key", "value"]
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
    assert rel_err(state["key"], rotate(k)) <= 1e-5 and rel_err(state["value"], v) <= 1e-5


def test_naive_reference_is_not_uniform_averaging():
    """The oracle itself: one query attending to two keys, worked by hand."""
    q = torch.tensor([[[[0.0, 0.0], [2.0, 0.0]]]], dtype=torch.float64)  # [1, 1, 2, 2]
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    o = naive_causal_softmax_attention(q, k, v)
    w = torch.softmax(torch.tensor([2.0 / 2 ** 0.5, 0.0], dtype=torch.float64), 0)
    assert torch.allclose(o[0, 0, 0], v[0, 0, 0]) and torch.allclose(o[0, 0, 1], w)


def test_same_parameters_as_the_linear_model_of_the_same_size():
    for name, overrides in VARIANTS["softmax"].items():
        sizes = {**SIZES, **overrides}
        linear = LinearLM(LinearConfig(**sizes))
        softmax = SoftmaxLM(SoftmaxConfig(**sizes))
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
        assert shapes(softmax) == shapes(linear), name
