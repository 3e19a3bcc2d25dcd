"""`linexport onnx`: checkpoint -> OUT/{prefill.onnx, decode.onnx, linexport.json}, atomically.

Everything is written into a temp directory beside OUT and renamed into place only once both
graphs passed the checks, so a failed export leaves no half-written directory and never
replaces a good one.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from linexport import __version__
from linexport.errors import LinexportError
from linexport.contract import op_spec
from linexport.export.graphs import trace_decode, trace_prefill
from linexport.export.lowerings import apply_lowering, attention_nodes
from linexport.export.ops import ops_in_model
from linexport.export.tokenizer import export_tokenizer
from linexport.contract.manifest import (FORMAT_TAG, MANIFEST_NAME, PRECISIONS, STATE_DTYPE,
                                       FORMAT_VERSION, graph_files, io_entry, load_manifest,
                                       reexport_command, tokenizer_files, write_manifest)
from linexport.export.opset import opset_of
from linexport.export.quantize import QDQ_MIN_OPSET, QuantOptions, quantize_graph
from linexport.export.quantize import record as quant_record
from linexport.files import clean_stale, file_sha256, publish_dir, temp_dir_beside
from linexport.models.base import CausalLM

# Protobuf cannot serialise a message over 2 GiB; above this many bytes of weights a graph keeps
# its tensors in `<graph>.onnx.data` beside it (the margin leaves room for the graph itself).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
DECODE_CHUNK = 1  # the decode graph's function body takes T = 1 (the one-token recurrence)

_NP_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
             onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64"}


def check_options(lowering: str, opset: int | None, dtype: str) -> int:
    """Validates the export options; returns the opset to use."""
    if lowering not in op_spec.LOWERINGS:
        raise LinexportError(f"expected --lowering in {list(op_spec.LOWERINGS)}, got {lowering!r}")
    if dtype not in PRECISIONS:
        raise LinexportError(f"expected --dtype in {sorted(PRECISIONS)}, got {dtype!r}")
    opset = op_spec.DEFAULT_OPSET[lowering] if opset is None else opset
    if lowering == "standard" and opset < op_spec.STANDARD_MIN_OPSET:
        raise LinexportError(f"expected --opset {op_spec.STANDARD_MIN_OPSET} or higher with --lowering "
                             f"standard (ONNX LinearAttention is an opset-27 op), got {opset}; raise "
                             f"--opset or use --lowering function")
    if not op_spec.MIN_OPSET <= opset <= op_spec.MAX_OPSET:
        raise LinexportError(f"expected --opset between {op_spec.MIN_OPSET} and {op_spec.MAX_OPSET}, "
                             f"got {opset}")
    return opset


def export_checkpoint(checkpoint, out, lowering: str = op_spec.DEFAULT_LOWERING, opset: int | None = None,
                      dtype: str = "fp32", full_logits: bool = False,
                      log: Callable[[str], None] = lambda message: None,
                      external_data_threshold: int | None = None, quantize: QuantOptions | None = None) -> dict:
    """Exports ``checkpoint`` into directory ``out``; returns the manifest written there.
    Graphs whose weights exceed ``external_data_threshold`` bytes (default: just under 2 GiB)
    keep them in ``<graph>.onnx.data``. ``quantize``: the float graphs' weights are then
    quantized (export/quantize.py) before anything is published."""
    from linexport.models.checkpoint import load_checkpoint

    if quantize is not None:
        quantize = quantize.checked()
        # The quantizer moves the graphs to the opset the weights need (quantize_graph); an
        # explicit lower --opset is a contradiction.
        if quantize.format == "QDQ" and opset is not None and opset < QDQ_MIN_OPSET:
            raise LinexportError(f"expected --opset {QDQ_MIN_OPSET} or higher with --quant-format QDQ "
                                 f"(int4 tensors and blocked DequantizeLinear), got {opset}")
    opset = check_options(lowering, opset, dtype)
    out = Path(out).absolute()
    checkpoint = Path(checkpoint).absolute()
    threshold = EXTERNAL_DATA_THRESHOLD if external_data_threshold is None else external_data_threshold

    def fill(tmp: Path) -> dict:
        log(f"loading {checkpoint}")
        model, meta = load_checkpoint(checkpoint)
        source = source_record(checkpoint)
        manifest = _export_into(tmp, model, meta, source, lowering, opset, dtype, full_logits, log, threshold)
        if quantize is not None:
            manifest = _quantize_into(tmp, manifest, quantize, log, threshold)
        return manifest
    return _write_export(out, fill, log)


def _write_export(out: Path, fill: Callable[[Path], dict], log, marker: str = MANIFEST_NAME) -> dict:
    """Runs ``fill(tmp)`` (-> the manifest) in a temp directory beside ``out``, then publishes
    that directory as ``out``; a failure anywhere leaves ``out`` as it was. ``out`` may be new,
    empty or an earlier folder of this kind (one holding ``marker``)."""
    tmp = _temp_dir_beside(out, marker)
    try:
        manifest = fill(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return manifest


def source_record(checkpoint: Path) -> dict:
    """The manifest's record of the checkpoint an export came from (after it loaded)."""
    if checkpoint.is_dir():  # load_checkpoint accepted it, so it holds exactly one checkpoint
        checkpoint = (sorted(checkpoint.glob("*.safetensors")) + sorted(checkpoint.glob("*.pt")))[0]
    record = {"checkpoint": str(checkpoint), "sha256": file_sha256(checkpoint)}
    if checkpoint.suffix == ".safetensors":  # its config lives beside it and matters as much
        record["config_sha256"] = file_sha256(checkpoint.with_suffix(".json"))
    return record


