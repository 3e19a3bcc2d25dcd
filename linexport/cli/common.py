"""Option groups and helpers shared by several commands."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

from linexport.errors import LinexportError

model_option = click.option(
    "--model", type=click.Path(path_type=Path), default=None,
    help="Checkpoint (.pt, or .safetensors with its .json). Default: the bundled demo model.")


def demo_checkpoint(arch: str = "linear") -> Path:
    """Path of a bundled demo checkpoint (`linear` or `flash`)."""
    path = Path(str(resources.files("linexport.models") / "demo" / f"{arch}.pt"))
    if not path.exists():
        raise LinexportError(f"the bundled demo model {path} is missing; reinstall linexport or "
                             f"train one with `linexport train --arch {arch} -o {path}`")
    return path


def auto_target(target: str) -> str:
    """``auto`` -> the TensorRT flavour installed here (full TensorRT first)."""
    from linexport.tensorrt_flavours import TARGETS, is_installed

    if target != "auto":
        return target
    for candidate in TARGETS:
        if is_installed(candidate):
            return candidate
    raise LinexportError("no TensorRT is installed: pip install tensorrt-cu13 (TensorRT, with our plugin) "
                         "or pip install tensorrt-rtx-cu13 (TensorRT for RTX GPUs)")


target_option = click.option(
    "--target", type=click.Choice(["auto", "tensorrt", "rtx"]), default="auto", show_default=True,
    help="TensorRT flavour: 'tensorrt' (TensorRT >= 10, with our plugin) or 'rtx' (TensorRT for RTX, "
         "function-lowered graphs, no plugin); 'auto' takes the one installed.")


def print_checks(checks) -> bool:
    """Prints ``contract.checks.Check`` rows as a table; True when all passed."""
    # The tolerance applies to the relative error: the two stand side by side; the absolute
    # error is for information only.
    width = max(len(c.what) for c in checks)
    click.echo(f"{'check'.ljust(width)}  {'rel err':>10}  {'<= rel tol':>10}        {'(abs err)':>10}")
    for c in checks:
        mark = "ok  " if c.ok else click.style("FAIL", fg="red")
        click.echo(f"{c.what.ljust(width)}  {c.rel_err:10.3e}  {c.tol:10.3e}  {mark}  {c.abs_err:10.3e}")
    failed = [c for c in checks if not c.ok]
    if failed:
        click.secho(f"{len(failed)} of {len(checks)} checks failed", fg="red", err=True)
        return False
    click.echo(f"all {len(checks)} checks passed")
    return True


def quantize_options(fn, required: bool = False):
    """--quantize and its settings (export/quantize.py), shared by `onnx` and `quantize`."""
    from linexport.contract.manifest import QUANT_FORMATS, QUANT_SCHEMES

    for option in reversed([
        click.option("--quantize", "scheme", type=click.Choice(sorted(QUANT_SCHEMES)), required=required,
                     default=None, help="Weight-only quantization of the projections (state stays fp32)."),
        click.option("--quant-format", type=click.Choice(QUANT_FORMATS, case_sensitive=False),
                     default=QUANT_FORMATS[0], show_default=True,
                     help="MatMulNBits for ONNX Runtime; QDQ (DequantizeLinear, opset 21) for TensorRT."),
        click.option("--block-size", type=int, default=None,
                     help="Weights per scale along K. Default: 32 (MatMulNBits), 128 (int4 QDQ); int8 QDQ "
                          "is per output channel."),
        click.option("--quantize-embeddings", is_flag=True,
                     help="Quantize the LM head too (and, in int4 MatMulNBits, the token embedding)."),
        click.option("--accuracy-level", type=click.IntRange(0, 4), default=None,
                     help="MatMulNBits' compute type: 0 in the activations' precision (default for int4), "
                          "4 int8 (default for int8; faster, activations rounded per row)."),
    ]):
        fn = option(fn)
    return fn


def quant_options_from(scheme, quant_format, block_size, quantize_embeddings, accuracy_level):
    """The QuantOptions the --quantize group names (None without --quantize)."""
    if scheme is None:
        given = [flag for flag, value in (("--block-size", block_size is not None),
                                          ("--quantize-embeddings", quantize_embeddings),
                                          ("--accuracy-level", accuracy_level is not None)) if value]
        if given:
            raise LinexportError(f"{', '.join(given)} set without --quantize: add --quantize int8 or int4")
        return None
    from linexport.export.quantize import QuantOptions

    return QuantOptions(scheme, quant_format, block_size, quantize_embeddings, accuracy_level)


def backend_options(fn):
    """--backend and --device, shared by the commands that run an export."""
    fn = click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                      help="Default: cuda for --backend trt, else cpu.")(fn)
    return click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
                        help="ONNX Runtime, or the TensorRT engines `linexport trt` built.")(fn)


def resolve_device(backend: str, device: str | None) -> str:
    return device or ("cuda" if backend == "trt" else "cpu")


def read_prompt_file(path: Path) -> str:
    """A prompt file's text: UTF-8, with any other bytes kept as they are (the byte tokenizer
    gives them back exactly)."""
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise LinexportError(f"cannot read the prompt file {path}: {e.strerror or e}") from None


def peak_memory_line(model) -> str:
    """'peak resident memory X MiB (state Y KiB per sequence)' for the end of a long run: host
    memory only (on CUDA or TensorRT, device memory is not in it)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    state = sum(v.nbytes for v in model.backend.get_state(0).values())
    where = "" if getattr(model.backend, "device", "cpu") == "cpu" else " (host; device memory not counted)"
    return f"peak resident memory {peak / 2**20:.0f} MiB{where}; state {state / 2**10:.0f} KiB per sequence"
