"""`linexport compare`: TensorRT (or another backend) against ONNX Runtime on the same inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from linexport.cli.common import print_checks, resolve_device


@click.command("compare")
@click.argument("out", type=click.Path(path_type=Path), default=Path("linexport-out"))
@click.option("--backend", type=click.Choice(["trt", "ort"]), default="trt", show_default=True,
              help="The backend under test.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Its device. [default: cuda for --backend trt, else cpu]")
@click.option("--reference-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime's device for the reference.")
@click.option("--batch", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seq", type=click.IntRange(min=1), default=37, show_default=True)
@click.option("--steps", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--rtol", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Relative tolerance. [default: 1e-4 for fp32 graphs, 2e-2 for fp16]")
@click.option("--seed", type=int, default=0, show_default=True)
def command(out, backend, device, reference_device, batch, seq, steps, rtol, seed):
    """Run OUT's graphs on ONNX Runtime and on BACKEND (TensorRT engines by default) with the
    same prompts and decode tokens; report each output's error."""
    from linexport.runtime import Model
    from linexport.runtime.compare import compare_backends

    device = resolve_device(backend, device)
    reference = Model(out, backend="ort", device=reference_device, num_slots=batch)
    candidate = Model(out, backend=backend, device=device, num_slots=batch)
    click.echo(f"{out}: {backend} on {device} against ONNX Runtime on {reference_device} "
               f"({reference.manifest.precision}, batch {batch}, seq {seq}, {steps} decode steps)", err=True)
    checks = compare_backends(reference.backend, candidate.backend, reference.manifest.precision,
                              batch=batch, seq=seq, steps=steps, seed=seed, rel_tol=rtol)
    if not print_checks(checks):
        sys.exit(1)
