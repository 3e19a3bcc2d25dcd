"""`linexport trt`: TensorRT engines from an export directory, recorded in its manifest.

One flow for both targets (``linexport.tensorrt_flavours``):

    check options -> (re-export at the requested precision) -> check lowering vs target
    -> load our plugin library (tensorrt) -> per graph: parse, check the network's IO against
    the manifest, optimization profile, build -> write OUT/{prefill,decode}.engine and record
    them (and the plugin library, copied into OUT) in linexport.json

The profile covers every input the manifest lists for a graph, with its shapes from the
manifest: "batch" and "seq" from the options, fixed dims as they are. So a fixed-size-state
export's prefill engine gets ``position`` [batch] and each ``past.*`` [batch, the state's
dims] (it continues from a state, contract/graph_io.py), a KV-cache export's only
``input_ids`` and ``lengths``. ``engines.profile`` in the manifest records the named dims'
ranges the engines were built with; the report has every input's (min, opt, max) shapes.

Networks are strongly typed: precision comes from the graph, so an fp16 export builds fp16
kernels while its recurrent state stays exactly as fp32 as the graph says (the graph casts;
TensorRT may not reformat a strongly typed tensor). ``--fp16`` therefore means "build from the
fp16 export", re-exporting the checkpoint when OUT holds another precision.

Every file is written to a temp path and renamed into place; the manifest, replaced last in
one rename, is what makes a build visible to the runtime.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from linexport.errors import LinexportError
from linexport.contract.manifest import (MANIFEST_NAME, load_manifest, reexport_command, update_manifest)
from linexport.export.quantize import options_from_record, record
from linexport.files import atomic_write, file_sha256
from linexport.tensorrt_flavours import TARGETS, import_tensorrt

ENGINE_FILES = {"prefill": "prefill.engine", "decode": "decode.engine"}
# Precisions an engine can be built at, and the export precision each needs.
ENGINE_PRECISIONS = ("fp32", "fp16")
# TensorRT's parser warns once per unnamed node of an inlined function ("A node named
# node_of_x already exists") and once per int64 input ("Make sure input ... has Int64 binding",
# which the runtime does): neither says anything a user can act on.
_NOISE = ("already exists, the output tensors of this new instance will not be queryable",
          "has Int64 binding")
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64",
               "INT32": "int32", "BOOL": "bool"}


@dataclass(frozen=True)
class EngineOptions:
    """What `linexport trt` builds. Batch and seq ranges become the optimization profile
    (min, opt, max); the runtime may then decode up to ``max_batch`` sequences at once and
    prefill prompts of up to ``max_seq`` tokens."""

    target: str = "tensorrt"
    precision: str | None = None  # None: the export's own precision
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    opt_seq: int | None = None  # default: min(256, max_seq)
    max_seq: int = 4096
    workspace_mb: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: Path | None = None
    plugin_lib: Path | None = None
    tf32: bool = False  # fp32 matmuls in TF32 (faster, ~1e-3 relative error)

    def checked(self) -> EngineOptions:
        if self.target not in TARGETS:
            raise LinexportError(f"expected --target in {list(TARGETS)}, got {self.target!r}")
        if self.precision is not None and self.precision not in ENGINE_PRECISIONS:
            raise LinexportError(f"expected a precision in {list(ENGINE_PRECISIONS)}, got {self.precision!r}"
                                 + ("; bf16 engines need a bf16 export, which linexport does not write yet: "
                                    "use --fp16" if self.precision == "bf16" else ""))
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise LinexportError(f"expected 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                                 f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        opt_seq = min(256, self.max_seq) if self.opt_seq is None else self.opt_seq
        if not 1 <= opt_seq <= self.max_seq:
            raise LinexportError(f"expected 1 <= --opt-seq <= --max-seq, got {opt_seq} and {self.max_seq}")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise LinexportError(f"expected --workspace in MiB >= 1, got {self.workspace_mb}")
        if self.target == "rtx" and self.plugin_lib is not None:
            raise LinexportError("TensorRT-RTX takes no custom plugins: drop --plugin-lib, or build "
                                 "with --target tensorrt")
        return EngineOptions(**{**asdict(self), "opt_seq": opt_seq})

    @property
    def ranges(self) -> dict[str, tuple[int, int, int]]:
        """Named graph dims -> (min, opt, max) of the profile."""
        seq = (1, self.opt_seq, self.max_seq)
        return {"batch": (self.min_batch, self.opt_batch, self.max_batch), "seq": seq,
                "past_seq": (0, self.opt_seq, self.max_seq)}


@dataclass
class BuildReport:
    manifest: dict
    reexported: str | None = None  # why the graphs were re-exported, if they were
    seconds: dict = field(default_factory=dict)  # graph -> build time
    profiles: dict = field(default_factory=dict)  # graph -> input -> [min, opt, max] shapes TensorRT was given
    attention: str = ""  # how the attention op was built: plugin / inlined function body / traced


def build_engines(out, options: EngineOptions = EngineOptions(),
                  log: Callable[[str], None] = lambda message: None) -> BuildReport:
    """Builds OUT's prefill and decode engines for ``options.target``; returns the report with
    the manifest now on disk."""
    options = options.checked()
    out = Path(out)
    trt = import_tensorrt(options.target)  # first: no re-export for a build that cannot run
    manifest = load_manifest(out)
    _check_writable(out)  # before minutes of building, not after
    report = BuildReport(manifest)
    _check_quantization(manifest, out)  # before a re-export, which would keep the format
    if options.precision and options.precision != manifest["precision"]:
        report.reexported = _reexport(out, manifest, options.precision, log)
        manifest = report.manifest = load_manifest(out)
    _check_lowering(manifest, options.target, out)

    plugin = _load_plugin(trt, manifest, options, log)
    cache = _read_timing_cache(options, log)
    engines, layers = {}, {}
    for name in ENGINE_FILES:
        start = time.perf_counter()
        log(f"building the {name} engine ({options.target} {trt.__version__}, {manifest['precision']}, "
            f"batch {options.min_batch}..{options.max_batch}"
            + (f", seq 1..{options.max_seq}" if name == "prefill" else "") + ")")
        engines[name], layers[name], report.profiles[name], cache = _build(trt, out, manifest, name, options,
                                                                           plugin, cache, log)
        report.seconds[name] = time.perf_counter() - start
        log(f"  {name} engine: {len(engines[name]) / 2**20:.1f} MiB in {report.seconds[name]:.1f}s")
    report.attention = _attention_kind(manifest, layers)

    record = {"target": options.target, "tensorrt_version": str(trt.__version__),
              "precision": manifest["precision"], "strongly_typed": True, "tf32": options.tf32,
              "profile": {k: list(v) for k, v in options.ranges.items() if k in _named_dims(manifest)},
              "attention": report.attention, "plugin_library": None, "graphs": {}}
    # Temp files go beside OUT, not into it: OUT is what a user deploys (and copies whole).
    beside = out.absolute().parent
    for name, blob in engines.items():
        atomic_write(out / ENGINE_FILES[name], lambda tmp, blob=blob: Path(tmp).write_bytes(blob), beside)
        record["graphs"][name] = {"file": ENGINE_FILES[name], "sha256": file_sha256(out / ENGINE_FILES[name])}
    if plugin is not None:
        # The engines need the plugin at load time: ship it inside the export directory, so the
        # directory alone is what a deployment copies.
        atomic_write(out / plugin.name, lambda tmp: shutil.copyfile(plugin, tmp), beside)
        record["plugin_library"] = {"file": plugin.name, "sha256": file_sha256(out / plugin.name)}
    if cache is not None and options.timing_cache is not None:
        atomic_write(options.timing_cache, lambda tmp: Path(tmp).write_bytes(cache))
    manifest = dict(manifest, engines=record)
    update_manifest(manifest, out)
    report.manifest = manifest
    log(f"recorded the engines in {out / MANIFEST_NAME}")
    return report


# -- steps ------------------------------------------------------------------------------------
def _check_writable(out: Path):
    """The engines and the updated manifest are written beside OUT and renamed into it: try
    both places before building."""
    import tempfile

    for place in (out, out.absolute().parent):
        try:
            with tempfile.TemporaryFile(dir=place):
                pass
        except OSError as e:
            raise LinexportError(f"expected {place} to be writable (the engines and the manifest are "
                                 f"written {'into' if place == out else 'beside'} the export {out}), got "
                                 f"{type(e).__name__}: {e.strerror or e}; copy the export somewhere "
                                 "writable, or fix its permissions") from None


def _reexport(out: Path, manifest: dict, precision: str, log) -> str:
    from linexport.export.exporter import export_checkpoint, source_record

    source = Path(manifest["source"]["checkpoint"])
    hint = (f"export it yourself: `linexport onnx --model CKPT --dtype {precision} "
            f"--lowering {manifest['lowering']['option']} -o {out}`")
    if not source.exists():
        raise LinexportError(f"{out} holds {manifest['precision']} graphs; {precision} engines need "
                             f"{precision} graphs, but its checkpoint {source} is gone: {hint}")
    same = lambda record: {k: v for k, v in record.items() if k != "checkpoint"}  # noqa: E731
    if same(source_record(source)) != same(manifest["source"]):
        raise LinexportError(f"{out} holds {manifest['precision']} graphs; {precision} engines need "
                             f"{precision} graphs, but {source} changed since that export: {hint}")
    why = (f"{out} holds {manifest['precision']} graphs: re-exporting {source} as {precision} into "
           f"{out} ({manifest['lowering']['option']} lowering, opset {manifest['opset']})")
    log(why)
    quant = manifest.get("quantization")
    export_checkpoint(source, out, lowering=manifest["lowering"]["option"], opset=manifest["opset"],
                      dtype=precision, full_logits=manifest["full_logits"], log=lambda m: log(f"  {m}"),
                      quantize=options_from_record(quant) if quant else None)
    return why


def _check_quantization(manifest: dict, out: Path):
    """MatMulNBits is ONNX Runtime's contrib op: no TensorRT parser knows it."""
    quant = manifest.get("quantization")
    if quant and quant["format"] != "QDQ":
        qdq = options_from_record({**quant, "format": "QDQ", "block_size": None, "accuracy_level": None}).checked()
        command = reexport_command({**manifest, "quantization": record(qdq, quant["nodes"])}, str(out / MANIFEST_NAME))
        raise LinexportError(f"{out} holds {quant['scheme']} {quant['format']} weights, ONNX Runtime's own op, "
                             f"which TensorRT cannot parse; TensorRT takes QDQ weights: {command}")


