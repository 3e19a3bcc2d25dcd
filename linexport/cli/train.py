"""`linexport train`: train a tiny byte-level demo model on the Python standard library."""

from pathlib import Path

import click

from linexport.models import ARCH_NAMES


@click.command("train")
@click.option("--arch", type=click.Choice(ARCH_NAMES), default="linear", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint to write (.pt or .safetensors).")
@click.option("--steps", type=click.IntRange(min=1), default=4000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--val-windows", type=click.IntRange(min=1), default=None,
              help="Validate on the first N windows of the held-out split.  [default: all of it]")
def command(arch, output, steps, batch_size, seq_len, lr, seed, threads, val_windows):
    """Train a demo model (the bundled ones were made with the defaults and 3,600 / 3,300 steps
    for linear / flash)."""
    import torch

    from linexport.models.train import train

    if threads:
        torch.set_num_threads(threads)
    train(arch, output, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed,
          val_windows=val_windows, log=click.echo)
