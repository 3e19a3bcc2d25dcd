"""The public op, torch.ops.linexport.causal_linear_attention: its registration, its gradients
(gradcheck: finite differences are the reference) and a training step through the model."""

import copy

import pytest
import torch

from linexport.models.linear import LinearAttention, LinearConfig, LinearLM
from linexport.models.ops.causal_linear_attention import (causal_linear_attention,
                                                          chunk_causal_linear_attention, feature_map)
from linexport.models.ops.causal_linear_attention.naive import naive_causal_linear_attention
from tests.conftest import rel_err


def _op_inputs(B, T, H, Dk, Dv, dtype=torch.float64, seed=0):
    """query, key [B, T, H*Dk] (feature-mapped), value [B, T, H*Dv], past_state [B, H, Dk, Dv+1]."""
    g = torch.Generator().manual_seed(seed)
    q = feature_map(torch.randn(B, T, H * Dk, generator=g, dtype=dtype), "elu")
    k = feature_map(torch.randn(B, T, H * Dk, generator=g, dtype=dtype), "elu")
    v = torch.randn(B, T, H * Dv, generator=g, dtype=dtype)
    past = torch.cat([torch.randn(B, H, Dk, Dv, generator=g, dtype=dtype),
                      1 + torch.rand(B, H, Dk, 1, generator=g, dtype=dtype)], -1)
    return [t.requires_grad_() for t in (q, k, v, past)]


