"""``linexport.json``: the manifest an export writes beside its graphs, and its validator.

Pure JSON + hashlib — no torch, no onnx — so the runtime can read it. Layout (format 1):

    {"format": "linexport.export", "format_version": 1, "linexport_version": "0.1.0",
     "arch": "linear", "config": {...}, "vocab_size": 256, "tokenizer": {"type": "bytes"},
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
     # only after `linexport trt` (export/engines.py):
     "engines": {"target": "rtx",            # or "tensorrt"
                 "tensorrt_version": "1.7.1.116", "precision": "fp16", "strongly_typed": true,
                 "tf32": false,
                 "profile": {"batch": [1, 1, 8], "seq": [1, 256, 4096], ...},  # (min, opt, max)
                 "attention": "plugin",      # or "inlined function body", "traced", ...
                 "plugin_library": null,     # or {"file": "liblinexport_trt_plugin.so", "sha256": "..."}
                 "graphs": {"prefill": {"file": "prefill.engine", "sha256": "..."}, "decode": {...}}}}

Graph IO for each state: ``past.{name}`` in (decode) and ``present.{name}`` out (both graphs).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from linexport.errors import LinexportError
from linexport.files import atomic_write, file_sha256

MANIFEST_NAME = "linexport.json"
FORMAT_TAG = "linexport.export"
FORMAT_VERSION = 1
PRECISIONS = {"fp32": "float32", "fp16": "float16"}  # --dtype -> activation dtype
STATE_DTYPE = "float32"
GRAPHS = ("prefill", "decode")

_REQUIRED = {"format": str, "format_version": int, "arch": str, "config": dict, "vocab_size": int,
             "tokenizer": dict, "precision": str, "opset": int, "full_logits": bool,
             "lowering": dict, "graphs": dict, "states": list, "source": dict}


def load_manifest(root, verify_hashes: bool = True) -> dict:
    """Reads and validates ``root/linexport.json``; with ``verify_hashes`` also checks that
    every graph file named there exists and matches its recorded sha256."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise LinexportError(f"expected an export directory holding {MANIFEST_NAME}, got {root} "
                             f"(no {path.name} there); create one with `linexport onnx -o {root}`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LinexportError(f"{path} is not valid JSON ({e}); re-export with `linexport onnx`") from None
    validate_manifest(data, where=str(path))
    if verify_hashes:
        for name in GRAPHS:
            graph = data["graphs"][name]
            for entry in [graph, *graph["external_data"]]:
                _check_file(root, entry["file"], entry["sha256"])
    return data


def engine_files(data: dict) -> list[dict]:
    """The ``{file, sha256}`` entries of the TensorRT engines (and plugin library) recorded in a
    validated manifest; empty before `linexport trt`."""
    engines = data.get("engines")
    if not engines:
        return []
    return [*engines["graphs"].values(), *([engines["plugin_library"]] if engines["plugin_library"] else [])]


def validate_manifest(data, where: str = MANIFEST_NAME) -> None:
    """Raises LinexportError naming the first field that does not follow format 1."""
    def fail(message):
        raise LinexportError(f"{where}: {message}; re-export with `linexport onnx`")

    if not isinstance(data, dict) or data.get("format") != FORMAT_TAG:
        fail(f"expected a linexport export manifest (format {FORMAT_TAG!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise LinexportError(f"{where}: manifest format version {version!r}; this linexport reads "
                             f"1 to {FORMAT_VERSION}. Upgrade linexport or re-export.")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind) or (kind is int and isinstance(data[key], bool)):
            fail(f"expected field {key!r} to be a {kind.__name__}, got {data.get(key)!r}")
    if data["precision"] not in PRECISIONS:
        fail(f"expected precision in {sorted(PRECISIONS)}, got {data['precision']!r}")
    if data["vocab_size"] < 1:
        fail(f"expected vocab_size >= 1, got {data['vocab_size']}")
    if not isinstance(data["lowering"].get("option"), str) or not isinstance(data["lowering"].get("ops"), dict):
        fail("expected lowering to hold 'option' (str) and 'ops' (dict)")

    states = data["states"]
    for s in states:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("shape"), list)
                and s.get("shape")[:1] == ["batch"] and s.get("dtype") == STATE_DTYPE
                and all(isinstance(d, int) and d >= 1 for d in s["shape"][1:])):
            fail(f"expected each state as {{name, shape ['batch', ints...], dtype {STATE_DTYPE!r}}}, "
                 f"got {s!r}")
    names = [s["name"] for s in states]
    if len(set(names)) != len(names):
        fail(f"expected unique state names, got {names}")

    act = PRECISIONS[data["precision"]]
    logits_prefill = ["batch", "seq", data["vocab_size"]] if data["full_logits"] else ["batch", data["vocab_size"]]
    present = [_io(f"present.{s['name']}", s["shape"], STATE_DTYPE) for s in states]
    expected = {
        "prefill": ([_io("input_ids", ["batch", "seq"], "int64"), _io("lengths", ["batch"], "int64")],
                    [_io("logits", logits_prefill, act), *present]),
        "decode": ([_io("input_ids", ["batch", 1], "int64"), _io("position", ["batch"], "int64"),
                    *(_io(f"past.{s['name']}", s["shape"], STATE_DTYPE) for s in states)],
                   [_io("logits", ["batch", data["vocab_size"]], act), *present]),
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
    if "engines" in data:
        _validate_engines(data["engines"], data["precision"], fail)


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
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))
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


def _check_file(root: Path, file: str, sha256: str):
    path = root / file
    if not path.is_file():
        raise LinexportError(f"expected {path} (named in {MANIFEST_NAME}), but it is missing: the "
                             "export directory is incomplete; re-export it")
    if file_sha256(path) != sha256:
        raise LinexportError(f"expected {path} to match the sha256 in {MANIFEST_NAME}, got a different "
                             "file: it was modified or replaced after export; re-export it")
