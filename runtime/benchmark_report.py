"""The terminal table for a `linexport bench` result: one row per export x measurement, with
ratios to the export's first measured context / sequence length so scaling reads directly.

Decode: ``x first`` is latency / latency at the first context (1.00 everywhere: cost does not
grow with context). Prefill: ``x tok/s`` is throughput / throughput at the first length (1.00:
time linear in length), ``x mem`` is peak memory / that at the first length, beside ``x seq``
(memory linear in length grows as fast as the length itself).
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
              f"{'export':<{width}}  {'arch':<7} {'seq':>8} {'tokens/s':>10} {'x tok/s':>8} "
              f"{'peak MiB':>9} {'x mem':>7} {'x seq':>7}"]
    for e in exports:
        ok = [r for r in e["prefill"] if r["status"] == "ok"]
        for row in e["prefill"]:
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
            lines.append(line + f" {row['seq'] / base['seq']:7.1f}")
    return "\n".join(lines)


def _first_ok(rows: list, key: str):
    return next((r[key] for r in rows if r["status"] == "ok"), None)
