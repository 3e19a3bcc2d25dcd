"""The terminal table for a `linexport bench` result: one row per export x measurement, with
ratios to the export's first measured context / sequence length so scaling reads directly.

Decode: ``x first`` is latency / latency at the first context (1.00 everywhere: cost does not
grow with context). Prefill: ``x tok/s`` is throughput / throughput at the first length (1.00:
time linear in length), ``x mem`` is peak memory / that at the first length, beside ``x seq``
(memory linear in length grows as fast as the length itself). Ingest: the same ratios for one
long prompt ingested chunk by chunk (flat memory: ``x mem`` stays near 1.00 however long the
prompt), with ``chunked`` no for a KV-cache baseline, which takes the prompt in one call. Append:
seconds to feed tokens to a live sequence as one continued prefill and as decode steps, and their
ratio (``speedup``), measured in the same process.
"""

from __future__ import annotations


def format_report(result: dict) -> str:
    s = result["settings"]
    exports = result["exports"]
    width = max([len(e["name"]) for e in exports] + [6])
    lines = [f"decode: {s['backend']} on {s['device']}, batch {s['batch']}, median of {s['steps']} steps "
             f"after {s['warmup']} warm-up",
             f"{'export':<{width}}  {'arch':<7} {'context':>8} {'ms/token':>9} {'x first':>8}"]
    for e in exports:
        base = _first_ok(e["decode"], "ms_per_token")
        for row in e["decode"]:
            head = f"{e['name']:<{width}}  {e['arch']:<7} {row['context']:>8}"
            if row["status"] != "ok":
                lines.append(f"{head}  skipped: {row['reason']}")
                continue
            lines.append(f"{head} {row['ms_per_token']:9.3f} {row['ms_per_token'] / base:8.2f}")
    lines += ["", f"prefill: batch {s['batch']}, median of {s['repeats']} runs after a cold one; peak = "
                  "host memory over the loaded session, fresh process per point",
              f"{'export':<{width}}  {'arch':<7} {'seq':>8} {_RATE_HEAD} {'x seq':>7}"]
    for e in exports:
        lines += _rate_rows(e, "prefill", width, lambda row, base: f" {row['seq'] / base['seq']:7.1f}")
    if any(e.get("ingest") for e in exports):  # results before format 2 have none
        lines += ["", f"ingest: one prompt, {s['prefill_chunk']} tokens per continued prefill call (a KV "
                      f"cache: one call), median of {s['repeats']} runs after a cold one; peak as for prefill",
                  f"{'export':<{width}}  {'arch':<7} {'seq':>8} {_RATE_HEAD} {'chunked':>8}"]
        for e in exports:
            lines += _rate_rows(e, "ingest", width, lambda row, base: f" {'yes' if row['chunked'] else 'no':>8}")
    if any(e.get("append") for e in exports):
        lines += ["", "append: tokens fed to a live sequence as one continued prefill vs one decode step per "
                      f"token, median of {max(1, s['repeats'])} runs after an untimed one, same process",
                  f"{'export':<{width}}  {'arch':<7} {'context':>8} {'tokens':>7} {'continued s':>12} "
                  f"{'token-by-token s':>17} {'speedup':>8}"]
        for e in exports:
            for row in e.get("append", []):
                head = f"{e['name']:<{width}}  {e['arch']:<7} {row['context']:>8} {row['tokens']:>7}"
                if row["status"] != "ok":
                    lines.append(f"{head}  skipped: {row['reason']}")
                elif row["continued_seconds"] is None:
                    lines.append(f"{head} {'n/a':>12} {row['token_by_token_seconds']:17.3f} {'n/a':>8}  "
                                 f"continued: {row['continued_reason']}")
                else:
                    lines.append(f"{head} {row['continued_seconds']:12.3f} "
                                 f"{row['token_by_token_seconds']:17.3f} {row['speedup']:7.1f}x")
    return "\n".join(lines)


_RATE_HEAD = f"{'tokens/s':>10} {'x tok/s':>8} {'peak MiB':>9} {'x mem':>7}"


def _rate_rows(e: dict, key: str, width: int, tail) -> list[str]:
    """Rows of tokens/s and peak memory, with ratios to the first measured length; ``tail(row,
    base)`` adds the last column."""
    lines, ok = [], [r for r in e[key] if r["status"] == "ok"]
    for row in e[key]:
        head = f"{e['name']:<{width}}  {e['arch']:<7} {row['seq']:>8}"
        if row["status"] != "ok":
            lines.append(f"{head}  skipped: {row['reason']}")
            continue
        base = ok[0]
        line = f"{head} {row['tokens_per_s']:10.0f} {row['tokens_per_s'] / base['tokens_per_s']:8.2f}"
        if row["peak_bytes"] is None:
            line += f" {'n/a':>9} {'':>7}"
        else:
            ratio = row["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] else float("nan")
            line += f" {row['peak_bytes'] / 2**20:9.1f} {ratio:7.2f}"
        lines.append(line + tail(row, base))
    return lines


def _first_ok(rows: list, key: str):
    return next((r[key] for r in rows if r["status"] == "ok"), None)
