"""Against the peer users run today: a Llama of the same size built by onnxruntime-genai's model
builder and run by ``og.Generator``, beside linexport's linear attention through linexport's
runtime, at the same precision (fp32, and int4 for both), in one run.

Both random-weight, ONNX Runtime on CPU with the same intra-op thread count, batch 1. The Llama
has linear's parameter count: same layers, width and heads, a SwiGLU MLP of 2/3 of linear's
hidden size (three matrices instead of two), tied embeddings, a 256-token byte-level vocabulary
(genai's builder needs a tokenizer). int4: genai's builder ``-p int4`` (MatMulNBits, block 32,
accuracy level 4 on CPU, its default) against ``linexport onnx --quantize int4
--accuracy-level 4`` (the same kernel settings).

For each precision and each context C (a prompt of C random tokens), in a fresh process per
model (``--repeats`` times, the two models' processes alternating; medians): prefill tokens/s
for the prompt, then N greedy tokens: decode ms/token (the median step), the time to generate
the N tokens, and the process's peak resident memory (VmHWM), so each peak is that model's
alone. Ours ingests the prompt the way the runtime does, in chunks of 4,096 tokens. Each
process first runs an untimed 64-token prompt and one step, so that no timing holds a session's
one-time costs. Why not both models in one process, rounds interleaved: their ONNX Runtime
thread pools get in each other's way there (on 2 cores, fp32 at context 64: genai 1.43 ms/token
alone against 1.99 ms beside ours, ours 1.69 ms against 2.70 ms).

Needs the peer's packages: pip install onnxruntime-genai transformers onnx_ir (and matplotlib
for the plot).

    python benchmarks/genai_peer.py         # 4 layers d384, contexts 64 .. 16384, fp32 + int4
    python benchmarks/genai_peer.py --contexts 64,1024 --precisions int4 --no-plot
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
PROMPT_CHUNK = 4096  # the runtime's default prefill chunk (runtime/ingest.py)
WARM_PROMPT = 64  # a process's untimed first prompt (tokens) and step before the timed ones


# -- one model, one context, in a process of its own ----------------------------------------------
def _memory(field: str) -> int:
    from linexport.runtime.benchmark_prefill import status_bytes

    value = status_bytes(field)
    if value is None:
        raise SystemExit(f"this benchmark reads {field} from /proc/self/status: run it on Linux")
    return value


def worker(spec: dict) -> dict:
    """Loads ``spec["folder"]`` (genai's or ours), ingests a ``context``-token prompt, greedily
    generates ``new_tokens``; seconds for each and the process's resident memory. Imports only
    what that model's runtime needs (no torch)."""
    threads, context, new = spec["threads"], spec["context"], spec["new_tokens"]
    prompt = np.random.default_rng(1).integers(0, spec["vocab_size"], context)
    if spec["side"] == "genai":
        import onnxruntime_genai as og

        model = og.Model(spec["folder"])
        loaded = _memory("VmRSS")
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=context + new, do_sample=False)
        warm = og.Generator(model, params)  # a first run pays the sessions' one-time costs
        warm.append_tokens(prompt[:WARM_PROMPT].tolist())
        warm.generate_next_token()
        del warm
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt.tolist())
        prefill = time.perf_counter() - start
        steps = []
        for _ in range(new):
            start = time.perf_counter()
            generator.generate_next_token()
            steps.append(time.perf_counter() - start)
        tokens = list(generator.get_sequence(0))[context:]
    else:
        from linexport.runtime.backends.ort import OrtBackend
        from linexport.runtime.ingest import ingest

        folder = Path(spec["folder"])
        backend = OrtBackend(folder / "prefill.onnx", folder / "decode.onnx", 1, threads=threads)
        loaded = _memory("VmRSS")
        warm = ingest(backend, [prompt[:WARM_PROMPT].tolist()], [0], [0], PROMPT_CHUNK, None)
        backend.decode([0], np.array([int(warm[0].argmax())]), np.array([min(context, WARM_PROMPT)]))
        start = time.perf_counter()  # the prompt below starts the slot afresh (position 0)
        logits = ingest(backend, [prompt.tolist()], [0], [0], PROMPT_CHUNK, None)
        prefill = time.perf_counter() - start
        tokens, steps = [], []
        for i in range(new):  # genai's step: the graph on the last token, then its pick
            start = time.perf_counter()
            if i:
                logits = backend.decode([0], np.array([tokens[-1]]), np.array([context + i - 1]))
            tokens.append(int(logits[0].argmax()))
            steps.append(time.perf_counter() - start)
    assert len(tokens) == new, (len(tokens), new)
    return {"prefill_s": prefill, "prefill_tokens_per_s": context / prefill, "generate_s": sum(steps),
            "decode_ms": 1e3 * float(np.median(steps[1:])), "loaded_bytes": loaded,
            "peak_bytes": _memory("VmHWM")}


