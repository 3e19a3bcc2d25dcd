"""`linexport genai`: a checkpoint -> a folder onnxruntime-genai's ``og.Model`` runs unchanged.

onnxruntime-genai drives one decoder graph for prompt and generation alike (its single-graph
mode) and keeps a model's fixed-size recurrent state itself: per layer one rank-3 "conv" state
and one rank-4 "recurrent" state, found by the name templates of ``genai_config.json``, zeros at
the start, each step's ``present`` fed back as the next ``past`` (one buffer), only the batch
dim dynamic. The graph written here is that decoder:

    inputs   input_ids int64 [batch, seq]           a ragged batch right-padded (genai's way)
             attention_mask int64 [batch, total]    1 at every real token so far, incl. these
             past_key_values.{i}.conv_state         [batch, Cc, 1] fp32
             past_key_values.{i}.recurrent_state    [batch, A, B, C] fp32
    outputs  logits [batch, 1, vocab]               the last token's only ("pruned" for genai)
             present.{i}.conv_state, present.{i}.recurrent_state

It is our continuing prefill (the same model.prefill the prefill graph runs) behind a small
adapter: the new block's mask gives each row's new tokens (``lengths``) and the tokens already in
its state (``position`` = the mask's sum before them), and each row's real tokens are moved to
the front of the block in order, so padding may sit anywhere the mask says. genai pads a ragged
prompt batch on the right and marks the trailing pads 0; after the prompt each row's mask ends
in the ones of the generated tokens, its holes staying where the padding was, which is why
positions come from the mask's sum and not from genai's ``position_ids`` (not an input here).

Layer state packing (``genai_layout``): a layer's states without time dims become the conv
state (``[batch, n, 1]``: the token shift; ``[batch, 1, 1]`` zeros when the layer has none) and
the others the recurrent state — a single rank-4 state as it is (linear's ``kv``), several
flattened side by side into ``[batch, 1, 1, n]`` (flash's ``lin_kv``, ``k_buf``, ``v_buf``).
KV-cache states (the baselines) have a dynamic dim and cannot be genai's fixed state: refused.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from linexport.errors import LinexportError
from linexport.export.exporter import EXTERNAL_DATA_THRESHOLD, _save_graph, _write_export, check_options
from linexport.export.graphs import _EXAMPLE_BATCH, _example_rng, _export, _name_dims
from linexport.export.lowerings import apply_lowering
from linexport.export.tokenizer import export_genai_tokenizer
from linexport.models.base import CausalLM

GENAI_CONFIG = "genai_config.json"
GRAPH_FILE = "model.onnx"
INPUT_IDS, ATTENTION_MASK, LOGITS = "input_ids", "attention_mask", "logits"
PAST_CONV, PAST_RECURRENT = "past_key_values.%d.conv_state", "past_key_values.%d.recurrent_state"
PRESENT_CONV, PRESENT_RECURRENT = "present.%d.conv_state", "present.%d.recurrent_state"
GENAI_MODEL_TYPE = "decoder"  # genai's generic decoder-only LLM
_EXAMPLE_SEQ, _EXAMPLE_PAST = 6, 9  # trace sizes: not 0/1 (they would specialise), distinct


@dataclass(frozen=True)
class LayerLayout:
    """How one layer's states map onto genai's two tensors."""

    conv: tuple[str, ...]  # state names packed into the conv state, in order ([] = zeros pass-through)
    recurrent: tuple[str, ...]  # state names packed into the recurrent state, in order
    conv_shape: tuple[int, ...]  # without the batch dim: (n, 1)
    recurrent_shape: tuple[int, ...]  # without the batch dim: rank 3
    sizes: dict  # state name -> its shape without the batch dim


def genai_layout(model: CausalLM) -> list[LayerLayout]:
    """Each layer's packing (module doc); a LinexportError for a model genai cannot hold."""
    if not model.continues:
        raise LinexportError(f"the {model.arch} arch keeps a KV cache that grows with every token; "
                             "onnxruntime-genai's recurrent state must be fixed-size. Export a "
                             "fixed-size-state arch (linear, flash) for genai")
    layers: dict[int, list] = {}
    for spec in model.state_specs():
        layer, _, name = spec.name.partition(".")
        if not all(isinstance(d, int) for d in spec.shape[1:]):
            raise LinexportError(f"state {spec.name} of {model.arch} has the dynamic shape {list(spec.shape)}; "
                                 "genai's recurrent state must be fixed-size")
        layers.setdefault(int(layer), []).append((name, tuple(spec.shape[1:])))
    if sorted(layers) != list(range(len(layers))):
        raise LinexportError(f"expected {model.arch}'s states to be numbered by layer 0..n-1, got layers "
                             f"{sorted(layers)}")
    out = []
    for i in range(len(layers)):
        states = layers[i]
        sizes = {name: shape for name, shape in states}
        conv = tuple(name for name, shape in states if len(shape) == 1)
        recurrent = tuple(name for name, shape in states if len(shape) > 1)
        if not recurrent:
            raise LinexportError(f"layer {i} of {model.arch} has no matrix state to hold as genai's "
                                 f"recurrent state (states {sorted(sizes)})")
        conv_shape = (sum(sizes[n][0] for n in conv) or 1, 1)
        if len(recurrent) == 1 and len(sizes[recurrent[0]]) == 3:
            recurrent_shape = sizes[recurrent[0]]
        else:
            recurrent_shape = (1, 1, sum(math.prod(sizes[n]) for n in recurrent))
        out.append(LayerLayout(conv, recurrent, conv_shape, recurrent_shape, sizes))
    shapes = {(lay.conv_shape, lay.recurrent_shape) for lay in out}
    if len(shapes) != 1:  # genai sizes every layer's buffers from layer 0's inputs
        raise LinexportError(f"genai needs every layer's state to have one shape; {model.arch}'s layers "
                             f"pack to {sorted(shapes)}")
    return out


