"""`linexport bench`: decode latency vs context, prefill speed / memory vs length, chunked ingestion
of long prompts and appending to a live sequence, side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from linexport.cli.common import backend_options, resolve_device

_SIZES = "64,256,1024,4096,16384"
_INGEST_SEQS = "8192,32768,131072,262144"


@click.command("bench")
@click.argument("outs", nargs=-1, required=True, type=click.Path(path_type=Path))
@backend_options
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rows per decode step and per prefill call.")
@click.option("--contexts", default=_SIZES, show_default=True,
              help="Decode: tokens prefilled into the state before the timed steps.")
@click.option("--prefill-seqs", default=None, help="Prefill sequence lengths. Default: the --contexts.")
@click.option("--steps", type=click.IntRange(min=1), default=32, show_default=True,
              help="Timed decode steps per context (the median is reported).")
@click.option("--warmup", type=click.IntRange(min=0), default=4, show_default=True,
              help="Untimed decode steps before them.")
@click.option("--repeats", type=click.IntRange(min=0), default=3, show_default=True,
              help="Timed prefill runs per length, after one cold run.")
@click.option("--ingest-seqs", default=_INGEST_SEQS, show_default=True,
              help="Ingest: prompt lengths, one prompt each fed in --prefill-chunk pieces; '' for none.")
@click.option("--prefill-chunk", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Tokens per continued prefill call (ingest, append).")
@click.option("--append", "append", default="4096:1024", show_default=True,
              help="CONTEXT:TOKENS: append TOKENS to a live CONTEXT-token sequence as one continued prefill "
                   "and as TOKENS decode steps; '' for none.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600, show_default=True,
              help="Seconds allowed per prefill or ingest measurement (each runs in its own process).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write every raw number, the settings and machine info here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a PNG (needs matplotlib).")
def command(outs, backend, device, batch, contexts, prefill_seqs, steps, warmup, repeats, ingest_seqs,
            prefill_chunk, append, timeout, json_path, plot_path):
    """Benchmark the exports in OUTS (one or more directories): per-token decode latency against
    context length, prefill tokens/s and peak memory against sequence length, the same for long
    prompts ingested chunk by chunk, and appending to a live sequence (continued prefill against
    decode steps)."""
    from linexport.runtime.benchmark import BenchSettings, parse_append, parse_sizes, run_bench
    from linexport.runtime.benchmark_report import format_report

    if plot_path is not None:  # fail before the measurements, not after them
        from linexport.runtime.benchmark_plot import require_matplotlib

        require_matplotlib()
    context_sizes = parse_sizes(contexts, "--contexts")
    seqs = parse_sizes(prefill_seqs, "--prefill-seqs") if prefill_seqs else context_sizes
    ingest = parse_sizes(ingest_seqs, "--ingest-seqs") if ingest_seqs.strip() else ()
    append_point = parse_append(append)
    settings = BenchSettings(backend=backend, device=resolve_device(backend, device), batch=batch, contexts=context_sizes,
                             prefill_seqs=seqs, steps=steps, warmup=warmup, repeats=repeats,
                             timeout_s=timeout, ingest_seqs=ingest, prefill_chunk=prefill_chunk,
                             append=append_point)
    total = len(outs) * (len(context_sizes) + len(seqs) + len(ingest) + (append_point is not None))
    with click.progressbar(length=total, label="bench", file=sys.stderr, show_pos=True,
                           item_show_func=lambda label: label) as bar:
        result = run_bench(outs, settings, progress=lambda label: bar.update(1, label))
    click.echo(format_report(result))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        click.echo(f"wrote {json_path}", err=True)
    if plot_path is not None:
        from linexport.runtime.benchmark_plot import plot_result

        click.echo(f"wrote {plot_result(result, plot_path)}", err=True)