def _check_lowering(manifest: dict, target: str, out: Path):
    ops = manifest["lowering"]["ops"]
    if target != "rtx":
        return
    # The RTX parser aborts the whole process on a custom node it cannot resolve, and it has
    # no LinearAttention plugin: refuse both before parsing.
    wrong = {op: how for op, how in ops.items() if how in ("plugin", "standard")}
    if wrong:
        raise LinexportError(f"{out} was exported with the {manifest['lowering']['option']!r} lowering "
                             f"({wrong}); TensorRT-RTX builds only 'function'-lowered graphs (it takes no "
                             f"custom plugins). Re-export with `linexport onnx --lowering function -o {out}`, "
                             f"or build with --target tensorrt")


def _load_plugin(trt, manifest: dict, options: EngineOptions, log) -> Path | None:
    """Loads our plugin library into TensorRT's registry (target tensorrt); its path or None."""
    if options.target == "rtx" or "attention_op" not in manifest["lowering"]:
        return None  # nothing in these graphs for the plugin (rtx; or flash's traced attention)
    from linexport.plugins import find_plugin_library, load_trt_plugins

    needs = "plugin" in manifest["lowering"]["ops"].values()
    try:
        path = find_plugin_library(options.plugin_lib)
    except LinexportError as e:
        if needs or options.plugin_lib is not None:
            raise LinexportError(f"the graphs hold the bare CausalLinearAttention node, which only our "
                                 f"plugin implements: {e}") from None
        log(f"  no plugin library ({e}); TensorRT will inline the function body instead")
        return None
    load_trt_plugins(trt.get_plugin_registry(), path)
    log(f"  loaded the plugin library {path}")
    return path


