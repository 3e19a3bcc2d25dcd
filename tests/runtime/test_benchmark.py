"""`linexport bench` end to end on tiny exports: the table, the JSON, the PNG, skips and errors,
and the reported numbers against timings taken here independently."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from linexport.cli import main
from linexport.errors import LinexportError
from linexport.export.exporter import export_checkpoint
from linexport.models.checkpoint import save_checkpoint
from linexport.runtime import Model
from linexport.runtime import benchmark
from linexport.runtime.benchmark import BenchSettings, parse_sizes, run_bench

MAX_SEQ_LEN = 32  # the learned-position model's limit: longer contexts must be skipped, not crash
CONTEXTS, STEPS, WARMUP = [4, 16, 40], 8, 2  # 16 + 10 steps fit in 32 positions, 40 does not
SEQS = [16, 48]
BATCH = 2  # rows: the other slot gets a copy of the prefilled state
REPEATS = 5  # a median of a few runs: these 2 cores are shared, single runs jump


@pytest.fixture(scope="module")
def learned_export(tmp_path_factory):
    from linexport.models.linear import LinearConfig, LinearLM

    torch.manual_seed(7)
    model = LinearLM(LinearConfig(vocab_size=256, d_model=40, n_layers=2, n_heads=3, head_dim=15, d_ff=56,
                                  chunk_size=16, pos_emb="learned", max_seq_len=MAX_SEQ_LEN)).eval()
    root = tmp_path_factory.mktemp("bench")
    save_checkpoint(model, root / "learned.pt")
    export_checkpoint(root / "learned.pt", root / "linear-learned")
    return root / "linear-learned"


@pytest.fixture(scope="module")
def bench_run(learned_export, runtime_exports, tmp_path_factory):
    """One CLI run over (learned linear, flash); returns (CliRunner result, JSON dict, PNG path)."""
    out = tmp_path_factory.mktemp("bench-out")
    flash = runtime_exports["flash"][0]
    args = ["bench", str(learned_export), str(flash), "--contexts", ",".join(map(str, CONTEXTS)),
            "--prefill-seqs", ",".join(map(str, SEQS)), "--steps", str(STEPS), "--warmup", str(WARMUP),
            "--batch", str(BATCH), "--repeats", str(REPEATS),
            "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "bench.json").read_text()), out / "bench.png"


def test_json_holds_settings_machine_and_every_raw_number(bench_run):
    _, data, _ = bench_run
    assert data["format"] == "linexport.bench" and data["settings"]["contexts"] == CONTEXTS
    assert data["machine"]["cpu_count"] >= 1 and data["versions"]["onnxruntime"]
    assert "resident" in data["definitions"]["prefill_memory"]
    learned, flash = data["exports"]
    assert (learned["arch"], learned["name"]) == ("linear", "linear-learned")
    assert learned["position_limit"] == MAX_SEQ_LEN and flash["position_limit"] is None
    assert flash["arch"] == "flash" and flash["state_bytes_per_slot"] > 0
    for e in (learned, flash):
        assert [r["context"] for r in e["decode"]] == CONTEXTS
        assert [r["seq"] for r in e["prefill"]] == SEQS
    for row in [r for e in (learned, flash) for r in e["decode"] if r["status"] == "ok"]:
        assert len(row["ms_samples"]) == STEPS and min(row["ms_samples"]) > 0
        assert row["ms_per_token"] == pytest.approx(np.median(row["ms_samples"]))
    for row in [r for e in (learned, flash) for r in e["prefill"] if r["status"] == "ok"]:
        assert len(row["seconds"]) == REPEATS
        assert row["tokens_per_s"] == pytest.approx(BATCH * row["seq"] / np.median(row["seconds"]))
        assert row["peak_bytes"] >= 0 and row["baseline_bytes"] > 0


def test_learned_positions_beyond_max_seq_len_are_skipped_with_the_reason(bench_run):
    _, data, _ = bench_run
    learned, flash = data["exports"]
    assert [r["status"] for r in learned["decode"]] == ["ok", "ok", "skipped"]
    assert [r["status"] for r in learned["prefill"]] == ["ok", "skipped"]
    assert f"max_seq_len={MAX_SEQ_LEN}" in learned["decode"][2]["reason"]
    assert f"max_seq_len={MAX_SEQ_LEN}" in learned["prefill"][1]["reason"]
    assert all(r["status"] == "ok" for r in flash["decode"] + flash["prefill"])


def test_table_has_a_row_per_export_and_measurement_with_ratios(bench_run):
    result, _, _ = bench_run
    rows = [ln for ln in result.stdout.splitlines() if ln.startswith(("linear-learned", "flash"))]
    assert len(rows) == 2 * (len(CONTEXTS) + len(SEQS))
    first_decode = next(ln for ln in rows if " flash " in f" {ln} " and ln.split()[2] == "4")
    assert first_decode.split()[-1] == "1.00"  # the ratio to itself
    assert sum("skipped: positions up to" in ln for ln in rows) == 1


def test_plot_is_a_real_png(bench_run):
    import matplotlib.image

    _, _, png = bench_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (1760, 528)  # figsize 16 x 4.8 inches at 110 dpi


def test_decode_latency_matches_an_independent_timing(bench_run, runtime_exports):
    """The bench's median against decode calls timed here on a fresh session: equal up to machine
    noise, and far from the 1000x of a unit slip or the 5x of timing all steps as one."""
    _, data, _ = bench_run
    reported = data["exports"][1]["decode"][1]["ms_per_token"]  # flash, context 16
    model = Model(runtime_exports["flash"][0], num_slots=BATCH)
    model.backend.prefill(np.tile(np.arange(16), (BATCH, 1)), np.full(BATCH, 16), list(range(BATCH)))
    times = []
    for i in range(20):
        start = time.perf_counter()
        model.backend.decode(np.arange(BATCH), np.full(BATCH, 65), np.full(BATCH, 16 + i))
        times.append(1e3 * (time.perf_counter() - start))
    mine = float(np.median(times[3:]))
    assert 1 / 3 < reported / mine < 3, (reported, mine)


def test_prefill_throughput_matches_an_independent_timing(bench_run, runtime_exports):
    _, data, _ = bench_run
    reported = data["exports"][1]["prefill"][1]["tokens_per_s"]  # flash, 48 tokens
    model = Model(runtime_exports["flash"][0], num_slots=BATCH)
    ids, lengths = np.random.default_rng(0).integers(0, 256, (BATCH, 48)), np.full(BATCH, 48)
    model.backend.prefill(ids, lengths, [0, 1])
    times = []
    for _ in range(9):
        start = time.perf_counter()
        model.backend.prefill(ids, lengths, [0, 1])
        times.append(time.perf_counter() - start)
    mine = BATCH * 48 / float(np.median(times))
    # Looser than decode: a 48-token prefill takes a few ms, the same order as a scheduler hiccup.
    assert 1 / 4 < reported / mine < 4, (reported, mine)


def test_prefill_peak_memory_is_what_the_prefill_added(learned_export, monkeypatch):
    """The child's peak-over-baseline, checked against a backend whose prefill touches a known
    64 MiB (and frees it): a peak counted from process start (this process holds torch), or a
    baseline taken after the first run (~0), would be off by far more than the 8 MiB allowed."""
    from linexport.runtime import benchmark_prefill, model as model_module

    size = 64 << 20

    class TouchingBackend:
        def prefill(self, ids, lengths, slots):
            np.ones(size, np.uint8)  # pages written, so resident; freed on return

    class FakeModel:
        vocab_size = 256

        def __init__(self, *args, **kwargs):
            self.backend = TouchingBackend()

    monkeypatch.setattr(model_module, "Model", FakeModel)
    row = benchmark_prefill._child({"path": str(learned_export), "seq": 8, "batch": 1, "backend": "ort",
                                    "device": "cpu", "repeats": 1})
    assert abs(row["peak_bytes"] - size) < 8 << 20, row["peak_bytes"] / 2**20


def test_graph_failures_become_skips_not_crashes(learned_export, monkeypatch):
    """With the learned-position check switched off the graphs themselves fail (a Gather out of
    bounds): in process for decode, in the child for prefill. Both must end as reasoned skips."""
    monkeypatch.setattr(benchmark, "position_limit", lambda manifest: None)
    settings = BenchSettings(contexts=(40,), prefill_seqs=(48,), steps=2, warmup=0, repeats=0)
    data = run_bench([learned_export], settings)
    decode, prefill = data["exports"][0]["decode"][0], data["exports"][0]["prefill"][0]
    assert decode["status"] == "skipped" and "out of data bounds" in decode["reason"]
    assert prefill["status"] == "skipped" and "out of data bounds" in prefill["reason"]


def test_prefill_timeout_is_a_skip(learned_export):
    row = benchmark.measure_prefill(learned_export, 16, 1, "ort", "cpu", 1, timeout_s=0.01)
    assert row == {"seq": 16, "status": "skipped", "reason": "timed out after 0.01 s"}


def test_bad_out_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "nothing"), "--contexts", "8"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "expected an export directory holding linexport.json" in result.output
    assert "linexport onnx" in result.output


@pytest.mark.parametrize("text", ["64,abc", "", "0,64", "256,64", "64,64"], ids=repr)
def test_bad_sizes_are_a_clear_error(text):
    with pytest.raises(LinexportError, match="--contexts: expected increasing positive token counts"):
        parse_sizes(text)
    assert parse_sizes("8,64,1024") == (8, 64, 1024)


def test_missing_matplotlib_names_the_install(monkeypatch):
    from linexport.runtime.benchmark_plot import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(LinexportError, match="pip install matplotlib"):
        require_matplotlib()


def test_runtime_benchmark_imports_neither_torch_nor_matplotlib():
    code = ("import sys, linexport.runtime, linexport.runtime.benchmark, linexport.runtime.benchmark_report, "
            "linexport.runtime.benchmark_plot; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'matplotlib', 'onnxruntime'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_kv_cache_exports_are_measured_with_their_growing_state(runtime_exports):
    """The softmax baseline: its state is a KV cache, sized per cached token; decode latency is
    measured for real at each context (the cache is prefilled to that length)."""
    path, model = runtime_exports["softmax"]
    settings = BenchSettings(contexts=(8, 64), prefill_seqs=(16,), steps=4, warmup=1, repeats=1)
    result = run_bench([path], settings)
    entry = result["exports"][0]
    c = model.config
    assert entry["state_bytes_per_slot"] == 0
    assert entry["state_bytes_per_token"] == 2 * c.n_layers * c.n_heads * c.head_dim * 4  # key + value, fp32
    assert [r["status"] for r in entry["decode"] + entry["prefill"]] == ["ok"] * 3
