"""Tracing a CausalLM into the two graphs of the contract (docs/DESIGN.md, "Contracts").

    prefill: input_ids int64 [batch, seq] (right-padded), lengths int64 [batch],
             position int64 [batch], past.{layer}.{name}   (KV-cache archs: neither of the two)
             -> logits [batch, vocab] (or [batch, seq, vocab]), present.{layer}.{name}
    decode:  input_ids int64 [batch, 1], position int64 [batch], past.{layer}.{name}
             -> logits [batch, vocab], present.{layer}.{name}

The models call the attention ops that export as custom nodes themselves
(torch.ops.linexport.*); the translation table (export/ops/) turns each call into the bare
node, whatever the arch. Lowerings are applied afterwards (export/lowerings.py). State names
and shapes come from ``model.state_specs()``, so every architecture goes through the same code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
from torch import nn

from linexport.contract import graph_io
from linexport.contract.manifest import PRESENT_SEQ
from linexport.export import ops
from linexport.export.opset import convert_opset
from linexport.export.ops import causal_linear_attention
from linexport.models.base import PAST_SEQ, CausalLM

# torch.export needs example inputs; these sizes avoid the 0/1 specialisation of dynamic dims.
_EXAMPLE_BATCH, _EXAMPLE_SEQ = 2, 5


class PrefillGraph(nn.Module):
    def __init__(self, model: CausalLM, full_logits: bool):
        super().__init__()
        self.model = model
        self.full_logits = full_logits
        self.state_names = [s.name for s in model.state_specs()]

    def forward(self, input_ids, lengths, position=None, *past):
        if self.model.continues and position is not None:
            logits, state = self.model.prefill(input_ids, lengths, full_logits=self.full_logits,
                                               position=position, state=dict(zip(self.state_names, past)))
        else:
            logits, state = self.model.prefill(input_ids, lengths, full_logits=self.full_logits)
        return (logits, *(state[name] for name in self.state_names))


class DecodeGraph(nn.Module):
    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model
        self.state_names = [s.name for s in model.state_specs()]

    def forward(self, input_ids, position, *past):
        logits, state = self.model.step(input_ids[:, 0], position, dict(zip(self.state_names, past)))
        return (logits, *(state[name] for name in self.state_names))


def io_names(model: CausalLM) -> dict:
    """Graph input/output names of both graphs, in order (the contract's, for this model's states)."""
    return graph_io.io_names([s.name for s in model.state_specs()], continues=model.continues)


def trace_prefill(model: CausalLM, opset: int, full_logits: bool) -> onnx.ModelProto:
    names = io_names(model)["prefill"]
    ids = torch.randint(0, model.config.vocab_size, (_EXAMPLE_BATCH, _EXAMPLE_SEQ), generator=_example_rng())
    lengths = torch.tensor([_EXAMPLE_SEQ, _EXAMPLE_SEQ - 2])
    dyn = torch.export.Dim.DYNAMIC  # a named Dim with min/max fails on the padded chunk length
    args, dynamic = (ids, lengths), ({0: dyn, 1: dyn}, {0: dyn})
    dims = {("input_ids", 0): "batch", ("input_ids", 1): "seq"}
    if model.continues:
        specs = model.state_specs()
        # Rows continue from different, non-zero states and positions (one mid-chunk).
        position = torch.tensor([7, 0])
        past = [torch.full(_example_shape(s.shape), 0.5, dtype=s.dtype) for s in specs]
        args += (position, *past)
        dynamic += ({0: dyn}, tuple({0: dyn} for _ in specs))
        dims.update({(name, 0): "batch" for name in names["inputs"][2:]})
    proto = _export(PrefillGraph(model, full_logits), args, names, dynamic, "prefill", opset)
    _name_dims(proto, dims)
    return proto


def trace_decode(model: CausalLM, opset: int) -> onnx.ModelProto:
    names = io_names(model)["decode"]
    specs = model.state_specs()
    ids = torch.randint(0, model.config.vocab_size, (_EXAMPLE_BATCH, 1), generator=_example_rng())
    # KV caches get _EXAMPLE_SEQ entries; the positions are one at the end of the cache and one
    # inside it (a shorter history in a ragged batch).
    position = torch.tensor([_EXAMPLE_SEQ, _EXAMPLE_SEQ - 2])
    # A non-zero example state: a zeros example could let a tracer fold it away.
    past = [torch.full(_example_shape(s.shape), 0.5, dtype=s.dtype) for s in specs]
    dyn = torch.export.Dim.DYNAMIC
    axes = [{i: dyn for i, d in enumerate(s.shape) if isinstance(d, str)} for s in specs]
    dynamic = ({0: dyn}, {0: dyn}, tuple(axes))  # *past is one entry
    proto = _export(DecodeGraph(model), (ids, position, *past), names, dynamic, "decode", opset)
    dims = {(name, 0): "batch" for name in names["inputs"]}
    dims.update({(f"past.{s.name}", i): PAST_SEQ for s in specs for i, d in enumerate(s.shape) if d == PAST_SEQ})
    _name_dims(proto, dims)
    _name_present_cache_dims(proto, specs)
    return proto


def _example_shape(shape: tuple) -> tuple:
    return tuple(_EXAMPLE_BATCH if d == "batch" else _EXAMPLE_SEQ if d == PAST_SEQ else d for d in shape)


def _name_present_cache_dims(proto: onnx.ModelProto, specs):
    """A decode graph's present KV cache is one longer than its past: the exporter writes that
    dim as its own expression of the past symbol; the contract (contract/manifest.py) names it."""
    outputs = {v.name: v for v in proto.graph.output}
    for spec in specs:
        for axis, d in enumerate(spec.shape):
            if d == PAST_SEQ:
                dim = outputs[f"present.{spec.name}"].type.tensor_type.shape.dim[axis]
                assert dim.HasField("dim_param"), (spec.name, dim)
                dim.dim_param = PRESENT_SEQ


def _example_rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)  # leaves the caller's global RNG alone


def _export(module: nn.Module, args: tuple, names: dict, dynamic, graph: str,
            opset: int) -> onnx.ModelProto:
    with quiet_exporter():
        program = torch.onnx.export(
            module.eval(), args, dynamo=True, dynamic_shapes=dynamic,
            input_names=names["inputs"], output_names=names["outputs"],
            custom_translation_table=ops.translation_table(), optimize=True, verbose=False)
    proto = program.model_proto
    # One bare node per call of the op the model made, or the translation went wrong.
    causal_linear_attention.check_nodes(proto, causal_linear_attention.count_calls(program.exported_program),
                                        graph)
    for node in proto.graph.node:
        # torch records each node's Python stack and FX node: local source paths, half the file.
        del node.metadata_props[:]
    return convert_opset(proto, opset)


@contextlib.contextmanager
def quiet_exporter():
    """torch.onnx prints progress lines and warnings per export; the CLI shows its own."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                                "onnxscript", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _name_dims(proto: onnx.ModelProto, names: dict):
    """Renames the exporter's symbolic dims (s0, s27, ...) to the contract's names everywhere."""
    inputs = {v.name: v for v in proto.graph.input}
    rename = {}
    for (tensor, axis), new in names.items():
        dim = inputs[tensor].type.tensor_type.shape.dim[axis]
        assert dim.HasField("dim_param"), (tensor, axis, dim)
        rename[dim.dim_param] = new
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