@pytest.mark.parametrize("T", [1, 3, 7, 67], ids=lambda t: f"T{t}")  # 1: the step path; 67 > a chunk
def test_gradcheck_all_four_inputs(T):
    H, Dk, Dv = 3, 3, 5
    inputs = _op_inputs(2, T, H, Dk, Dv, seed=T)
    assert torch.autograd.gradcheck(lambda *a: causal_linear_attention(*a, H, 1e-6), inputs,
                                    eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("T", [1, 7, 67], ids=lambda t: f"T{t}")
def test_gradcheck_unnormalised(T):
    """normalize=False: state [B, H, Dk, Dv], signed features (q and k small: the sums over T are
    not divided, and finite differences of outputs ~70 would lose the digits gradcheck wants)."""
    H, Dk, Dv = 2, 3, 4
    g = torch.Generator().manual_seed(T)
    inputs = [(0.2 * torch.randn(2, T, H * Dk, generator=g, dtype=torch.float64)).requires_grad_(),
              (0.2 * torch.randn(2, T, H * Dk, generator=g, dtype=torch.float64)).requires_grad_(),
              torch.randn(2, T, H * Dv, generator=g, dtype=torch.float64).requires_grad_(),
              torch.randn(2, H, Dk, Dv, generator=g, dtype=torch.float64).requires_grad_()]
    assert torch.autograd.gradcheck(lambda *a: causal_linear_attention(*a, H, 1e-6, 16, False), inputs,
                                    eps=1e-6, atol=1e-8, rtol=1e-6)
    q, k, v, past = (t.detach() for t in inputs)
    split = lambda t: t.view(2, T, H, -1).transpose(1, 2)  # noqa: E731
    ref_o, ref_s = naive_causal_linear_attention(split(q), split(k), split(v), 1e-6, past, normalize=False)
    o, s = causal_linear_attention(q.float(), k.float(), v.float(), past.float(), H, 1e-6, 16, False)
    assert rel_err(o.view(2, T, H, Dv).transpose(1, 2), ref_o) < 1e-5 and rel_err(s, ref_s) < 1e-5
    torch.library.opcheck(torch.ops.linexport.causal_linear_attention.default,
                          (q.float(), k.float(), v.float(), past.float(), H, 1e-6, 16, False))


def test_a_state_of_the_other_form_is_refused():
    from linexport.errors import LinexportError

    q, k, v, past = (t.detach().float() for t in _op_inputs(1, 3, 2, 4, 3))  # past: [1, 2, 4, 3 + 1]
    with pytest.raises(LinexportError, match=r"expected past_state's last dim to be 3 \(Dv, normalize=False\)"):
        causal_linear_attention(q, k, v, past, 2, 1e-6, 16, False)
    with pytest.raises(LinexportError, match=r"expected past_state's last dim to be 4 \(Dv \+ 1"):
        causal_linear_attention(q, k, v, past[..., :3], 2, 1e-6)


def test_gradcheck_with_only_one_output_used():
    """A loss on output alone or present_state alone (None for the other output's grad)."""
    H = 2
    inputs = _op_inputs(1, 5, H, 3, 2, seed=1)
    assert torch.autograd.gradcheck(lambda *a: causal_linear_attention(*a, H, 1e-6)[0], inputs)
    assert torch.autograd.gradcheck(lambda *a: causal_linear_attention(*a, H, 1e-6)[1], inputs)


def test_registration_passes_opcheck():
    """Schema, fake (meta) kernel and autograd registration, as torch.library checks them."""
    q, k, v, past = _op_inputs(2, 9, 2, 4, 3, dtype=torch.float32)
    torch.library.opcheck(torch.ops.linexport.causal_linear_attention.default, (q, k, v, past, 2, 1e-6))


def test_op_matches_naive_and_keeps_spec_dtypes():
    H, Dk, Dv = 2, 4, 3
    q, k, v, past = (t.detach() for t in _op_inputs(2, 21, H, Dk, Dv))
    split = lambda t: t.view(2, 21, H, -1).transpose(1, 2)  # noqa: E731  [B, H, T, D]
    ref_o, ref_s = naive_causal_linear_attention(split(q), split(k), split(v), 1e-6, past)
    o, s = causal_linear_attention(q.half(), k.half(), v.half(), past.float(), H, 1e-6)
    assert o.dtype == torch.float16 and s.dtype == torch.float32
    assert rel_err(o.float().view(2, 21, H, Dv).transpose(1, 2), ref_o) < 2e-3
    assert rel_err(s, ref_s) < 2e-3


class _ChunkAttention(LinearAttention):
    """The reference: LinearAttention's parameters, the chunked function called directly (its
    gradients are plain autograd's through chunk.py, not the op's backward)."""

    def forward(self, x, mask, cos, sin, state=None):
        assert state is None, "training prefills from zeros"
        q, k, v = self._qkv(x, cos, sin)
        k = k * mask[:, None, :, None].to(k.dtype)
        o, state = chunk_causal_linear_attention(q, k, v, self.config.eps, 16)
        B, H, T, D = o.shape
        return self.out(o.transpose(1, 2).reshape(B, T, H * D)), {"kv": state}


def test_training_step_goes_through_the_op():
    """loss.backward() of the linear model (padded batch, loss on logits and state) reaches the
    op's backward and gives the gradients of the chunked function differentiated directly."""
    torch.manual_seed(3)
    model = LinearLM(LinearConfig(vocab_size=61, d_model=40, n_layers=2, n_heads=3, head_dim=15, d_ff=56))
    reference = copy.deepcopy(model)
    for block in reference.blocks:
        block.attn.__class__ = _ChunkAttention
    ids = torch.randint(0, 61, (2, 37))
    lengths = torch.tensor([37, 20])
    targets = torch.randint(0, 61, (2, 37))

    grads = []
    for m in (model, reference):
        logits, state = m(ids, lengths, return_state=True)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss = loss + 1e-3 * sum(s.square().mean() for s in state.values())
        loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    # The op's output is a node of the op's backward, so the model's graph runs through it.
    logits, state = model(ids, lengths, return_state=True)
    assert "linexport_causal_linear_attention" in type(state["0.kv"].grad_fn).__name__
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert grads[0][name] is not None, name
        assert rel_err(grads[0][name], grads[1][name]) < 1e-4, name
