"""`linexport quantize`: quantize the weights of an existing float export."""

from __future__ import annotations

import time
from pathlib import Path

import click

from linexport.cli.common import quant_options_from, quantize_options
from linexport.cli.onnx import quant_summary
from linexport.errors import LinexportError


@click.command("quantize")
@click.argument("src", type=click.Path(path_type=Path), default=Path("linexport-out"))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Output directory (default: replace SRC atomically).")
@quantize_options
def command(src: Path, out: Path | None, **quant):
    """Quantize the float export SRC (default: linexport-out) without tracing the model again;
    `linexport onnx --quantize` does the same in one step."""
    from linexport.export.exporter import quantize_export

    start = time.perf_counter()

    def log(message):
        click.echo(f"[{time.perf_counter() - start:6.1f}s] {message}", err=True)

    options = quant_options_from(**quant)
    if options is None:
        raise LinexportError("expected --quantize int8 or --quantize int4: the scheme to quantize SRC with")
    manifest = quantize_export(src, out or src, options, log=log)
    click.echo(f"quantized {manifest['arch']} ({manifest['precision']}{quant_summary(manifest)}) into {out or src}")
