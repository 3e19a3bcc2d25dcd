"""`linexport sample`: generate text from a checkpoint in PyTorch (recurrent steps)."""

from pathlib import Path

import click

from linexport.cli.common import demo_checkpoint, model_option


@click.command("sample")
@model_option
@click.option("--prompt", default="def ", show_default=True, help="Text to continue.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.8, show_default=True,
              help="0 means greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="0 disables top-k.")
@click.option("--seed", type=int, default=0, show_default=True)
def command(model: Path | None, prompt, max_new_tokens, temperature, top_k, seed):
    """Continue PROMPT with a checkpoint (default: the bundled demo model), streaming bytes."""
    import torch

    from linexport.models.checkpoint import load_checkpoint
    from linexport.models.sampling import generate_bytes

    net, meta = load_checkpoint(model or demo_checkpoint())
    if meta.get("tokenizer", {}).get("type") != "bytes":
        raise click.UsageError("`sample` knows only byte-level checkpoints; use `linexport generate`")
    click.echo(prompt, nl=False)
    for text in generate_bytes(net, prompt, max_new_tokens, temperature, top_k,
                               torch.Generator().manual_seed(seed)):
        click.echo(text, nl=False)
    click.echo()