def _export_into(tmp: Path, model: CausalLM, meta: dict, source: dict, lowering: str, opset: int,
                 dtype: str, full_logits: bool, log, threshold: int) -> dict:
    _check_states(model)
    # First: a missing or malformed tokenizer fails the export before minutes of tracing.
    tokenizer = export_tokenizer(meta.get("tokenizer"), Path(source["checkpoint"]).parent, tmp)
    model = model.eval()
    if dtype == "fp16":
        model = copy.deepcopy(model).half()  # state stays fp32: the ops accumulate in fp32
    chunk = {"prefill": int(getattr(model.config, "chunk_size", 64)), "decode": DECODE_CHUNK}
    graphs, custom_nodes = {}, {}
    for name, trace in (("prefill", lambda: trace_prefill(model, opset, full_logits)),
                        ("decode", lambda: trace_decode(model, opset))):
        start = time.perf_counter()
        log(f"tracing the {name} graph ({model.arch}, {dtype}, opset {opset})")
        with torch.no_grad():
            proto = trace()
        custom_nodes[name] = len(attention_nodes(proto))  # before a lowering replaces them
        graphs[name] = apply_lowering(proto, lowering, chunk[name], name)
        log(f"  {name} graph traced in {time.perf_counter() - start:.1f}s")

    entries = {}
    for name, proto in graphs.items():
        log(f"checking and writing {name}.onnx")
        entries[name] = _save_graph(proto, tmp, name, threshold)

    states = [{"name": s.name, "shape": list(s.shape), "dtype": STATE_DTYPE, "doc": s.doc}
              for s in model.state_specs()]
    # How each attention op appears in the graphs: the custom node in the lowering asked for
    # (read from the traced graph), any other op of the model as its traced PyTorch body.
    ops = {op: "traced" for op in ops_in_model(model) if op != op_spec.OP_NAME}
    if custom_nodes["prefill"]:
        ops[op_spec.OP_NAME] = lowering
    manifest = {
        "format": FORMAT_TAG, "format_version": FORMAT_VERSION, "linexport_version": __version__,
        "arch": model.arch, "config": model.config_dict(), "vocab_size": int(model.config.vocab_size),
        "tokenizer": tokenizer,
        "precision": dtype, "opset": opset, "full_logits": full_logits,
        "lowering": {"option": lowering, "ops": ops},
        "graphs": entries,
        "states": states,
        "source": source,
    }
    if custom_nodes["prefill"]:
        manifest["lowering"].update({
            "attention_op": {"domain": op_spec.DOMAIN, "op_type": op_spec.OP_TYPE, "version": op_spec.OP_VERSION},
            "function_chunk": chunk})  # the chunk length of each graph's function body
    write_manifest(manifest, tmp)  # validates the graphs' IO against the contract
    return manifest


def quantize_export(src, out, options: QuantOptions, log: Callable[[str], None] = lambda message: None,
                    external_data_threshold: int | None = None) -> dict:
    """Quantizes the float export ``src`` into ``out`` (which may be ``src`` itself: it is then
    replaced atomically); returns the new manifest. Engines of ``src`` are not carried over
    (they were built from the float graphs): run `linexport trt` on ``out``."""
    options = options.checked()
    src, out = Path(src).absolute(), Path(out).absolute()
    manifest = load_manifest(src)  # every file named is inside src and matches its sha256
    if "quantization" in manifest:
        q = manifest["quantization"]
        raise LinexportError(f"{src} is already quantized ({q['scheme']}, {q['format']}); quantize its float "
                             f"export instead: {reexport_command({**manifest, 'quantization': None}, str(src / MANIFEST_NAME))}")
    manifest = {k: v for k, v in manifest.items() if k != "engines"}
    threshold = EXTERNAL_DATA_THRESHOLD if external_data_threshold is None else external_data_threshold

    def fill(tmp: Path) -> dict:
        for entry in [*graph_files(manifest), *tokenizer_files(manifest)]:
            (tmp / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / entry["file"], tmp / entry["file"])
        return _quantize_into(tmp, manifest, options, log, threshold)
    return _write_export(out, fill, log)