def _pack(tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    if len(tensors) == 1 and tuple(tensors[0].shape[1:]) == shape:
        return tensors[0]
    batch = tensors[0].shape[0]
    return torch.cat([t.reshape(batch, -1) for t in tensors], dim=1).reshape(batch, *shape)


def _unpack(packed: torch.Tensor, names: tuple[str, ...], sizes: dict) -> dict:
    if len(names) == 1 and tuple(packed.shape[1:]) == sizes[names[0]]:
        return {names[0]: packed}
    batch, flat, out, start = packed.shape[0], packed.reshape(packed.shape[0], -1), {}, 0
    for name in names:
        n = math.prod(sizes[name])
        out[name] = flat[:, start:start + n].reshape(batch, *sizes[name])
        start += n
    return out


class GenaiGraph(nn.Module):
    """genai's decoder: (input_ids, attention_mask, conv_0, recurrent_0, ...) -> (logits [B, 1, V],
    present conv_0, recurrent_0, ...); see the module doc."""

    def __init__(self, model: CausalLM, layout: list[LayerLayout]):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, input_ids, attention_mask, *past):
        B, S = input_ids.shape
        new = attention_mask[:, attention_mask.shape[1] - S:]  # this block's real tokens: 1
        lengths = new.sum(1)
        position = attention_mask.sum(1) - lengths  # tokens already folded into each row's state
        # Each row's real tokens to the front, in order, the padding after them (our prefill
        # takes right-padded rows): a token's slot is its rank among the real tokens, or
        # lengths + its rank among the pads.
        real = new.cumsum(1) - 1
        pads = (1 - new).cumsum(1) - 1 + lengths.unsqueeze(1)
        ids = torch.zeros_like(input_ids).scatter(1, torch.where(new > 0, real, pads), input_ids)
        state = {}
        for i, lay in enumerate(self.layout):
            conv, recurrent = past[2 * i], past[2 * i + 1]
            if lay.conv:
                state.update({f"{i}.{n}": t for n, t in _unpack(conv, lay.conv, lay.sizes).items()})
            state.update({f"{i}.{n}": t for n, t in _unpack(recurrent, lay.recurrent, lay.sizes).items()})
        logits, state = self.model.prefill(ids, lengths, position=position, state=state)
        outputs = [logits.unsqueeze(1)]
        for i, lay in enumerate(self.layout):
            if lay.conv:
                outputs.append(_pack([state[f"{i}.{n}"] for n in lay.conv], lay.conv_shape))
            else:
                outputs.append(past[2 * i] * 1.0)  # the zeros pass through (a fresh output tensor)
            outputs.append(_pack([state[f"{i}.{n}"] for n in lay.recurrent], lay.recurrent_shape))
        return tuple(outputs)


def io_names(n_layers: int) -> dict:
    states = [name % i for i in range(n_layers) for name in (PAST_CONV, PAST_RECURRENT)]
    presents = [name % i for i in range(n_layers) for name in (PRESENT_CONV, PRESENT_RECURRENT)]
    return {"inputs": [INPUT_IDS, ATTENTION_MASK, *states], "outputs": [LOGITS, *presents]}


