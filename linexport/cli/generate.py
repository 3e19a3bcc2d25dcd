"""`linexport generate`: stream text from an export directory on ONNX Runtime or TensorRT.

A prompt of any length (``--prompt-file``) is ingested chunk by chunk (``--prefill-chunk``
tokens per prefill call), so memory stays that of one chunk: the state carries the rest.
"""

import sys
from pathlib import Path

import click

from linexport.cli.common import backend_options, peak_memory_line, read_prompt_file, resolve_device


@click.command("generate")
@click.argument("out", type=click.Path(path_type=Path), default=Path("linexport-out"))
@click.option("--prompt", default=None, help="Text to continue.")
@click.option("--prompt-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Continue the text of this file (any length; read as UTF-8, other bytes kept). "
                   "Shows ingestion progress and the peak memory; the prompt itself is not echoed.")
@click.option("--prefill-chunk", type=click.IntRange(min=1), default=None,
              help="Tokens per prefill call. Default: the backend's (4096 on ONNX Runtime).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.8, show_default=True,
              help="0 means greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="0 disables top-k.")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0)
@click.option("--repetition-penalty", type=click.FloatRange(min=0.0, min_open=True), default=1.0)
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@backend_options
def command(out, prompt, prompt_file, prefill_chunk, max_new_tokens, temperature, top_k, top_p,
            repetition_penalty, seed, backend, device):
    """Continue PROMPT (or the text of --prompt-file) with the model exported in OUT, streaming
    text as it is generated."""
    from linexport.runtime import Generator, Model, SamplingParams

    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("pass exactly one of --prompt TEXT and --prompt-file FILE")
    text = prompt if prompt_file is None else read_prompt_file(prompt_file)
    model = Model(out, backend=backend, device=resolve_device(backend, device), prefill_chunk=prefill_chunk)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    generator = Generator(model)
    if prompt_file is None:
        click.echo(prompt, nl=False)
        for piece in generator.generate(text, params):
            click.echo(piece, nl=False)
        click.echo()
        return

    from tqdm import tqdm

    tokens = model.tokenizer.encode(text)
    with tqdm(total=len(tokens), unit="tok", unit_scale=True, desc=f"ingesting {prompt_file.name}",
              file=sys.stderr, dynamic_ncols=True) as bar:
        stream = generator.generate(tokens, params, progress=bar.update)
        first = next(stream, "")  # the prompt is ingested before the first piece comes
    click.echo(first, nl=False)
    for piece in stream:
        click.echo(piece, nl=False)
    click.echo()
    click.echo(f"ingested {len(tokens)} tokens in chunks of {generator.prefill_chunk}; "
               f"{peak_memory_line(model)}", err=True)
