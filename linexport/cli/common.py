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


def backend_options(fn):
    """--backend and --device, shared by the commands that run an export."""
    fn = click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                      help="Default: cuda for --backend trt, else cpu.")(fn)
    return click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
                        help="ONNX Runtime, or the TensorRT engines `linexport trt` built.")(fn)


def resolve_device(backend: str, device: str | None) -> str:
    return device or ("cuda" if backend == "trt" else "cpu")