def run_worker(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {spec['side']} worker (context {spec['context']}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- building the two models -----------------------------------------------------------------
def build_llama(config: dict, root: Path, precision: str, threads: int) -> tuple[Path, int]:
    """genai's model folder of a random-weight Llama the size of linear ``config``; its parameters."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hf = root / "hf"
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["d_model"], num_hidden_layers=config["n_layers"],
        num_attention_heads=config["n_heads"], num_key_value_heads=config["n_heads"],
        intermediate_size=2 * config["d_ff"] // 3, max_position_embeddings=32768, tie_word_embeddings=True))
    if not hf.exists():
        llama.save_pretrained(hf)
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 byte symbols: ids 0..255
        tokenizer = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(alphabet)}, merges=[]))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(hf)
    out = root / f"genai-{precision}"
    built = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                            "-p", precision, "-e", "cpu", "-c", str(root / "cache")], capture_output=True, text=True)
    if built.returncode:
        raise SystemExit(f"genai's model builder failed:\n{built.stderr[-3000:]}")
    genai_config = json.loads((out / "genai_config.json").read_text())
    genai_config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (out / "genai_config.json").write_text(json.dumps(genai_config, indent=1))
    return out, sum(p.numel() for p in llama.parameters())


def export_linear(config: dict, root: Path, precision: str) -> tuple[Path, int]:
    """Our export of a random-weight linear model of ``config`` (fp32, or int4 at accuracy level 4)."""
    import torch

    from linexport.export.exporter import export_checkpoint
    from linexport.export.quantize import QuantOptions
    from linexport.models import build_model
    from linexport.models.checkpoint import save_checkpoint

    checkpoint = root / "linear.pt"
    torch.manual_seed(0)
    model = build_model("linear", config).eval()
    if not checkpoint.exists():
        save_checkpoint(model, checkpoint)
    out = root / f"linear-{precision}"
    quantize = QuantOptions("int4", accuracy_level=4) if precision == "int4" else None
    export_checkpoint(checkpoint, out, quantize=quantize)
    return out, sum(p.numel() for p in model.parameters())


# -- the plot --------------------------------------------------------------------------------------
def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("decode_ms", "decode ms / token"), ("prefill_tokens_per_s", "prefill tokens / s"),
              ("peak_mib", "peak resident memory, MiB"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (key, label) in zip(axes, panels):
        for precision, rows in result["precisions"].items():
            ctx = [r["context"] for r in rows]
            for side, style in (("genai", "--"), ("linexport", "-")):
                name = "genai Llama" if side == "genai" else "linexport linear"
                ax.plot(ctx, [r[side][key] for r in rows], style, marker="o",
                        color="tab:red" if side == "genai" else "tab:blue",
                        alpha=1.0 if precision == "fp32" else 0.55, label=f"{name}, {precision}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (prompt tokens)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"onnxruntime-genai's Llama vs linexport's linear, {result['parameters']['linear'] / 1e6:.1f}M "
                 f"parameters, batch 1, CPU ({m['cpu_count']} cores, {result['settings']['threads']} threads)")
    fig.tight_layout()
    from linexport.files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--contexts", default="64,256,1024,4096,16384")
    ap.add_argument("--precisions", default="fp32,int4", help="fp32 and/or int4, for both models")
    ap.add_argument("--new-tokens", type=int, default=256, help="N: tokens generated after the prompt")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=3, help="processes per model and context (medians)")
    ap.add_argument("--json", type=Path, default=RESULTS / "genai-peer.json")
    ap.add_argument("--plot", type=Path, default=RESULTS / "genai-peer.png")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    missing = [m for m in ("onnxruntime_genai", "transformers", "onnx_ir") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"this benchmark needs the peer ({', '.join(missing)} missing): pip install "
                         "onnxruntime-genai transformers onnx_ir")
    import onnxruntime_genai as og
    import torch

    from linexport.files import atomic_write
    from linexport.runtime.benchmark import machine_info, versions

    sys.path.insert(0, str(Path(__file__).parent))
    from papers import configs  # the project's one definition of the model sizes

    precisions = [p for p in args.precisions.split(",") if p]
    if not precisions or set(precisions) - {"fp32", "int4"}:
        raise SystemExit(f"--precisions: expected fp32 and/or int4, got {args.precisions!r}")
    contexts = [int(c) for c in args.contexts.split(",")]
    torch.set_num_threads(args.threads)
    config = configs(args.layers, args.d_model, args.heads)["linear"]
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "plot", "worker")},
              "machine": machine_info(), "versions": {**versions("ort"), "onnxruntime-genai": og.__version__},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "precisions": {}}
    with tempfile.TemporaryDirectory(prefix="linexport-genai-peer-") as tmp:
        root = Path(tmp)
        for precision in precisions:
            ours_dir, ours_params = export_linear(config, root, precision)
            peer_dir, peer_params = build_llama(config, root, precision, args.threads)
            result["parameters"] = {"linear": ours_params, "llama": peer_params}
            print(f"{precision}: linear {ours_params / 1e6:.2f}M parameters, genai Llama {peer_params / 1e6:.2f}M",
                  flush=True)
            rows = result["precisions"][precision] = []
            for context in contexts:
                runs = {"genai": [], "linexport": []}
                for _ in range(args.repeats):  # the two models' processes alternate
                    for side, folder in (("genai", peer_dir), ("linexport", ours_dir)):
                        runs[side].append(run_worker({"side": side, "folder": str(folder), "context": context,
                                                      "threads": args.threads, "new_tokens": args.new_tokens,
                                                      "vocab_size": config["vocab_size"]}))
                row = {"context": context}
                for side, got in runs.items():
                    row[side] = {key: float(np.median([r[key] for r in got])) for key in got[0]}
                    row[side]["peak_mib"] = row[side]["peak_bytes"] / 2 ** 20
                    row[side]["runs"] = got
                rows.append(row)
                g, o = row["genai"], row["linexport"]
                print(f"  context {context:6d}: decode ms/token genai {g['decode_ms']:6.2f}, linexport "
                      f"{o['decode_ms']:6.2f} (genai / linexport {g['decode_ms'] / o['decode_ms']:5.2f}x); prefill "
                      f"tokens/s {g['prefill_tokens_per_s']:8.0f} / {o['prefill_tokens_per_s']:8.0f}; "
                      f"{args.new_tokens} tokens in {g['generate_s']:.2f} / {o['generate_s']:.2f} s; peak "
                      f"{g['peak_mib']:.0f} / {o['peak_mib']:.0f} MiB", flush=True)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    print(f"wrote {args.json}")
    if not args.no_plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