def _read_timing_cache(options: EngineOptions, log) -> bytes | None:
    if options.timing_cache is None:
        return None
    if options.target == "rtx":
        log("  TensorRT-RTX keeps no timing cache (it tunes on the user's GPU): --timing-cache ignored")
        return None
    path = Path(options.timing_cache)
    if path.exists() and not path.is_file():
        raise LinexportError(f"expected --timing-cache to name a file, got the directory {path}")
    return path.read_bytes() if path.exists() else b""


def _build(trt, out: Path, manifest: dict, name: str, options: EngineOptions, plugin: Path | None,
           cache: bytes | None, log):
    logger = _logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if plugin is not None and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        # TensorRT >= 10.15 inlines a local function unless told to prefer a plugin of its name.
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    path = out / manifest["graphs"][name]["file"]
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LinexportError(f"TensorRT's ONNX parser rejected {path}: {errors or logger.errors}")
    graph = manifest["graphs"][name]
    _check_network_io(trt, network, graph, path)

    config = builder.create_builder_config()
    config.progress_monitor = _progress(trt, name, log)
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if not options.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    timing = None
    if cache is not None:
        timing = config.create_timing_cache(cache)
        config.set_timing_cache(timing, False)
    profile = builder.create_optimization_profile()
    for entry in graph["inputs"]:
        profile.set_shape(entry["name"], *_profile_shapes(entry, options.ranges))
    if config.add_optimization_profile(profile) < 0:
        raise LinexportError(f"TensorRT refused the {name} engine's optimization profile: "
                             + ("; ".join(logger.errors) or "see the log above"))
    shapes = {e["name"]: [list(dims) for dims in profile.get_shape(e["name"])] for e in graph["inputs"]}

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LinexportError(f"TensorRT could not build the {name} engine: "
                             + ("; ".join(logger.errors) or "see the log above")
                             + ". Smaller --max-seq/--max-batch or a larger --workspace may help")
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugin_layers = sum(1 for layer in layers if layer.type in _plugin_layer_types(trt))
    if timing is not None:
        cache = bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized)), plugin_layers, shapes, cache


