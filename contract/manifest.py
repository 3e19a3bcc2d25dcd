"""``linexport.json``: the manifest an export writes beside its graphs, and its validator.

Pure JSON + hashlib — no torch, no onnx — so the runtime can read it. Layout (format 3):

    {"format": "linexport.export", "format_version": 3, "linexport_version": "0.1.0",
     "arch": "linear", "config": {...}, "vocab_size": 256,
     "tokenizer": {"type": "bytes"},  # or {"type": "json", "file": "tokenizer.json", "sha256": "..."}
     "precision": "fp16",            # activations and logits; states are always float32
     "opset": 20, "full_logits": false,
     "lowering": {"option": "function", "ops": {"causal_linear_attention": "function"},
                  # only where the graphs hold the custom node (flash: {"mixed_chunk_attention":
                  # "traced"} and no more):
                  "attention_op": {"domain": "linexport", "op_type": "CausalLinearAttention",
                                   "version": 1}, "function_chunk": {"prefill": 64, "decode": 1}},
     "graphs": {"prefill": {"file": "prefill.onnx", "sha256": "...", "external_data": [],
                            "inputs": [{"name": "input_ids", "shape": ["batch", "seq"],
                                        "dtype": "int64"}, ...], "outputs": [...]},
                "decode": {...}},
     "states": [{"name": "0.kv", "shape": ["batch", 4, 64, 65], "dtype": "float32", "doc": ""}],
     "source": {"checkpoint": "/abs/ckpt.pt", "sha256": "..."},
     # only in a quantized export (`linexport onnx --quantize`, export/quantize.py):
     "quantization": {"scheme": "int4", "bits": 4, "format": "MatMulNBits",  # or "QDQ"
                      "block_size": 32,          # null: per output channel (int8 QDQ)
                      "symmetric": true, "accuracy_level": 0, "weights": ["MatMul"],  # + "Gather"
                      "embeddings": false, "tool": "onnxruntime.quantization", "tool_version": "1.32.0",
                      "nodes": {"prefill": 20, "decode": 20}},  # quantized-weight nodes per graph
     # only after `linexport trt` (export/engines.py):
     "engines": {"target": "rtx",            # or "tensorrt"
                 "tensorrt_version": "1.7.1.116", "precision": "fp16", "strongly_typed": true,
                 "tf32": false,
                 "profile": {"batch": [1, 1, 8], "seq": [1, 256, 4096], ...},  # (min, opt, max)
                 "attention": "plugin",      # or "inlined function body", "traced", ...
                 "plugin_library": null,     # or {"file": "liblinexport_trt_plugin.so", "sha256": "..."}
                 "graphs": {"prefill": {"file": "prefill.engine", "sha256": "..."}, "decode": {...}}}}

Graph IO for each state: ``past.{name}`` in and ``present.{name}`` out, in both graphs: the
prefill continues from a state (contract/graph_io.py) — except for KV-cache states, below.

Format 3 is the first whose fixed-size prefill takes ``position`` and ``past.*``; exports of
formats 1 and 2 (prefill from zeros only) are refused with the command that re-exports them.

KV-cache states (since format 2). A state's shape may name, once, the dynamic dim ``"past_seq"``
instead of an int: the number of cached tokens (the softmax baseline's
``{"name": "0.key", "shape": ["batch", 4, "past_seq", 64]}``). Its graph IO is then:

- prefill: no ``past.*`` and no ``position`` inputs (it starts from an empty cache: a KV-cache
  export cannot continue a sequence by prefill; its runtime appends token by token).
- prefill ``present.{name}``: ``past_seq`` reads ``"seq"`` — one entry per input position;
  entries at padded positions (>= lengths[b]) are zeros and never attended to.
- decode ``past.{name}``: ``"past_seq"`` (any length L >= 0; L = 0 is the initial state).
- decode ``present.{name}``: ``"past_seq+1"`` — exactly one longer than ``past``: the entries
  of ``past`` at their indices, the new token's entry at index ``position[b]``, and whatever
  ``past`` held at indices > ``position[b]`` (padding). Row b's real entries are indices
  ``< position[b]`` in ``past`` and ``<= position[b]`` in ``present``, so ``position[b] <= L``
  is required, and ``present`` can be fed back as the next step's ``past`` unchanged. Rows of a
  batch share L; shorter histories are padding that the graph masks out by ``position``.

A linexport that reads only an older format refuses a newer manifest with "upgrade linexport"
rather than misreading it.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path, PurePosixPath

from linexport.errors import LinexportError
from linexport.contract.graph_io import GRAPHS
from linexport.files import atomic_write, file_sha256

MANIFEST_NAME = "linexport.json"
FORMAT_TAG = "linexport.export"
FORMAT_VERSION = 3  # the format this linexport writes and reads (older ones: re-export)
PAST_SEQ = "past_seq"  # the cache-length dim of a KV-cache state (format 2); = models.base.PAST_SEQ
PRECISIONS = {"fp32": "float32", "fp16": "float16"}  # --dtype -> activation dtype
STATE_DTYPE = "float32"
QUANT_SCHEMES = {"int8": 8, "int4": 4}  # --quantize -> weight bits
QUANT_FORMATS = ("MatMulNBits", "QDQ")  # ONNX Runtime's contrib op / DequantizeLinear (TensorRT)
QUANT_QDQ_BLOCK_SIZES = (64, 128)  # int4 QDQ: the block sizes TensorRT's int4 weight-only GEMM takes
QUANT_MIN_OPSET = {"MatMulNBits": 1, "QDQ": 21}
INT4_TENSOR_OPSET = 21  # int4 tensors (QDQ weights, a quantized embedding table) are opset 21's


def quant_min_opset(fmt: str, weights) -> int:
    """The lowest opset a graph with ``fmt`` weights of the ops ``weights`` may have."""
    return max(QUANT_MIN_OPSET.get(fmt, 1), INT4_TENSOR_OPSET if "Gather" in weights else 1)

_REQUIRED = {"format": str, "format_version": int, "arch": str, "config": dict, "vocab_size": int,
             "tokenizer": dict, "precision": str, "opset": int, "full_logits": bool,
             "lowering": dict, "graphs": dict, "states": list, "source": dict}


def load_manifest(root, verify_hashes: bool = True) -> dict:
    """Reads and validates ``root/linexport.json``: every file it names lies inside ``root``;
    with ``verify_hashes`` the files' contents are checked too — every graph, external-data and
    tokenizer file matches its sha256, and the graphs reference no external data the manifest
    does not list. Without it the files' contents are trusted as they are."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if root.exists() and not root.is_dir():
        raise LinexportError(f"expected an export directory holding {MANIFEST_NAME}, got the file {root}; "
                             "pass the directory `linexport onnx -o DIR` wrote (default linexport-out)")
    if not path.is_file():
        raise LinexportError(f"expected an export directory holding {MANIFEST_NAME}, got {root} "
                             f"(no {path.name} there); create one with `linexport onnx -o {root}`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LinexportError(f"{path} is not valid JSON ({e}); re-export with `linexport onnx`") from None
    validate_manifest(data, where=str(path))
    check_inside(root, data)
    if verify_hashes:
        for entry in [*graph_files(data), *tokenizer_files(data)]:
            verify_file(root, entry["file"], entry["sha256"])
        check_external_refs(root, data)  # after the hashes: a tampered graph is reported as tampered
    return data


def graph_files(data: dict) -> list[dict]:
    """The ``{file, sha256}`` entries of the ONNX graphs and their external-data files in a
    validated manifest: what an ONNX Runtime session loads."""
    return [entry for name in GRAPHS for entry in [data["graphs"][name], *data["graphs"][name]["external_data"]]]


# (resolved path, size, mtime_ns, inode) -> sha256 of the file's content, for this process.
_DIGESTS: dict[tuple, str] = {}


def cached_sha256(path) -> str:
    """``file_sha256(path)``, remembered per process under the file's (resolved path, size,
    mtime_ns, inode): opening the same unchanged export again costs one stat per file, not a
    re-read. Rewriting a file changes its mtime (and a replaced file its inode, usually its
    size), so a modified file is hashed afresh and still refused. Not covered: a same-size
    rewrite that also restores the old mtime_ns on purpose (``os.utime``) — a hash check
    guards against accidents and stale files, not against an adversary with write access."""
    resolved = Path(path).resolve()
    st = os.stat(resolved)
    key = (str(resolved), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = file_sha256(resolved)
    return digest


def check_inside(root, data: dict) -> None:
    """Every file a validated manifest names lies inside ``root`` once symlinks are resolved:
    an export is self-contained, and a parser must not be led out of it."""
    root = Path(root)
    real_root = root.resolve()
    for what, entry in _named_files(data):
        path = (root / entry["file"]).resolve()
        if path != real_root and real_root not in path.parents:
            raise LinexportError(f"expected {what} {entry['file']!r} to lie inside {real_root}, but it "
                                 f"resolves to {path}; an export must be self-contained: re-export it")


def check_external_refs(root, data: dict) -> None:
    """Each graph references only external-data files the manifest lists (with their sha256,
    checked inside ``root`` by ``check_inside``). Run before any parser sees a graph: TensorRT's
    parser follows a graph's references wherever they point."""
    from linexport.contract.onnx_refs import external_data_files

    root = Path(root)
    for name in GRAPHS:
        graph = data["graphs"][name]
        listed = {PurePosixPath(e["file"]).as_posix() for e in graph["external_data"]}
        graph_path = root / graph["file"]
        if not graph_path.is_file():
            continue  # reported by the hash check or the loader
        referenced = {PurePosixPath(f).as_posix() for f in external_data_files(graph_path)}
        unlisted = sorted(referenced - listed)
        if unlisted:
            raise LinexportError(f"expected the {name} graph to reference only the external data "
                                 f"{MANIFEST_NAME} lists ({sorted(listed)}), got references to "
                                 f"{unlisted}; the export was altered: re-export it")


def _named_files(data: dict) -> list[tuple[str, dict]]:
    files = []
    for name in GRAPHS:
        graph = data["graphs"][name]
        files.append((f"the {name} graph", graph))
        files += [(f"the {name} graph's external data", e) for e in graph["external_data"]]
    files += [("the tokenizer file", e) for e in tokenizer_files(data)]
    files += [("the engine file", e) for e in engine_files(data)]
    return files


def tokenizer_files(data: dict) -> list[dict]:
    """The ``{file, sha256}`` entry of the tokenizer file a validated manifest ships, if any."""
    tokenizer = data["tokenizer"]
    return [{"file": tokenizer["file"], "sha256": tokenizer["sha256"]}] if tokenizer["type"] == "json" else []


def engine_files(data: dict) -> list[dict]:
    """The ``{file, sha256}`` entries of the TensorRT engines (and plugin library) recorded in a
    validated manifest; empty before `linexport trt`."""
    engines = data.get("engines")
    if not engines:
        return []
    return [*engines["graphs"].values(), *([engines["plugin_library"]] if engines["plugin_library"] else [])]


def validate_manifest(data, where: str = MANIFEST_NAME) -> None:
    """Raises LinexportError naming the first field that does not follow the format (1 or 2)."""
    def fail(message):
        raise LinexportError(f"{where}: {message}; re-export with `linexport onnx`")

    if not isinstance(data, dict) or data.get("format") != FORMAT_TAG:
        fail(f"expected a linexport export manifest (format {FORMAT_TAG!r})")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and 1 <= version < FORMAT_VERSION:
        raise LinexportError(
            f"{where}: this export was written by an older linexport (manifest format {version}); its "
            f"prefill graph cannot continue a sequence from a state, which this linexport needs "
            f"(format {FORMAT_VERSION}). Re-export it: {reexport_command(data, where)}")
    if version != FORMAT_VERSION:
        raise LinexportError(f"{where}: manifest format version {version!r}; this linexport reads "
                             f"format {FORMAT_VERSION}. Upgrade linexport or re-export.")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind) or (kind is int and isinstance(data[key], bool)):
            fail(f"expected field {key!r} to be a {kind.__name__}, got {data.get(key)!r}")
    if data["precision"] not in PRECISIONS:
        fail(f"expected precision in {sorted(PRECISIONS)}, got {data['precision']!r}")
    if data["vocab_size"] < 1:
        fail(f"expected vocab_size >= 1, got {data['vocab_size']}")
    if not isinstance(data["lowering"].get("option"), str) or not isinstance(data["lowering"].get("ops"), dict):
        fail("expected lowering to hold 'option' (str) and 'ops' (dict)")
    tokenizer = data["tokenizer"]
    if tokenizer.get("type") == "json":
        if not (_inside(tokenizer.get("file")) and isinstance(tokenizer.get("sha256"), str)
                and len(tokenizer["sha256"]) == 64):
            fail(f"expected a json tokenizer as {{type, file: a relative path inside the export, sha256}} "
                 f"(the exporter copies it into the export), got {tokenizer!r}")
    elif tokenizer != {"type": "bytes"}:
        fail(f"expected tokenizer {{'type': 'bytes'}} or {{'type': 'json', 'file', 'sha256'}}, got {tokenizer!r}")

    states = data["states"]
    for s in states:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("shape"), list)
                and s.get("shape")[:1] == ["batch"] and s.get("dtype") == STATE_DTYPE
                and all((isinstance(d, int) and d >= 1) or d == PAST_SEQ
                        for d in s["shape"][1:])
                and s["shape"].count(PAST_SEQ) <= 1):
            fail(f"expected each state as {{name, shape ['batch', ints... (one of them may be "
                 f"{PAST_SEQ!r})], dtype {STATE_DTYPE!r}}}, got {s!r}")
    names = [s["name"] for s in states]
    if len(set(names)) != len(names):
        fail(f"expected unique state names, got {names}")

    act = PRECISIONS[data["precision"]]
    fresh = [_io("input_ids", ["batch", "seq"], "int64"), _io("lengths", ["batch"], "int64")]
    past = [_io("position", ["batch"], "int64"), *(_io(f"past.{s['name']}", s["shape"], STATE_DTYPE) for s in states)]
    logits_prefill = ["batch", "seq", data["vocab_size"]] if data["full_logits"] else ["batch", data["vocab_size"]]
    expected = {
        "prefill": ([*fresh, *past] if prefill_continues(data) else fresh,
                    [_io("logits", logits_prefill, act),
                     *(_io(f"present.{s['name']}", _cache_dim(s["shape"], "seq"), STATE_DTYPE) for s in states)]),
        "decode": ([_io("input_ids", ["batch", 1], "int64"), *past],
                   [_io("logits", ["batch", data["vocab_size"]], act),
                    *(_io(f"present.{s['name']}", _cache_dim(s["shape"], PRESENT_SEQ), STATE_DTYPE)
                      for s in states)]),
    }
    for name in GRAPHS:
        graph = data["graphs"].get(name)
        if not isinstance(graph, dict):
            fail(f"expected a {name!r} graph entry")
        for entry in [graph, *(graph.get("external_data") or [])]:
            if not (isinstance(entry, dict) and _inside(entry.get("file"))
                    and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
                fail(f"expected {name} files as {{file: a relative path inside the export, sha256}}, "
                     f"got {entry!r}")
        if not isinstance(graph.get("external_data"), list):
            fail(f"expected {name}.external_data to be a list")
        inputs, outputs = expected[name]
        if graph.get("inputs") != inputs or graph.get("outputs") != outputs:
            fail(f"the {name} graph's IO does not match the graph contract and the state specs: "
                 f"expected inputs {inputs} and outputs {outputs}, got {graph.get('inputs')} and "
                 f"{graph.get('outputs')}")
    if "quantization" in data:
        _validate_quantization(data["quantization"], data, fail)
    if "engines" in data:
        _validate_engines(data["engines"], data["precision"], fail)


def quant_block_size_error(scheme: str, fmt: str, block_size) -> str | None:
    """Why ``block_size`` is no block size for ``scheme`` in ``fmt`` (None: it is one)."""
    if fmt == "QDQ" and scheme == "int8":
        return None if block_size is None else (
            f"int8 QDQ weights have one scale per output channel (TensorRT's int8 weight-only form), "
            f"so no block size: drop --block-size, got {block_size!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        return f"expected an int block size, got {block_size!r}"
    if fmt == "QDQ":
        return None if block_size in QUANT_QDQ_BLOCK_SIZES else (
            f"expected --block-size in {list(QUANT_QDQ_BLOCK_SIZES)} for int4 QDQ (TensorRT's blocked "
            f"int4 weights), got {block_size}")
    if block_size < 16 or block_size & (block_size - 1):
        return (f"expected --block-size a power of two >= 16 (MatMulNBits' blocks along K), got {block_size}; "
                f"try 32 (the default), 64 or 128")
    return None


def _validate_quantization(q, data: dict, fail):
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(q, dict):
        fail(f"expected quantization as a dict, got {q!r:.200}")
    keys = {"scheme", "bits", "format", "block_size", "symmetric", "accuracy_level", "weights", "embeddings",
            "tool", "tool_version", "nodes"}
    if set(q) != keys:
        fail(f"expected quantization to hold exactly {sorted(keys)}, got {sorted(q)}")
    if q["scheme"] not in QUANT_SCHEMES or q["bits"] != QUANT_SCHEMES[q["scheme"]]:
        fail(f"expected quantization.scheme in {sorted(QUANT_SCHEMES)} with its bits "
             f"({QUANT_SCHEMES}), got {q['scheme']!r} with bits {q['bits']!r}")
    if q["format"] not in QUANT_FORMATS:
        fail(f"expected quantization.format in {list(QUANT_FORMATS)}, got {q['format']!r}")
    problem = quant_block_size_error(q["scheme"], q["format"], q["block_size"])
    if problem:
        fail(f"quantization.block_size: {problem}")
    if q["symmetric"] is not True and q["format"] == "QDQ":
        fail("expected symmetric QDQ weights (TensorRT's dequantize takes no zero point)")
    if not isinstance(q["symmetric"], bool) or not is_int(q["accuracy_level"]) or not 0 <= q["accuracy_level"] <= 4:
        fail(f"expected quantization.symmetric a bool and accuracy_level in 0..4, got "
             f"{q['symmetric']!r} and {q['accuracy_level']!r}")
    if q["format"] == "QDQ" and q["accuracy_level"] != 0:
        fail(f"expected accuracy_level 0 for QDQ weights (it is MatMulNBits' attribute), got {q['accuracy_level']!r}")
    weights = q["weights"]
    if not (isinstance(weights, list) and weights[:1] == ["MatMul"] and set(weights) <= {"MatMul", "Gather"}
            and len(set(weights)) == len(weights)):
        fail(f"expected quantization.weights as ['MatMul'] or ['MatMul', 'Gather'], got {weights!r}")
    if not isinstance(q["embeddings"], bool) or ("Gather" in weights and not q["embeddings"]):
        fail(f"expected quantization.embeddings a bool (true where Gather weights are quantized), got "
             f"{q['embeddings']!r} with weights {weights!r}")
    if not (isinstance(q["tool"], str) and q["tool"] and isinstance(q["tool_version"], str) and q["tool_version"]):
        fail(f"expected quantization.tool and tool_version as strings, got {q['tool']!r}, {q['tool_version']!r}")
    nodes = q["nodes"]
    if not (isinstance(nodes, dict) and set(nodes) == set(GRAPHS) and all(is_int(v) and v >= 1 for v in nodes.values())):
        fail(f"expected quantization.nodes as {{prefill, decode: quantized-weight nodes >= 1}}, got {nodes!r}")
    floor = quant_min_opset(q["format"], weights)
    if data["opset"] < floor:
        fail(f"expected opset >= {floor} for {q['format']} weights {weights}, got {data['opset']}")


ENGINE_TARGETS = ("tensorrt", "rtx")


def _validate_engines(engines, precision: str, fail):
    def file_entry(entry) -> bool:
        return (isinstance(entry, dict) and _inside(entry.get("file")) and isinstance(entry.get("sha256"), str)
                and len(entry["sha256"]) == 64)

    if not isinstance(engines, dict) or engines.get("target") not in ENGINE_TARGETS:
        fail(f"expected engines.target in {list(ENGINE_TARGETS)}, got {engines!r:.200}")
    if engines.get("precision") != precision:
        fail(f"expected engines built at the graphs' precision {precision!r}, got {engines.get('precision')!r}")
    profile = engines.get("profile")
    if not (isinstance(profile, dict) and all(
            isinstance(r, list) and len(r) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
            and 0 <= r[0] <= r[1] <= r[2] for r in profile.values())
            and {"batch", "seq"} <= set(profile)):
        fail(f"expected engines.profile as {{dim: [min, opt, max]}} with 'batch' and 'seq', got {profile!r}")
    graphs = engines.get("graphs")
    if not (isinstance(graphs, dict) and set(graphs) == set(GRAPHS) and all(map(file_entry, graphs.values()))):
        fail(f"expected engines.graphs as {{prefill, decode: {{file, sha256}}}}, got {graphs!r}")
    plugin = engines.get("plugin_library")
    if plugin is not None and not file_entry(plugin):
        fail(f"expected engines.plugin_library as null or {{file, sha256}}, got {plugin!r}")


PRESENT_SEQ = f"{PAST_SEQ}+1"  # the decode graph's present.* cache length


def prefill_continues(data: dict) -> bool:
    """Whether the export's prefill graph continues from a state (``position``, ``past.*``): yes
    for fixed-size states, no for KV caches (contract/graph_io.py)."""
    return not any(PAST_SEQ in s.get("shape", []) for s in data.get("states", []) if isinstance(s, dict))


def reexport_command(data: dict, where: str = MANIFEST_NAME) -> str:
    """The `linexport onnx` command that writes this (older) export again in the current format,
    from what its manifest recorded; placeholders where a field is missing or damaged."""
    def field(value, kind):
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    lowering = data.get("lowering") if isinstance(data.get("lowering"), dict) else {}
    checkpoint = field(source.get("checkpoint"), str)
    root = str(Path(where).parent) if Path(where).name == MANIFEST_NAME else "OUT"
    parts = ["linexport onnx", f"--model {shlex.quote(checkpoint)}" if checkpoint else "--model CHECKPOINT",
             f"-o {shlex.quote(root)}"]
    if field(data.get("precision"), str) in PRECISIONS:
        parts.append(f"--dtype {data['precision']}")
    if field(lowering.get("option"), str):
        parts.append(f"--lowering {lowering['option']}")
    quant = data.get("quantization") if isinstance(data.get("quantization"), dict) else None
    if field(data.get("opset"), int):
        floor = quant_min_opset(quant.get("format"), quant.get("weights") or []) if quant else 1
        parts.append(f"--opset {max(data['opset'], floor)}")
    if data.get("full_logits") is True:
        parts.append("--full-logits")
    if quant and quant.get("scheme") in QUANT_SCHEMES:
        parts.append(f"--quantize {quant['scheme']}")
        if quant.get("format") in QUANT_FORMATS and quant["format"] != QUANT_FORMATS[0]:
            parts.append(f"--quant-format {quant['format']}")
        if isinstance(quant.get("block_size"), int):
            parts.append(f"--block-size {quant['block_size']}")
        if quant.get("embeddings") is True:
            parts.append("--quantize-embeddings")
        if isinstance(quant.get("accuracy_level"), int) and quant.get("format") == QUANT_FORMATS[0]:
            parts.append(f"--accuracy-level {quant['accuracy_level']}")
    return " ".join(parts)


def _cache_dim(shape: list, name: str) -> list:
    """``shape`` with its ``past_seq`` dim (if any) renamed to ``name``."""
    return [name if d == PAST_SEQ else d for d in shape]


def write_manifest(data: dict, root) -> Path:
    """Validates ``data`` and writes it as ``root/linexport.json`` (root is a fresh temp dir)."""
    validate_manifest(data)
    path = Path(root) / MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def update_manifest(data: dict, root) -> Path:
    """Validates ``data`` and replaces ``root/linexport.json`` with it in one rename."""
    validate_manifest(data)
    path = Path(root) / MANIFEST_NAME
    # The temp file goes beside the export, never into the directory a user deploys.
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"),
                 Path(root).absolute().parent)
    return path


def io_entry(name: str, shape: list, dtype: str) -> dict:
    return _io(name, shape, dtype)


def _io(name, shape, dtype) -> dict:
    return {"name": name, "shape": list(shape), "dtype": dtype}


def _inside(file) -> bool:
    """A plain relative path that stays inside the export directory."""
    if not isinstance(file, str) or not file or "\\" in file:
        return False
    p = PurePosixPath(file)
    return not p.is_absolute() and ".." not in p.parts


def verify_file(root: Path, file: str, sha256: str, verify_hash: bool = True):
    """Refuses ``root/file`` if it is missing or (with ``verify_hash``) its content does not
    match ``sha256`` (through the per-process digest cache, ``cached_sha256``)."""
    path = Path(root) / file
    if not path.is_file():
        raise LinexportError(f"expected {path} (named in {MANIFEST_NAME}), but it is missing: the "
                             "export directory is incomplete; re-export it")
    if verify_hash and cached_sha256(path) != sha256:
        raise LinexportError(f"expected {path} to match the sha256 in {MANIFEST_NAME}, got a different "
                             "file: it was modified or replaced after export; re-export it")
