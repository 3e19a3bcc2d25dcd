"""`linexport convert`: import a model from another package into a linexport checkpoint."""

from pathlib import Path

import click
from click.core import ParameterSource

# FLASHTransformer's constructor options (its weights do not record them); they mean nothing to fla.
_FLASH_OPTIONS = ("group_size", "shift_tokens", "laplace_attn", "causal")


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--from", "source", type=click.Choice(["flash-pytorch", "fla"]), required=True,
              help="The package SRC comes from: flash-pytorch (a FLASHTransformer state_dict file) or fla "
                   "(a flash-linear-attention linear_attn folder written by save_pretrained).")
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
    """Convert SRC to OUTPUT.

    flash-pytorch: SRC is a causal FLASHTransformer's state_dict (saved with torch.save). Dims,
    depth, vocab, query/key dim, expansion, norm type and rotary dims come from the weights;
    give the constructor options the weights do not record.

    fla: SRC is the folder of a flash-linear-attention linear_attn model (config.json +
    *.safetensors, as save_pretrained writes it); everything comes from config.json, and the
    folder's tokenizer.json is copied beside OUTPUT."""
    if source == "fla":
        ctx = click.get_current_context()
        given = [f"--{n.replace('_', '-')}" for n in _FLASH_OPTIONS
                 if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} are FLASHTransformer options (--from flash-pytorch); an "
                                   "fla folder's config.json says everything: drop them")
        from linexport.models.convert_fla import convert_folder

        model = convert_folder(src, output)
        c = model.config
        click.echo(f"wrote {output}: linear (from fla linear_attn), {c.n_layers} layers, d {c.d_model}, heads "
                   f"{c.n_heads} (kv {c.kv_heads()}), head dims {c.head_dim}/{c.value_head_dim()}, "
                   f"feature map {c.feature_map}, {'normalised' if c.normalize else 'unnormalised'}")
        return
    from linexport.models.convert_flash_pytorch import convert_file

    model = convert_file(src, output, group_size, shift_tokens, laplace_attn, causal)
    c = model.config
    click.echo(f"wrote {output}: flash, {c.n_layers} layers, d {c.d_model}, qk {c.qk_dim}, "
               f"expansion {c.expansion}, group {c.chunk_size}, {c.norm}")
