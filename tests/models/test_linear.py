"""The linear-attention LM beyond what every block arch does (test_block_archs.py): chunk-size
independence, the attention against the naive oracle, its own config fields."""

import dataclasses

import pytest
import torch

from linexport.errors import LinexportError
from linexport.models.layers import rotary_angles
from linexport.models.linear import LinearConfig, LinearLM
from linexport.models.ops.causal_linear_attention import feature_map
from linexport.models.ops.causal_linear_attention.naive import naive_causal_linear_attention
from tests.conftest import rel_err
from tests.models.block_models import make_model


@torch.no_grad()
def test_results_independent_of_chunk_size():
    ref = make_model("linear", "rotary-elu-d15-shift")
    ids = torch.randint(0, 61, (2, 200))
    expected = ref(ids)
    for chunk in (1, 5, 64, 512):
        other = LinearLM(dataclasses.replace(ref.config, chunk_size=chunk)).eval()
        other.load_state_dict(ref.state_dict())
        assert rel_err(other(ids), expected) <= 1e-5, chunk


@torch.no_grad()
def test_attention_layer_matches_naive_reference():
    model = make_model("linear", "rotary-elu-d15-shift")
    attn = model.blocks[0].attn
    x = torch.randn(2, 50, 40)
    cos, sin = rotary_angles(torch.arange(50).expand(2, 50), 15, 10000.0)
    y, state = attn(x, torch.ones(2, 50, dtype=torch.bool), cos.unsqueeze(1), sin.unsqueeze(1))
    assert sorted(state) == ["kv", "shift"]
    # Independent recomputation: token shift by hand (token t's first 20 features are token
    # t - 1's, zeros before the first), projections by hand, rotation as complex multiplication.
    shifted = x.double().clone()
    shifted[:, 0, :20] = 0
    shifted[:, 1:, :20] = x[:, :-1, :20].double()
    assert torch.equal(state["shift"], x[:, -1, :20])
    q, k, v = (attn.qkv.double()(shifted).view(2, 50, 3, 3, 15).permute(2, 0, 3, 1, 4))
    ang = torch.arange(50).double()[:, None] * 10000.0 ** (-torch.arange(7).double() / 7)
    rot = torch.polar(torch.ones_like(ang), ang)

    def rotate(t):
        z = torch.complex(t[..., :7], t[..., 7:14]) * rot
        return torch.cat([z.real, z.imag, t[..., 14:]], -1)

    o, ref_state = naive_causal_linear_attention(feature_map(rotate(q), "elu"),
                                                 feature_map(rotate(k), "elu"), v, 1e-6)
    ref_y = attn.out.double()(o.transpose(1, 2).reshape(2, 50, 45))
    assert rel_err(y, ref_y) <= 1e-5
    assert rel_err(state["kv"], ref_state) <= 1e-5


def test_invalid_linear_fields_are_rejected():
    with pytest.raises(LinexportError, match=r"^config LinearConfig.eps must be > 0, got 0.0$"):
        LinearConfig(eps=0.0)
    with pytest.raises(LinexportError, match=r"feature_map: expected one of \['elu', 'relu', 'identity', 'elementwise_product'\], got 'tanh'"):
        from linexport.models.config import config_from_dict

        config_from_dict(LinearConfig, {"feature_map": "tanh"})
