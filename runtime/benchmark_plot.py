"""A PNG of a `linexport bench` result for people: decode ms/token vs context, prefill tokens/s
and peak memory vs sequence length, one line per export. matplotlib is imported here only, and
this module only when a plot is asked for (linexport.runtime must stay numpy-only)."""

from __future__ import annotations

from pathlib import Path

from linexport.errors import LinexportError


def require_matplotlib():
    """The pyplot module, or a LinexportError saying what to install."""
    try:
        import matplotlib
    except ImportError:
        raise LinexportError("--plot needs matplotlib, which is not installed: pip install matplotlib "
                             "(or pip install 'linexport[plot]')") from None
    matplotlib.use("Agg")  # files only: never open a window or need a display
    import matplotlib.pyplot as plt

    return plt


def plot_result(result: dict, path) -> Path:
    """Writes the figure for ``result`` (run_bench's dict, or its JSON read back) to ``path``."""
    plt = require_matplotlib()
    s = result["settings"]
    fig, (dec, tps, mem) = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    for e in result["exports"]:
        label = f"{e['arch']} ({e['name']})"
        _line(dec, e["decode"], "context", lambda r: r["ms_per_token"], label)
        _line(tps, e["prefill"], "seq", lambda r: r["tokens_per_s"], label)
        _line(mem, [r for r in e["prefill"] if r.get("peak_bytes") is not None], "seq",
              lambda r: r["peak_bytes"] / 2**20, label)
    dec.set(title=f"decode latency (batch {s['batch']}, median of {s['steps']} steps)",
            xlabel="context (tokens already in the state)", ylabel="ms / token")
    tps.set(title=f"prefill throughput (batch {s['batch']})", xlabel="sequence length", ylabel="tokens / s")
    mem.set(title="prefill peak host memory (log-log: slope 1 = linear)", xlabel="sequence length",
            ylabel="MiB over the loaded session")
    for ax, sizes in ((dec, s["contexts"]), (tps, s["prefill_seqs"]), (mem, s["prefill_seqs"])):
        ax.set_xscale("log", base=2)
        # Ticks at the measured sizes, written out: "4096" reads faster than "2^12".
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    # Latency and throughput from zero, so a small wobble does not look like a trend.
    dec.set_ylim(bottom=0)
    tps.set_ylim(bottom=0)
    mem.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    # Labels at 1-2-5 steps written plainly ("50", not "5 x 10^1"); a label on every minor tick crowds.
    mem.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    mem.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    mem.yaxis.set_minor_formatter(NullFormatter())
    cpu = result["machine"].get("cpu") or result["machine"].get("machine")
    fig.suptitle(f"linexport bench: {s['backend']} on {s['device']}, {cpu}, "
                 f"{result['machine'].get('cpus_usable', result['machine']['cpu_count'])} CPUs", fontsize=11)
    path = Path(path)
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise LinexportError(f"--plot: cannot write {path}: {e.strerror}; expected a writable .png "
                             "path") from None
    finally:
        plt.close(fig)
    return path


def _line(ax, rows: list, xkey: str, y, label: str):
    ok = [r for r in rows if r["status"] == "ok"]
    skipped = [r[xkey] for r in rows if r["status"] != "ok"]
    if skipped:
        label += f"; skipped {', '.join(map(str, skipped))}"
    # An export with nothing measured still gets its legend entry, so the reader sees it was run.
    ax.plot([r[xkey] for r in ok], [y(r) for r in ok], marker="o", label=label)
