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
