"""`linexport verify`: compare an export's graphs in ONNX Runtime with its PyTorch checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from linexport.cli.common import print_checks


@click.command("verify")
@click.argument("out", type=click.Path(path_type=Path), default=Path("linexport-out"))
@click.option("--steps", type=click.IntRange(min=0), default=8, show_default=True,
              help="Decode steps after prefill to compare.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="The source checkpoint, if it moved since export (default: the path in the manifest).")
def command(out: Path, steps: int, model: Path | None):
    """Check OUT's prefill/decode graphs (default: linexport-out, where `linexport onnx` writes)
    against the checkpoint they were exported from."""
    from linexport.export.verify import verify_export

    checks = verify_export(out, steps=steps, checkpoint=model, log=lambda m: click.echo(m, err=True))
    if not print_checks(checks):
        sys.exit(1)
