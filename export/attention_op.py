"""The attention op as the exporter sees it: a torch custom op that becomes one ONNX node.

During export, the model's calls to the chunked / step linear-attention functions are swapped
(``substituted_attention``) for ``torch.ops.linexport.causal_linear_attention``, which
``torch.onnx.export`` translates into the bare ``linexport::CausalLinearAttention`` node of the
op spec (contract/op_spec.py). ``export/lowerings.py`` then rewrites that node into the lowering
asked for. The model's own math stays the PyTorch reference: the custom op's eager
implementation *is* the model's chunked function, only re-laid out to the spec's [B, T, H*D].
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from linexport.contract import op_spec
from linexport.models.ops.linear_attention import chunk_causal_linear_attention

_CHUNK = 64  # eager implementation only; results do not depend on it


@torch.library.custom_op("linexport::causal_linear_attention", mutates_args=())
def causal_linear_attention(query: Tensor, key: Tensor, value: Tensor, past_state: Tensor,
                            num_heads: int, eps: float) -> tuple[Tensor, Tensor]:
    """The op spec in PyTorch: query, key [B, T, H*Dk], value [B, T, H*Dv], past_state
    [B, H, Dk, Dv+1] fp32 -> (output [B, T, H*Dv] in query's dtype, present_state fp32)."""
    B, T, _ = query.shape
    H = num_heads
    q, k, v = (t.reshape(B, T, H, -1).transpose(1, 2) for t in (query, key, value))  # [B, H, T, D]
    o, state = chunk_causal_linear_attention(q, k, v, eps, _CHUNK, past_state)
    return o.transpose(1, 2).reshape(B, T, -1).to(query.dtype), state


@causal_linear_attention.register_fake
def _(query, key, value, past_state, num_heads, eps):
    B, T, _ = query.shape
    return (query.new_empty(B, T, value.shape[-1]),
            past_state.new_empty(past_state.shape, dtype=torch.float32))


def onnx_translation() -> dict:
    """``custom_translation_table`` for torch.onnx.export: our op -> the bare ONNX node."""
    import onnx
    from onnx.defs import OpSchema
    from onnxscript import values

    p = OpSchema.FormalParameter
    schema = OpSchema(
        op_spec.OP_TYPE, op_spec.DOMAIN, op_spec.OP_VERSION,
        inputs=[p("query", "T"), p("key", "T"), p("value", "T"), p("past_state", "S")],
        outputs=[p("output", "T"), p("present_state", "S")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                          ("S", ["tensor(float)"], "")],
        attributes=[
            OpSchema.Attribute(op_spec.ATTR_NUM_HEADS, OpSchema.AttrType.INT, "", required=True),
            OpSchema.Attribute(op_spec.ATTR_EPS,
                               onnx.helper.make_attribute(op_spec.ATTR_EPS, op_spec.DEFAULT_EPS), ""),
        ])
    # The schema is handed to the tracer only, not registered globally: onnx.checker must keep
    # treating our domain as opaque (the model-local function or the plugin defines it).
    node = values.Op(values.Opset(op_spec.DOMAIN, op_spec.OP_VERSION), op_spec.OP_TYPE, schema)

    def translate(query, key, value, past_state, num_heads: int, eps: float):
        return node(query, key, value, past_state, num_heads=num_heads, eps=eps, _outputs=2)

    return {torch.ops.linexport.causal_linear_attention.default: translate}


# -- substitution of the model's calls --------------------------------------------------------
def _prefill_call(q, k, v, eps, chunk_size=64, initial_state=None):
    """Same contract as ``chunk_causal_linear_attention`` (q, k, v [B, H, T, D])."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    if initial_state is None:
        initial_state = q.new_zeros(B, H, Dk, Dv + 1, dtype=torch.float32)
    flat = [t.transpose(1, 2).reshape(B, T, -1) for t in (q, k, v)]  # [B, T, H*D]
    o, state = torch.ops.linexport.causal_linear_attention(*flat, initial_state.float(), H, float(eps))
    return o.reshape(B, T, H, Dv).transpose(1, 2).to(v.dtype), state


def _step_call(q, k, v, state, eps):
    """Same contract as ``step_causal_linear_attention`` (q, k [B, H, Dk], v [B, H, Dv])."""
    B, H, Dv = v.shape
    flat = [t.reshape(B, 1, -1) for t in (q, k, v)]  # [B, 1, H*D]
    o, state = torch.ops.linexport.causal_linear_attention(*flat, state, H, float(eps))
    return o.reshape(B, H, Dv).to(v.dtype), state


# arch -> (module, {name of the function the module calls: replacement})
_SUBSTITUTIONS = {
    "linear": ("linexport.models.linear", {"chunk_causal_linear_attention": _prefill_call,
                                           "step_causal_linear_attention": _step_call}),
}


# arch -> its attention ops exported as the traced PyTorch body (no custom node yet)
_TRACED = {"flash": ("mixed_chunk_attention",), "softmax": ("softmax_attention",),
           "reformer": ("lsh_attention",)}


def lowered_ops(arch: str, lowering: str) -> dict:
    """For the manifest: how each attention op of ``arch`` appears in the graphs."""
    if arch in _SUBSTITUTIONS:
        return {"causal_linear_attention": lowering}
    return {op: "traced" for op in _TRACED.get(arch, (f"{arch}_attention",))}


def substitutable(arch: str) -> bool:
    """Whether ``arch``'s attention is exported as our custom node (else it is traced)."""
    return arch in _SUBSTITUTIONS


@contextlib.contextmanager
def substituted_attention(arch: str, replacements: dict | None = None):
    """Within the block, ``arch``'s model calls our custom op (or ``replacements``) instead of
    its chunked / step linear-attention functions. The exporter checks afterwards that the
    graph holds one node per layer, so a renamed import cannot slip through unnoticed."""
    if arch not in _SUBSTITUTIONS:
        yield
        return
    import importlib

    module_name, default = _SUBSTITUTIONS[arch]
    module = importlib.import_module(module_name)
    replacements = replacements or default
    saved = {name: getattr(module, name) for name in replacements}
    try:
        for name, fn in replacements.items():
            setattr(module, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)
