"""`linexport verify`: compare an export's graphs in ONNX Runtime with its PyTorch checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("verify")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=0), default=8, show_default=True,
              help="Decode steps after prefill to compare.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="The source checkpoint, if it moved since export (default: the path in the manifest).")
def command(out: Path, steps: int, model: Path | None):
    """Check OUT's prefill/decode graphs against the checkpoint they were exported from."""
    from linexport.export.verify import verify_export

    checks = verify_export(out, steps=steps, checkpoint=model, log=lambda m: click.echo(m, err=True))
    width = max(len(c.what) for c in checks)
    click.echo(f"{'check'.ljust(width)}  {'max abs':>10}  {'max rel':>10}  {'rel tol':>10}")
    for c in checks:
        mark = "ok" if c.ok else click.style("FAIL", fg="red")
        click.echo(f"{c.what.ljust(width)}  {c.abs_err:10.3e}  {c.rel_err:10.3e}  {c.tol:10.3e}  {mark}")
    failed = [c for c in checks if not c.ok]
    if failed:
        click.secho(f"{len(failed)} of {len(checks)} checks failed", fg="red", err=True)
        sys.exit(1)
    click.echo(f"all {len(checks)} checks passed")
