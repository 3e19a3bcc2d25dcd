"""`linexport genai`: write a folder onnxruntime-genai runs (og.Model / og.Generator)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from linexport.cli.common import demo_checkpoint, model_option


@click.command("genai")
@model_option
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("linexport-genai"),
              show_default=True, help="Output folder (replaced atomically if it holds an earlier one).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Activation precision; recurrent states stay fp32.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 20).")
@click.option("--context-length", type=click.IntRange(min=1), default=4096, show_default=True,
              help="genai's context_length and default max_length (the state itself has no limit).")
@click.option("--pad-token-id", type=int, default=None,
              help="genai's pad_token_id (default: the tokenizer's pad, eos or 0; byte 0 for the bytes tokenizer).")
@click.option("--eos-token-id", type=int, default=None,
              help="genai's eos_token_id (default: the tokenizer's eos; byte 0 for the bytes tokenizer).")
@click.option("--bos-token-id", type=int, default=None, help="genai's bos_token_id (default: the tokenizer's, or 0).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime intra-op threads in genai_config.json (default: ONNX Runtime's).")
def command(model, out, dtype, opset, context_length, pad_token_id, eos_token_id, bos_token_id, threads):
    """Export a checkpoint (default: the bundled demo model) as an onnxruntime-genai folder:
    one decoder graph that takes the recurrent state for any number of new tokens,
    genai_config.json and the tokenizer genai loads."""
    from linexport.export.genai import export_genai

    start = time.perf_counter()

    def log(message):
        click.echo(f"[{time.perf_counter() - start:6.1f}s] {message}", err=True)

    config = export_genai(model or demo_checkpoint(), out, dtype=dtype, opset=opset, context_length=context_length,
                          pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                          threads=threads, log=log)
    m = config["model"]
    click.echo(f"wrote {out}: onnxruntime-genai folder ({m['decoder']['num_hidden_layers']} layers, vocab "
               f"{m['vocab_size']}, pad {m['pad_token_id']}, eos {m['eos_token_id']}); run it with "
               f"onnxruntime_genai.Model('{out}')")