def trace_genai(model: CausalLM, opset: int) -> onnx.ModelProto:
    """The genai decoder graph of ``model`` (function lowering: genai runs on ONNX Runtime)."""
    layout = genai_layout(model)
    names = io_names(len(layout))
    B, S = _EXAMPLE_BATCH, _EXAMPLE_SEQ
    ids = torch.randint(0, model.config.vocab_size, (B, S), generator=_example_rng())
    # Row 0 continues a sequence of _EXAMPLE_PAST tokens with S new ones; row 1 is a shorter one,
    # left-padded: its past and two of its new positions are padding.
    mask = torch.ones(B, _EXAMPLE_PAST + S, dtype=torch.int64)
    mask[1, :_EXAMPLE_PAST + 2] = 0
    past = []
    for lay in layout:  # non-zero: a zeros example could let the tracer fold a state away
        past.append(torch.full((B, *lay.conv_shape), 0.5 if lay.conv else 0.0))
        past.append(torch.full((B, *lay.recurrent_shape), 0.5))
    dyn = torch.export.Dim.DYNAMIC
    dynamic = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, tuple({0: dyn} for _ in past))
    proto = _export(GenaiGraph(model, layout), (ids, mask, *past), names, dynamic, "genai", opset)
    dims = {(INPUT_IDS, 0): "batch_size", (INPUT_IDS, 1): "sequence_length",
            (ATTENTION_MASK, 1): "total_sequence_length"}
    dims.update({(name, 0): "batch_size" for name in names["inputs"][1:]})
    _name_dims(proto, dims)
    return apply_lowering(proto, "function", int(getattr(model.config, "chunk_size", 64)), "prefill")


def genai_config(model: CausalLM, layout: list[LayerLayout], tokens: dict, threads: int | None) -> dict:
    """``genai_config.json`` for the graph of ``trace_genai``. genai refuses keys it does not know,
    so only its own are written."""
    c = model.config
    heads = int(getattr(c, "n_heads", 1))
    session = {"log_id": "onnxruntime-genai", "provider_options": []}
    if threads:
        session["intra_op_num_threads"] = int(threads)
    n = len(layout)
    return {
        "model": {
            "bos_token_id": tokens["bos_token_id"], "eos_token_id": tokens["eos_token_id"],
            "pad_token_id": tokens["pad_token_id"], "vocab_size": int(c.vocab_size),
            "context_length": tokens["context_length"], "type": GENAI_MODEL_TYPE,
            "decoder": {
                "session_options": session, "filename": GRAPH_FILE,
                "hidden_size": int(c.d_model), "num_hidden_layers": n,
                "num_attention_heads": heads, "num_key_value_heads": heads,
                "head_size": int(getattr(c, "head_dim", c.d_model // heads)),
                "inputs": {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK,
                           "past_conv_names": PAST_CONV, "past_recurrent_names": PAST_RECURRENT},
                "outputs": {"logits": LOGITS, "present_conv_names": PRESENT_CONV,
                            "present_recurrent_names": PRESENT_RECURRENT},
            },
        },
        "search": {"do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": tokens["context_length"], "min_length": 0, "no_repeat_ngram_size": 0,
                   "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": False,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def export_genai(checkpoint, out, dtype: str = "fp32", opset: int | None = None, context_length: int = 4096,
                 pad_token_id: int | None = None, eos_token_id: int | None = None, bos_token_id: int | None = None,
                 threads: int | None = None, log: Callable[[str], None] = lambda message: None) -> dict:
    """Writes the genai folder of ``checkpoint`` into ``out`` (atomically); returns its genai_config."""
    from linexport.models.checkpoint import load_checkpoint

    opset = check_options("function", opset, dtype)
    out, checkpoint = Path(out).absolute(), Path(checkpoint).absolute()
    if context_length < 1:
        raise LinexportError(f"expected --context-length >= 1, got {context_length}")

    def fill(tmp: Path) -> dict:
        log(f"loading {checkpoint}")
        model, meta = load_checkpoint(checkpoint)
        layout = genai_layout(model)  # refuses a model genai cannot hold before anything is traced
        vocab = int(model.config.vocab_size)
        # A tokenizer file is named relative to the checkpoint's folder (a folder checkpoint: itself).
        base = checkpoint if checkpoint.is_dir() else checkpoint.parent
        recorded = ((meta.get("extra") or {}).get("converted_from") or {}).get("special_tokens")
        tokens = export_genai_tokenizer(meta.get("tokenizer"), base, tmp, vocab, pad_token_id, eos_token_id,
                                        bos_token_id, recorded if isinstance(recorded, dict) else None)
        tokens["context_length"] = int(context_length)
        model = model.eval()
        if dtype == "fp16":
            model = copy.deepcopy(model).half()
        start = time.perf_counter()
        log(f"tracing the genai decoder graph ({model.arch}, {dtype}, opset {opset})")
        with torch.no_grad():
            proto = trace_genai(model, opset)
        log(f"  traced in {time.perf_counter() - start:.1f}s")
        _save_graph(proto, tmp, GRAPH_FILE.removesuffix(".onnx"), EXTERNAL_DATA_THRESHOLD)
        config = genai_config(model, layout, tokens, threads)
        (tmp / GENAI_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return config
    return _write_export(out, fill, log, marker=GENAI_CONFIG)