def _quantize_into(tmp: Path, manifest: dict, options: QuantOptions, log, threshold: int) -> dict:
    """Replaces the float graphs in ``tmp`` by their quantized forms and rewrites the manifest."""
    manifest = copy.deepcopy(manifest)
    nodes, opsets = {}, set()
    for name in ("prefill", "decode"):
        entry = manifest["graphs"][name]
        start = time.perf_counter()
        log(f"quantizing the {name} graph ({options.scheme}, {options.format}, block size "
            f"{options.block_size or 'per channel'})")
        proto = onnx.load(str(tmp / entry["file"]))
        for f in [entry, *entry["external_data"]]:
            (tmp / f["file"]).unlink()
        proto, nodes[name] = quantize_graph(proto, options)
        opsets.add(opset_of(proto))
        manifest["graphs"][name] = _save_graph(proto, tmp, name, threshold)
        log(f"  {nodes[name]} weights quantized in {time.perf_counter() - start:.1f}s")
    assert len(opsets) == 1, opsets
    manifest["opset"] = opsets.pop()
    manifest["quantization"] = quant_record(options, nodes)
    write_manifest(manifest, tmp)
    return manifest


def _check_states(model: CausalLM):
    for spec in model.state_specs():
        if spec.dtype != torch.float32:
            raise LinexportError(f"expected every state of {model.arch} to be float32 (the contract's "
                                 f"{STATE_DTYPE}), got {spec.name} as {spec.dtype}; fix the model's "
                                 f"state_specs() (and keep the state in fp32)")


_BRANCHES = ("If", "Loop", "Scan")


def _save_graph(proto: onnx.ModelProto, tmp: Path, name: str, threshold: int) -> dict:
    where = [f"node {n.name or n.op_type}" for n in proto.graph.node if n.op_type in _BRANCHES]
    where += [f"function {fn.domain}::{fn.name}" for fn in proto.functions
              if any(n.op_type in _BRANCHES for n in fn.node)]
    if where:
        raise LinexportError(f"expected a branch-free {name} graph (no {'/'.join(_BRANCHES)}), got "
                             f"{', '.join(where)}: the model's forward or step has data-dependent "
                             f"control flow; write it with masks or torch.where instead")
    path = tmp / f"{name}.onnx"
    external = []
    if _weight_bytes(proto) > threshold:
        external = [f"{name}.onnx.data"]  # a bare file name: it cannot point outside OUT
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external[0], size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    # Full checker (incl. strict shape inference); by path so external data and >2 GiB work.
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    return {"file": path.name, "sha256": file_sha256(path),
            "external_data": [{"file": f, "sha256": file_sha256(tmp / f)} for f in external],
            "inputs": [_io(v) for v in graph.input], "outputs": [_io(v) for v in graph.output]}


def _io(value: onnx.ValueInfoProto) -> dict:
    t = value.type.tensor_type
    shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
    return io_entry(value.name, shape, _NP_NAMES.get(t.elem_type, onnx.TensorProto.DataType.Name(t.elem_type)))


def _weight_bytes(proto: onnx.ModelProto) -> int:
    total = 0
    for t in proto.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else 8 * max(
            len(t.float_data), len(t.int64_data), len(t.int32_data), len(t.double_data))
    return total


# -- the output directory ---------------------------------------------------------------------
def _temp_dir_beside(out: Path, marker: str = MANIFEST_NAME) -> Path:
    if out.exists() and not out.is_dir():
        raise LinexportError(f"expected -o to name a directory (or a new path), got the file {out}")
    # A killed earlier run may have left its temp directory (or, mid-swap, the previous export)
    # beside OUT: clean up / restore before looking at OUT.
    clean_stale(out)
    if out.is_dir() and any(out.iterdir()) and not (out / marker).exists():
        raise LinexportError(f"expected -o to be a new or empty directory or a previous export, got {out}, "
                             f"which holds other files (no {marker}); choose another -o")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return temp_dir_beside(out)
    except OSError as e:
        raise LinexportError(f"expected a writable place for {out}, got {type(e).__name__}: "
                             f"{e.strerror or e}; choose another -o") from None


def _publish(tmp: Path, out: Path):
    """Puts the finished export at ``out``: a kill at any instant leaves the old or the new
    export there, never neither (linexport/files.py ``publish_dir``)."""
    publish_dir(tmp, out)
