"""`linexport trt`: build TensorRT engines from an export directory and record them in it."""

from __future__ import annotations

import time
from pathlib import Path

import click

from linexport.cli.common import auto_target, target_option


@click.command("trt")
@click.argument("out", type=click.Path(path_type=Path), default=Path("linexport-out"))
@click.option("--fp16", is_flag=True, help="Build from fp16 graphs (re-exports OUT if it is fp32).")
@click.option("--fp32", is_flag=True, help="Build from fp32 graphs (re-exports OUT if it is fp16).")
@target_option
@click.option("--plugin-lib", type=click.Path(path_type=Path), default=None,
              help="Our TensorRT plugin library (default: found in build/ or $LINEXPORT_PLUGIN_LIB).")
@click.option("--min-batch", type=int, default=1, show_default=True)
@click.option("--opt-batch", type=int, default=1, show_default=True)
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Most sequences the runtime can prefill or decode at once.")
@click.option("--opt-seq", type=int, default=None, help="Prompt length to tune for. [default: min(256, max-seq)]")
@click.option("--max-seq", type=int, default=4096, show_default=True, help="Longest prompt prefill accepts.")
@click.option("--workspace", "workspace_mb", type=int, default=None, help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Read and update this timing cache file (TensorRT target) to speed up rebuilds.")
@click.option("--tf32", is_flag=True, help="Allow TF32 for fp32 matmuls (faster, ~1e-3 relative error).")
def command(out, fp16, fp32, target, plugin_lib, min_batch, opt_batch, max_batch, opt_seq, max_seq,
            workspace_mb, timing_cache, tf32):
    """Build TensorRT engines for the export in OUT (default: linexport-out, where
    `linexport onnx` writes) and record them in its manifest."""
    from linexport.export.engines import EngineOptions, build_engines

    start = time.perf_counter()

    def log(message):
        click.echo(f"[{time.perf_counter() - start:6.1f}s] {message}", err=True)

    if fp16 and fp32:
        raise click.UsageError("expected at most one of --fp16 and --fp32, got both")
    precision = "fp16" if fp16 else "fp32" if fp32 else None
    target = auto_target(target)
    options = EngineOptions(target=target, precision=precision, min_batch=min_batch, opt_batch=opt_batch,
                            max_batch=max_batch, opt_seq=opt_seq, max_seq=max_seq, workspace_mb=workspace_mb,
                            timing_cache=timing_cache, plugin_lib=plugin_lib, tf32=tf32)
    report = build_engines(out, options, log=log)
    engines = report.manifest["engines"]
    if report.reexported:
        click.echo(f"note: {report.reexported}")
    files = ", ".join(e["file"] for e in engines["graphs"].values())
    click.echo(f"built {files} in {out} ({engines['target']} {engines['tensorrt_version']}, "
               f"{engines['precision']}, attention: {engines['attention']}, batch <= "
               f"{engines['profile']['batch'][2]}, prompt <= {engines['profile']['seq'][2]} tokens)")
