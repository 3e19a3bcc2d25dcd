"""The public causal linear-attention op: ``torch.ops.linexport.causal_linear_attention``.

The models call it; the exporter translates each call into one bare
``linexport::CausalLinearAttention`` ONNX node (export/ops/causal_linear_attention.py), so the
graph holds the op without any help from the exporter. Its layout is the op spec's
(plugins/causal_linear_attention/README.md, contract/op_spec.py):

    query, key [B, T, H*Dk] (feature-mapped), value [B, T, H*Dv], past_state [B, H, Dk, W]
    fp32 -> output [B, T, H*Dv] in query's dtype, present_state [B, H, Dk, W] fp32
    attrs num_heads, eps; chunk_size (the eager chunk length: results do not depend on it, and
    the ONNX node does not carry it — each graph's function body has its own chunk);
    normalize (True: W = Dv + 1, o = qᵀS / (qᵀz + eps); False: W = Dv, o = qᵀS, eps unused)

Eagerly it runs the chunked form (chunk.py), or the recurrent one (recurrent.py) for one token;
gradients recompute the chunked form under autograd, so training goes through the op too.
fp64 inputs are computed (and the state returned) in fp64, for gradcheck.
"""

from __future__ import annotations

import torch
from torch import Tensor

from linexport.errors import LinexportError
from linexport.models.ops.causal_linear_attention.chunk import chunk_causal_linear_attention
from linexport.models.ops.causal_linear_attention.recurrent import step_causal_linear_attention

NAME = "linexport::causal_linear_attention"  # = contract/op_spec.py TORCH_OP (tests check)
DEFAULT_CHUNK = 64  # eager chunk length only; results do not depend on it


def _forward(query: Tensor, key: Tensor, value: Tensor, past_state: Tensor, num_heads: int,
             eps: float, chunk_size: int, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """The op's math on [B, T, H*D] tensors, differentiable (the backward replays it)."""
    B, T, _ = query.shape
    H = num_heads
    if T == 1:  # decode: one token needs no chunk padding
        q, k, v = (t.reshape(B, H, -1) for t in (query, key, value))  # [B, H, D]
        o, state = step_causal_linear_attention(q, k, v, past_state, eps, normalize)
        return o.reshape(B, 1, -1).to(query.dtype), state
    q, k, v = (t.reshape(B, T, H, -1).transpose(1, 2) for t in (query, key, value))  # [B, H, T, D]
    o, state = chunk_causal_linear_attention(q, k, v, eps, chunk_size, past_state, normalize)
    return o.transpose(1, 2).reshape(B, T, -1).to(query.dtype), state


def _state_dtype(query: Tensor, past_state: Tensor) -> torch.dtype:
    """fp32 for the spec's inputs (fp16/bf16/fp32 activations, fp32 state); fp64 for fp64."""
    return torch.promote_types(torch.promote_types(query.dtype, past_state.dtype), torch.float32)


@torch.library.custom_op(NAME, mutates_args=())
def causal_linear_attention(query: Tensor, key: Tensor, value: Tensor, past_state: Tensor,
                            num_heads: int, eps: float, chunk_size: int = DEFAULT_CHUNK,
                            normalize: bool = True) -> tuple[Tensor, Tensor]:
    """The op spec in PyTorch: query, key [B, T, H*Dk], value [B, T, H*Dv], past_state
    [B, H, Dk, Dv+1] (``normalize``) or [B, H, Dk, Dv] fp32 -> (output [B, T, H*Dv] in query's
    dtype, present_state fp32)."""
    if chunk_size < 1:
        raise LinexportError(f"expected chunk_size >= 1, got {chunk_size}")
    width = value.shape[-1] // num_heads + (1 if normalize else 0)
    if past_state.shape[-1] != width:
        raise LinexportError(
            f"expected past_state's last dim to be {width} (Dv{' + 1: the normaliser column' if normalize else ''}"
            f", normalize={normalize}), got {list(past_state.shape)}")
    o, state = _forward(query, key, value, past_state, num_heads, eps, chunk_size, normalize)
    return o, state.to(_state_dtype(query, past_state))


@causal_linear_attention.register_fake
def _(query, key, value, past_state, num_heads, eps, chunk_size=DEFAULT_CHUNK, normalize=True):
    B, T, _ = query.shape
    return (query.new_empty(B, T, value.shape[-1]),
            past_state.new_empty(past_state.shape, dtype=_state_dtype(query, past_state)))


def _setup_context(ctx, inputs, output):
    query, key, value, past_state, num_heads, eps, *rest = inputs
    ctx.save_for_backward(query, key, value, past_state)
    ctx.num_heads, ctx.eps = num_heads, eps
    ctx.chunk_size = rest[0] if rest else DEFAULT_CHUNK
    ctx.normalize = rest[1] if len(rest) > 1 else True


def _backward(ctx, grad_output, grad_state):
    """Replays the forward under autograd and differentiates it: no saved intermediates, the
    chunked form's memory (linear in T) is paid again instead."""
    inputs = [t.detach().requires_grad_(need) for t, need in
              zip(ctx.saved_tensors, ctx.needs_input_grad[:4])]
    wanted = [t for t in inputs if t.requires_grad]
    pairs = [(i, g) for i, g in enumerate((grad_output, grad_state)) if g is not None]
    grads = {}
    if wanted and pairs:
        with torch.enable_grad():
            outputs = _forward(*inputs, ctx.num_heads, ctx.eps, ctx.chunk_size, ctx.normalize)
            # allow_unused: present_state alone does not depend on query.
            found = torch.autograd.grad([outputs[i] for i, _ in pairs], wanted,
                                        [g.to(outputs[i].dtype) for i, g in pairs], allow_unused=True)
        grads = {id(t): g for t, g in zip(wanted, found)}
    result = [None if not t.requires_grad else
              grads.get(id(t)) if grads.get(id(t)) is not None else torch.zeros_like(t)
              for t in inputs]
    return (*result, None, None, None, None)


causal_linear_attention.register_autograd(_backward, setup_context=_setup_context)
