"""`linexport convert`: import a model from another package into a linexport checkpoint."""

from pathlib import Path

import click


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--from", "source", type=click.Choice(["flash-pytorch"]), required=True,
              help="The package SRC comes from.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The linexport checkpoint to write (.pt or .safetensors).")
@click.option("--group-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="FLASHTransformer's group_size (not recorded in its weights).")
@click.option("--shift-tokens/--no-shift-tokens", default=True, show_default=True,
              help="FLASHTransformer's shift_tokens.")
@click.option("--laplace-attn", is_flag=True, help="The model used laplace_attn_fn=True.")
@click.option("--causal/--non-causal", default=True, show_default=True,
              help="FLASHTransformer's causal flag; only causal models can decode, non-causal ones are refused.")
def command(src, source, output, group_size, shift_tokens, laplace_attn, causal):
    """Convert SRC (a causal FLASHTransformer's state_dict, saved with torch.save) to OUTPUT.

    Dims, depth, vocab, query/key dim, expansion, norm type and rotary dims come from the
    weights; give the constructor options the weights do not record."""
    from linexport.models.convert_flash_pytorch import convert_file

    model = convert_file(src, output, group_size, shift_tokens, laplace_attn, causal)
    c = model.config
    click.echo(f"wrote {output}: flash, {c.n_layers} layers, d {c.d_model}, qk {c.qk_dim}, "
               f"expansion {c.expansion}, group {c.chunk_size}, {c.norm}")
