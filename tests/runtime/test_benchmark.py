"""`linexport bench` end to end on tiny exports: the table, the JSON, the PNG, skips and errors,
and the reported numbers against timings taken here independently. The CLI run measures a
learned-position linear export (fixed-size state: ingests in chunks, appends by continued
prefill) beside the softmax baseline (KV cache: one prefill call, appends by decode steps)."""

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
from linexport.runtime.benchmark import BenchSettings, parse_append, parse_sizes, run_bench

MAX_SEQ_LEN = 32  # the learned-position model's limit: longer contexts must be skipped, not crash
CONTEXTS, STEPS, WARMUP = [4, 16, 40], 8, 2  # 16 + 10 steps fit in 32 positions, 40 does not
SEQS = [16, 48]
BATCH = 2  # rows: the other slot gets a copy of the prefilled state
REPEATS = 5  # a median of a few runs: these 2 cores are shared, single runs jump
INGEST_SEQS, CHUNK = [16, 48], 8  # 16 tokens are two chunks; 48 pass the learned positions
APPEND = (8, 16)  # 24 positions: within the learned 32
QUICK = dict(ingest_seqs=(), append=None)  # settings for tests of the other measurements


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
    """One CLI run over (learned linear, softmax); returns (CliRunner result, JSON dict, PNG path)."""
    out = tmp_path_factory.mktemp("bench-out")
    softmax = runtime_exports["softmax"][0]
    args = ["bench", str(learned_export), str(softmax), "--contexts", ",".join(map(str, CONTEXTS)),
            "--prefill-seqs", ",".join(map(str, SEQS)), "--steps", str(STEPS), "--warmup", str(WARMUP),
            "--batch", str(BATCH), "--repeats", str(REPEATS), "--ingest-seqs", ",".join(map(str, INGEST_SEQS)),
            "--prefill-chunk", str(CHUNK), "--append", "%d:%d" % APPEND,
            "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "bench.json").read_text()), out / "bench.png"


def test_json_holds_settings_machine_and_every_raw_number(bench_run):
    _, data, _ = bench_run
    assert (data["format"], data["format_version"]) == ("linexport.bench", 2)
    assert data["settings"]["contexts"] == CONTEXTS and data["settings"]["ingest_seqs"] == INGEST_SEQS
    assert data["settings"]["prefill_chunk"] == CHUNK and data["settings"]["append"] == list(APPEND)
    assert data["machine"]["cpu_count"] >= 1 and data["versions"]["onnxruntime"]
    assert "resident" in data["definitions"]["prefill_memory"]
    assert "chunked" in data["definitions"]["ingest"] and "speedup" in data["definitions"]["append"]
    learned, softmax = data["exports"]
    assert (learned["arch"], learned["name"]) == ("linear", "linear-learned")
    assert learned["position_limit"] == MAX_SEQ_LEN and softmax["position_limit"] is None
    assert learned["state_bytes_per_slot"] > 0 and softmax["arch"] == "softmax"
    for e in (learned, softmax):
        assert [r["context"] for r in e["decode"]] == CONTEXTS
        assert [r["seq"] for r in e["prefill"]] == SEQS
        assert [r["seq"] for r in e["ingest"]] == INGEST_SEQS
    for row in [r for e in (learned, softmax) for r in e["decode"] if r["status"] == "ok"]:
        assert len(row["ms_samples"]) == STEPS and min(row["ms_samples"]) > 0
        assert row["ms_per_token"] == pytest.approx(np.median(row["ms_samples"]))
    for key, batch in (("prefill", BATCH), ("ingest", 1)):  # ingest: one prompt
        for row in [r for e in (learned, softmax) for r in e[key] if r["status"] == "ok"]:
            assert len(row["seconds"]) == REPEATS
            assert row["tokens_per_s"] == pytest.approx(batch * row["seq"] / np.median(row["seconds"]))
            assert row["peak_bytes"] >= 0 and row["baseline_bytes"] > 0


def test_learned_positions_beyond_max_seq_len_are_skipped_with_the_reason(bench_run):
    _, data, _ = bench_run
    learned, softmax = data["exports"]
    assert [r["status"] for r in learned["decode"]] == ["ok", "ok", "skipped"]
    assert [r["status"] for r in learned["prefill"]] == ["ok", "skipped"]
    assert [r["status"] for r in learned["ingest"]] == ["ok", "skipped"]
    assert f"max_seq_len={MAX_SEQ_LEN}" in learned["decode"][2]["reason"]
    assert f"max_seq_len={MAX_SEQ_LEN}" in learned["prefill"][1]["reason"]
    assert f"max_seq_len={MAX_SEQ_LEN}" in learned["ingest"][1]["reason"]
    assert all(r["status"] == "ok" for r in softmax["decode"] + softmax["prefill"] + softmax["ingest"])


def test_ingest_is_chunked_for_a_fixed_state_and_one_call_for_a_kv_cache(bench_run):
    _, data, _ = bench_run
    learned, softmax = data["exports"]
    assert learned["ingest"][0]["chunked"] is True and learned["ingest"][0]["chunk"] == CHUNK
    assert [r["chunked"] for r in softmax["ingest"]] == [False, False]


def test_append_times_both_paths_on_a_fixed_state_and_decode_steps_only_on_a_kv_cache(bench_run):
    _, data, _ = bench_run
    (linear,), (kv,) = data["exports"][0]["append"], data["exports"][1]["append"]
    assert (linear["context"], linear["tokens"], linear["chunk"]) == (*APPEND, CHUNK)
    assert linear["status"] == kv["status"] == "ok"
    for row in (linear, kv):
        assert len(row["token_by_token_samples"]) == REPEATS and min(row["token_by_token_samples"]) > 0
        assert row["token_by_token_seconds"] == pytest.approx(np.median(row["token_by_token_samples"]))
    assert len(linear["continued_samples"]) == REPEATS and min(linear["continued_samples"]) > 0
    assert linear["continued_seconds"] == pytest.approx(np.median(linear["continued_samples"]))
    assert linear["speedup"] == pytest.approx(linear["token_by_token_seconds"] / linear["continued_seconds"])
    assert linear["speedup"] > 0 and linear["continued_reason"] is None
    assert kv["continued_seconds"] is None and kv["speedup"] is None and "KV cache" in kv["continued_reason"]


def test_table_has_a_row_per_export_and_measurement_with_ratios(bench_run):
    result, _, _ = bench_run
    rows = [ln for ln in result.stdout.splitlines() if ln.startswith(("linear-learned", "softmax"))]
    assert len(rows) == 2 * (len(CONTEXTS) + len(SEQS) + len(INGEST_SEQS) + 1)
    first_decode = next(ln for ln in rows if ln.startswith("softmax") and ln.split()[2] == "4")
    assert first_decode.split()[-1] == "1.00"  # the ratio to itself
    assert sum("skipped: positions up to" in ln for ln in rows) == 1
    assert "ingest: one prompt, 8 tokens per continued prefill call" in result.stdout
    ingest = [ln.split() for ln in rows if ln.split()[2] in ("16", "48") and ln.split()[-1] in ("yes", "no")]
    assert [(r[0], r[2], r[-1]) for r in ingest] == [("linear-learned", "16", "yes"), ("softmax", "16", "no"),
                                                    ("softmax", "48", "no")]
    append = [ln for ln in rows if ln.split()[2:4] == ["8", "16"]]
    assert len(append) == 2 and append[0].endswith("x") and " n/a " in append[1]


def test_plot_is_a_real_png(bench_run):
    import matplotlib.image

    _, _, png = bench_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (1760, 1056)  # figsize 16 x 9.6 inches at 110 dpi: ingest and append below


def test_plot_and_table_of_a_result_without_ingest_and_append(bench_run, tmp_path):
    """A format-1 result (no ingest, no append) still renders: one row of panels, no new sections."""
    import matplotlib.image

    from linexport.runtime.benchmark_plot import plot_result
    from linexport.runtime.benchmark_report import format_report

    _, data, _ = bench_run
    old = {**data, "exports": [{k: v for k, v in e.items() if k not in ("ingest", "append")}
                               for e in data["exports"]]}
    assert "ingest:" not in format_report(old) and "append:" not in format_report(old)
    height, width, _ = matplotlib.image.imread(plot_result(old, tmp_path / "old.png")).shape
    assert (width, height) == (1760, 528)


def test_decode_latency_matches_an_independent_timing(bench_run, runtime_exports):
    """The bench's median against decode calls timed here on a fresh session: equal up to machine
    noise, and far from the 1000x of a unit slip or the 5x of timing all steps as one."""
    _, data, _ = bench_run
    reported = data["exports"][1]["decode"][1]["ms_per_token"]  # softmax, context 16
    model = Model(runtime_exports["softmax"][0], num_slots=BATCH)
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
    reported = data["exports"][1]["prefill"][1]["tokens_per_s"]  # softmax, 48 tokens
    model = Model(runtime_exports["softmax"][0], num_slots=BATCH)
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


def test_graph_failures_become_skips_not_crashes(learned_export, monkeypatch, tmp_path):
    """With the learned-position check switched off the decode graph fails (a Gather out of
    bounds) in process; a prefill graph ONNX Runtime cannot run fails in the child (the prefill
    graph clamps positions past the learned ones, so a damaged copy stands in). Each must end as
    a reasoned skip."""
    import shutil

    monkeypatch.setattr(benchmark, "position_limit", lambda manifest: None)
    settings = BenchSettings(contexts=(40,), prefill_seqs=(16,), steps=2, warmup=0, repeats=0, **QUICK)
    decode = run_bench([learned_export], settings)["exports"][0]["decode"][0]
    assert decode["status"] == "skipped" and "out of data bounds" in decode["reason"]
    damaged = shutil.copytree(learned_export, tmp_path / "damaged")
    (damaged / "prefill.onnx").write_bytes(b"not a graph")
    for chunk in (None, 8):  # the prefill child and the ingest child
        row = benchmark.measure_prefill(damaged, 16, 1, "ort", "cpu", 0, timeout_s=300, chunk=chunk)
        assert row["status"] == "skipped" and "ONNX Runtime could not load" in row["reason"], row


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
    settings = BenchSettings(contexts=(8, 64), prefill_seqs=(16,), steps=4, warmup=1, repeats=1, **QUICK)
    result = run_bench([path], settings)
    entry = result["exports"][0]
    c = model.config
    assert entry["state_bytes_per_slot"] == 0
    assert entry["state_bytes_per_token"] == 2 * c.n_layers * c.n_heads * c.head_dim * 4  # key + value, fp32
    assert [r["status"] for r in entry["decode"] + entry["prefill"]] == ["ok"] * 3


class _RecordingBackend:
    """Logits from fixed rows: prefill gives ``prefill_top``'s one-hot, decode ``decode_top``'s;
    records every prefill call's (width, positions)."""
    vocab_size = 4

    def __init__(self, continues=True, prefill_top=1, decode_top=1):
        self.continues_prefill, self.calls = continues, []
        one_hot = np.eye(4, dtype=np.float32)
        self._prefill, self._decode = one_hot[[prefill_top]], one_hot[[decode_top]]

    def prefill(self, ids, lengths, slots, positions=None):
        self.calls.append((ids.shape[1], [int(p) for p in positions]))
        return np.repeat(self._prefill, len(ids), 0)

    def decode(self, slots, ids, positions):
        return self._decode.copy()

    def get_state(self, slot):
        return {}

    def set_state(self, slot, state):
        pass


@pytest.mark.parametrize("continues", [True, False], ids=["fixed-state", "kv-cache"])
def test_the_ingest_child_feeds_the_prompt_chunk_by_chunk(learned_export, monkeypatch, continues):
    """Each run is ceil(20 / 8) continued prefills at positions 0, 8, 16 (a KV cache: one call)."""
    from linexport.runtime import benchmark_prefill, model as model_module

    backend = _RecordingBackend(continues)

    class FakeModel:
        vocab_size = 4

        def __init__(self, *args, **kwargs):
            self.backend = backend

    monkeypatch.setattr(model_module, "Model", FakeModel)
    row = benchmark_prefill._child({"path": str(learned_export), "seq": 20, "batch": 1, "backend": "ort",
                                    "device": "cpu", "repeats": 1, "chunk": 8})
    assert (row["status"], row["chunk"], row["chunked"]) == ("ok", 8, continues)
    run = [(8, [0]), (8, [8]), (4, [16])] if continues else [(20, [0])]
    assert backend.calls == run * 2  # the cold run and one warm one


def test_append_refuses_timings_of_paths_that_end_in_different_tokens():
    with pytest.raises(LinexportError, match=r"continued prefill's next token \(1\) differs from the decode "
                                             r"steps' \(2\)"):
        benchmark.measure_append(_RecordingBackend(decode_top=2), 4, 8, 4, 2, 1)
    row = benchmark.measure_append(_RecordingBackend(), 4, 8, 4, 2, 1)
    assert row["next_token"] == 1 and row["speedup"] > 0


def test_append_past_the_learned_positions_is_skipped(learned_export):
    from linexport.runtime.export_dir import read_manifest

    settings = BenchSettings(append=(24, 16))
    (row,) = benchmark._append_all(learned_export, read_manifest(learned_export), settings, lambda: None)
    assert row["status"] == "skipped" and f"max_seq_len={MAX_SEQ_LEN}" in row["reason"]


def test_after_a_failed_ingest_the_longer_prompts_are_not_run(learned_export):
    from linexport.runtime.export_dir import read_manifest

    settings = BenchSettings(ingest_seqs=(8, 16), prefill_chunk=4, repeats=1, timeout_s=0.01)
    rows = benchmark.ingest_all(learned_export, read_manifest(learned_export), settings, lambda seq: None)
    assert rows == [{"seq": 8, "status": "skipped", "reason": "timed out after 0.01 s"},
                    {"seq": 16, "status": "skipped",
                     "reason": "not run: the 8-token prompt was already skipped (timed out after 0.01 s)"}]


@pytest.mark.parametrize("text", ["4096", "a:b", "0:16", "16:0", "1:2:3", "-4:8"], ids=repr)
def test_bad_append_is_a_clear_error(text):
    with pytest.raises(LinexportError, match="--append: expected CONTEXT:TOKENS"):
        parse_append(text)
    assert parse_append("4096:1024") == (4096, 1024) and parse_append("") is None


@pytest.mark.parametrize("args, message", [
    (["--append", "4096x1024"], "--append: expected CONTEXT:TOKENS"),
    (["--ingest-seqs", "8192,abc"], "--ingest-seqs: expected increasing positive token counts"),
    (["--ingest-seqs", "32768,8192"], "--ingest-seqs: expected increasing positive token counts"),
    (["--prefill-chunk", "0"], "Invalid value for '--prefill-chunk'"),
], ids=["append", "ingest-not-a-number", "ingest-decreasing", "chunk-zero"])
def test_bad_ingest_and_append_options_are_clear_errors(tmp_path, args, message):
    result = CliRunner().invoke(main, ["bench", str(tmp_path), "--contexts", "8", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.output
