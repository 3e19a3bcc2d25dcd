"""A PNG of a `linexport bench` result for people: decode ms/token vs context, prefill tokens/s
and peak memory vs sequence length, one line per export; below them (results that have them),
ingest tokens/s and peak memory vs prompt length and the append timings, one bar pair per
export. matplotlib is imported here only, and this module only when a plot is asked for
(linexport.runtime must stay numpy-only)."""

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
    exports = result["exports"]
    more = any(e.get("ingest") or e.get("append") for e in exports)  # results before format 2: neither
    fig, axes = plt.subplots(2 if more else 1, 3, figsize=(16, 9.6 if more else 4.8), constrained_layout=True,
                             squeeze=False)
    dec, tps, mem = axes[0]
    for e in exports:
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
    curves = [(dec, s["contexts"]), (tps, s["prefill_seqs"]), (mem, s["prefill_seqs"])]
    if more:
        itps, imem, app = axes[1]
        for e in exports:
            label = f"{e['arch']} ({e['name']})"
            rows = e.get("ingest", [])
            _line(itps, rows, "seq", lambda r: r["tokens_per_s"], label)
            _line(imem, [r for r in rows if r.get("peak_bytes") is not None], "seq",
                  lambda r: r["peak_bytes"] / 2**20, label + ("" if _chunked(rows) else ", one call (KV cache)"))
        itps.set(title=f"ingest throughput (one prompt, {s['prefill_chunk']} tokens per call)",
                 xlabel="prompt length", ylabel="tokens / s")
        imem.set(title="ingest peak host memory (flat: independent of length)",
                 xlabel="prompt length", ylabel="MiB over the loaded session")
        _append_bars(app, exports)
        curves += [(itps, s.get("ingest_seqs") or [1]), (imem, s.get("ingest_seqs") or [1])]
        itps.set_ylim(bottom=0)
    for ax, sizes in curves:
        ax.set_xscale("log", base=2)
        # Ticks at the measured sizes, written out: "4096" reads faster than "2^12".
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    # Latency and throughput from zero, so a small wobble does not look like a trend.
    dec.set_ylim(bottom=0)
    tps.set_ylim(bottom=0)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in [mem] + ([imem] if more else []):
        ax.set_yscale("log")
        # Labels at 1-2-5 steps written plainly ("50", not "5 x 10^1"); a label on every minor tick crowds.
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
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


def _chunked(rows: list) -> bool:
    return all(r.get("chunked", True) for r in rows if r["status"] == "ok")


def _append_bars(ax, exports: list):
    """Seconds to append, continued prefill beside token-by-token, one pair per export."""
    rows = [(e, r) for e in exports for r in e.get("append", [])]
    if not rows:
        ax.set_axis_off()
        ax.set_title("append: not measured")
        return
    names = [f"{e['arch']} ({e['name']})" for e, _ in rows]
    for offset, key, label in ((-0.2, "continued_seconds", "one continued prefill"),
                               (0.2, "token_by_token_seconds", "a decode step per token")):
        values = [r.get(key) if r["status"] == "ok" else None for _, r in rows]
        ax.bar([i + offset for i in range(len(rows))], [v or 0 for v in values], width=0.4, label=label)
    for i, (_, r) in enumerate(rows):
        if r["status"] != "ok":
            ax.annotate("skipped", (i, 0), ha="center", va="bottom", fontsize=8)
        elif r["speedup"] is None:
            ax.annotate("n/a: KV cache", (i - 0.2, 0), ha="center", va="bottom", fontsize=8, rotation=90)
        else:
            ax.annotate(f"{r['speedup']:.1f}x", (i, r["token_by_token_seconds"]), ha="center", va="bottom", fontsize=8)
    first = rows[0][1]
    ax.set_xticks(range(len(rows)), names, fontsize=8)
    ax.set(title=f"append {first['tokens']} tokens at context {first['context']} (speedup above)",
           ylabel="seconds")
    ax.legend(fontsize=8)


def _line(ax, rows: list, xkey: str, y, label: str):
    ok = [r for r in rows if r["status"] == "ok"]
    skipped = [r[xkey] for r in rows if r["status"] != "ok"]
    if skipped:
        label += f"; skipped {', '.join(map(str, skipped))}"
    # An export with nothing measured still gets its legend entry, so the reader sees it was run.
    ax.plot([r[xkey] for r in ok], [y(r) for r in ok], marker="o", label=label)
