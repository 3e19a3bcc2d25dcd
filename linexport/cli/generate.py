"""`linexport generate`: stream text from an export directory on ONNX Runtime or TensorRT."""

from pathlib import Path

import click

from linexport.cli.common import backend_options, resolve_device


@click.command("generate")
@click.argument("out", type=click.Path(path_type=Path), default=Path("linexport-out"))
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.8, show_default=True,
              help="0 means greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="0 disables top-k.")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0)
@click.option("--repetition-penalty", type=click.FloatRange(min=0.0, min_open=True), default=1.0)
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@backend_options
def command(out, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
            backend, device):
    """Continue PROMPT with the model exported in OUT, streaming text as it is generated."""
    from linexport.runtime import Generator, Model, SamplingParams

    model = Model(out, backend=backend, device=resolve_device(backend, device))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    click.echo(prompt, nl=False)
    for piece in Generator(model).generate(prompt, params):
        click.echo(piece, nl=False)
    click.echo()
