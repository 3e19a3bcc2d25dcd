"""A new arch that calls the causal linear-attention op exports one bare node per layer with no
change to export/: the node comes from the model's own call, not from a table of archs."""

import onnxruntime as ort
import pytest
import torch
from torch import nn

from linexport.contract import op_spec
from linexport.export.graphs import trace_decode, trace_prefill
from linexport.export.lowerings import apply_lowering, attention_nodes
from linexport.export.ort_session import prefill_feed
from linexport.models.layers import RMSNorm
from linexport.models.linear import LinearAttention as Mixer  # reused under another name
from linexport.models.linear import LinearConfig, LinearLM
from tests.conftest import rel_err


class AttentionOnlyBlock(nn.Module):
    """x + Mixer(RMSNorm(x)): no MLP, so the graph is not the linear model's."""

    def __init__(self, config):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = Mixer(config)

    def forward(self, x, mask, cos, sin, state=None):
        a, state = self.mixer(self.norm(x), mask, cos, sin, state)
        return x + a, state

    def step(self, x, state, position, cos, sin):
        a, state = self.mixer.step(self.norm(x), state, position, cos, sin)
        return x + a, state


class MixerLM(LinearLM):
    arch = "mixer_only"  # an arch export/ has never heard of

    def __init__(self, config):
        super().__init__(config)
        self.blocks = nn.ModuleList(AttentionOnlyBlock(config) for _ in range(config.n_layers))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(5)
    return MixerLM(LinearConfig(vocab_size=64, d_model=24, n_layers=3, n_heads=2, head_dim=12,
                                d_ff=8, chunk_size=4)).eval()


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_new_arch_exports_one_node_per_layer(model, graph):
    proto = trace_prefill(model, 20, False) if graph == "prefill" else trace_decode(model, 20)
    nodes = attention_nodes(proto)
    assert len(nodes) == model.config.n_layers == 3
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        assert attrs[op_spec.ATTR_NUM_HEADS].i == 2
        assert len(node.input) == 4 and len(node.output) == 2
    if graph == "prefill":  # and the graph computes the model: function lowering in ONNX Runtime
        proto = apply_lowering(proto, "function", model.config.chunk_size, "prefill")
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ids = torch.randint(0, 64, (2, 11))
        lengths = torch.tensor([11, 6])
        got = session.run(None, prefill_feed(session, ids.numpy(), lengths.numpy()))
        with torch.no_grad():
            logits, state = model.prefill(ids, lengths)
        assert rel_err(torch.from_numpy(got[0]), logits) < 1e-5
        assert rel_err(torch.from_numpy(got[1]), state["0.kv"]) < 1e-5
