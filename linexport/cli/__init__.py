"""The `linexport` command: one small module per subcommand, registered here."""

from __future__ import annotations

import sys

import click

from linexport import __version__
from linexport.errors import LinexportError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LinexportError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="linexport")
def main():
    """Deploy linear-time transformers: ONNX prefill/decode graphs, TensorRT engines, runtime."""


def _register():
    from linexport.cli import (bench, chat, compare, convert, demo, genai, generate, onnx, quantize, sample, train,
                               trt, verify)

    for module in (demo, onnx, quantize, genai, verify, trt, compare, generate, chat, bench, sample, train, convert):
        main.add_command(module.command)


_register()
