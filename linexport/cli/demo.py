"""`linexport demo`: the whole pipeline on a bundled demo model — export, verify, generate."""

from __future__ import annotations

import time
from pathlib import Path

import click

from linexport.cli.common import demo_checkpoint


@click.command("demo")
@click.option("--arch", type=click.Choice(["linear", "flash"]), default="linear", show_default=True,
              help="Which bundled demo model.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("linexport-out"),
              show_default=True, help="Where the export goes.")
@click.option("--prompt", default="def ", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stop-token", "stop_tokens", type=click.IntRange(min=0), multiple=True,
              help="Token id that ends the generation (repeatable; bytes for the demo models: 10 = newline).")
def command(arch, out, prompt, max_new_tokens, temperature, seed, stop_tokens):
    """Export the bundled model to ONNX, verify it against PyTorch, and generate from it on
    ONNX Runtime with the stateful runtime."""
    from linexport.export.exporter import export_checkpoint
    from linexport.export.verify import verify_export
    from linexport.runtime import Generator, Model, SamplingParams

    start = time.perf_counter()

    def stage(n, text):
        click.secho(f"[{n}/3] {text}", fg="cyan", bold=True, err=True)

    def log(message):
        click.echo(f"      [{time.perf_counter() - start:6.1f}s] {message}", err=True)

    stage(1, f"export the bundled {arch} demo model to {out}")
    export_checkpoint(demo_checkpoint(arch), out, log=log)

    stage(2, "verify the graphs against PyTorch (prefill, decode steps, prefill+steps == prefill)")
    checks = verify_export(out, log=log)
    failed = [c for c in checks if not c.ok]
    worst = max(checks, key=lambda c: c.rel_err / c.tol)
    log(f"{len(checks) - len(failed)}/{len(checks)} checks passed; closest to its tolerance: "
        f"{worst.what} rel {worst.rel_err:.2e} (tol {worst.tol:.2e})")
    if failed:
        raise click.ClickException(f"{len(failed)} verification checks failed; run `linexport verify {out}`")

    stage(3, "generate on ONNX Runtime (prefill once, then one decode step per byte)")
    model = Model(out)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=40, seed=seed,
                            stop_tokens=stop_tokens)
    gen_start = time.perf_counter()
    click.echo(prompt, nl=False)
    generator = Generator(model)
    seq = generator.add(prompt, params)
    decode = model.tokenizer.stream_decoder()
    while not generator.is_done():
        for _, token in generator.step():
            click.echo(decode(token), nl=False)
    click.echo()
    elapsed = time.perf_counter() - gen_start
    count = len(seq.generated)
    log(f"generated {count} tokens in {elapsed:.2f}s ({count / elapsed:.0f} tokens/s, stopped by "
        f"{seq.finish_reason}; state {_state_kib(model):.0f} KiB whatever the context length)")


def _state_kib(model) -> float:
    import numpy as np

    total = 0
    for s in model.manifest.states:
        total += int(np.prod(s.shape[1:])) * np.dtype(s.dtype).itemsize
    return total / 1024
