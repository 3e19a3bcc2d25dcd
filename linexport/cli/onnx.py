"""`linexport onnx`: export a checkpoint as prefill + decode ONNX graphs with a manifest."""

from __future__ import annotations

import time
from pathlib import Path

import click

from linexport.cli.common import demo_checkpoint, model_option, quant_options_from, quantize_options
from linexport.contract.op_spec import DEFAULT_LOWERING, LOWERINGS


@click.command("onnx")
@model_option
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("linexport-out"),
              show_default=True, help="Output directory (replaced atomically if it holds an export).")
@click.option("--lowering", type=click.Choice(LOWERINGS), default=DEFAULT_LOWERING, show_default=True,
              help="How the attention op appears in the graphs: a local function with a standard-op "
                   "body, the bare node for the TensorRT plugin, or ONNX opset-27 LinearAttention.")
@click.option("--opset", type=int, default=None,
              help="ONNX opset. Default: 20, or 27 with --lowering standard.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Activation precision; recurrent states stay fp32.")
@click.option("--full-logits", is_flag=True, help="prefill returns logits for every position [B, T, V].")
@quantize_options
def command(model: Path | None, out: Path, lowering: str, opset: int | None, dtype: str, full_logits: bool,
            **quant):
    """Export a checkpoint (default: the bundled demo model) to OUT/{prefill,decode}.onnx."""
    from linexport.export.exporter import export_checkpoint

    start = time.perf_counter()

    def log(message):
        click.echo(f"[{time.perf_counter() - start:6.1f}s] {message}", err=True)

    manifest = export_checkpoint(model or demo_checkpoint(), out, lowering=lowering, opset=opset,
                                 dtype=dtype, full_logits=full_logits, log=log, quantize=quant_options_from(**quant))
    ops = ", ".join(f"{op}: {how}" for op, how in manifest["lowering"]["ops"].items())
    click.echo(f"exported {manifest['arch']} ({dtype}{quant_summary(manifest)}, opset {manifest['opset']}, "
               f"{ops}) to {out}")


def quant_summary(manifest: dict) -> str:
    q = manifest.get("quantization")
    if not q:
        return ""
    block = f"block {q['block_size']}" if q["block_size"] else "per channel"
    return f", {q['scheme']} {q['format']} weights ({block})"