def _plugin_layer_types(trt) -> tuple:
    return tuple(getattr(trt.LayerType, n) for n in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN") if hasattr(trt.LayerType, n))


def _attention_kind(manifest: dict, plugin_layers: dict) -> str:
    if "attention_op" not in manifest["lowering"]:
        return "traced"  # e.g. FLASH's mixed-chunk attention: ordinary layers
    if all(plugin_layers.values()):
        return "plugin"
    ops = set(manifest["lowering"]["ops"].values())
    return "standard LinearAttention" if ops == {"standard"} else "inlined function body"


def _named_dims(manifest: dict) -> set[str]:
    return {d for g in manifest["graphs"].values() for e in g["inputs"] for d in e["shape"] if isinstance(d, str)}


def _profile_shapes(entry: dict, ranges: dict) -> tuple[list, list, list]:
    """One graph input's (min, opt, max) shapes from its manifest dims ("batch", "seq", ints)."""
    shapes = ([], [], [])
    for dim in entry["shape"]:
        if isinstance(dim, int):
            values = (dim, dim, dim)
        elif dim in ranges:
            values = ranges[dim]
        else:
            raise LinexportError(f"input {entry['name']} has a dim {dim!r} that linexport cannot give a "
                                 f"range to (expected {sorted(ranges)} or ints); re-export the model")
        for shape, value in zip(shapes, values):
            shape.append(value)
    return shapes


def _check_network_io(trt, network, graph: dict, path: Path):
    """The parsed network must have exactly the manifest's IO, dtypes included: a strongly typed
    network keeps them, so this is where "the state stays fp32" is enforced. Its inputs' fixed
    dims must be the manifest's too (the profile is made from the manifest's shapes)."""
    found = {}
    for getter, count in ((network.get_input, network.num_inputs), (network.get_output, network.num_outputs)):
        for i in range(count):
            tensor = getter(i)
            found[tensor.name] = _TRT_DTYPES.get(tensor.dtype.name, tensor.dtype.name)
    expected = {e["name"]: e["dtype"] for e in [*graph["inputs"], *graph["outputs"]]}
    if found != expected:
        raise LinexportError(f"{path}: TensorRT's network IO {found} differs from the manifest's "
                             f"{expected}; re-export the model")
    shapes = {network.get_input(i).name: list(network.get_input(i).shape) for i in range(network.num_inputs)}
    wanted = {e["name"]: [-1 if isinstance(d, str) else d for d in e["shape"]] for e in graph["inputs"]}
    if shapes != wanted:
        raise LinexportError(f"{path}: TensorRT's network input shapes {shapes} differ from the manifest's "
                             f"{wanted} (-1: a dynamic dim); re-export the model")


def _logger(trt, log):
    class Logger(trt.ILogger):
        """TensorRT's messages: errors kept for our error message, warnings shown, info dropped."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log(f"  TensorRT error: {msg}")
            elif severity == trt.ILogger.Severity.WARNING and not any(n in msg for n in _NOISE):
                log(f"  TensorRT warning: {msg}")

    return Logger()


def _progress(trt, graph: str, log):
    class Progress(trt.IProgressMonitor):
        """Shows the builder's top two levels of phases; a build takes minutes on big models."""

        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.start: dict[str, float] = {}

        def phase_start(self, phase, parent, steps):
            depth = self.depth[phase] = self.depth.get(parent, -1) + 1 if parent else 0
            self.start[phase] = time.perf_counter()
            if depth <= 1:
                log(f"  {graph}: {'  ' * depth}{phase}")

        def step_complete(self, phase, step):
            return True  # keep building

        def phase_finish(self, phase):
            if self.depth.get(phase, 2) <= 1:
                log(f"  {graph}: {'  ' * self.depth[phase]}{phase} done in "
                    f"{time.perf_counter() - self.start[phase]:.1f}s")

    return Progress()
