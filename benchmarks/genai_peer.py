"""Decode against the peer users run today: a Llama of the same size built by onnxruntime-genai's
model builder and run by ``og.Generator``, beside linexport's linear attention through
linexport's runtime, timed rounds interleaved in one process (ratios from this one run).

Both random-weight, fp32 (--precision int4 builds genai's int4 Llama), ONNX Runtime on CPU with
the same intra-op thread count, batch 1: after a prompt of C tokens (the context), the median
ms per generated token. The Llama has linear's parameter count: same layers, width and heads,
a SwiGLU MLP of 2/3 of linear's hidden size (three matrices instead of two), tied embeddings,
256-token vocabulary (a byte-level tokenizer, as genai's builder needs one).

Needs the peer's packages: pip install onnxruntime-genai transformers onnx_ir

    python benchmarks/genai_peer.py                       # 4 layers d384, contexts 64,1024,4096
    python benchmarks/genai_peer.py --contexts 64,16384 --precision int4
    python benchmarks/genai_peer.py --precision int4 --quantize int4 --accuracy-level 4 \
        --json benchmarks/results/genai-peer-decode-int4.json   # both int4, both int8 compute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from linexport.export.exporter import export_checkpoint
from linexport.export.quantize import QuantOptions
from linexport.files import atomic_write
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint
from linexport.runtime.backends.ort import OrtBackend
from linexport.runtime.benchmark import machine_info, versions

sys.path.insert(0, str(Path(__file__).parent))
from papers import configs  # noqa: E402 - the project's one definition of the model sizes

WARMUP = 3  # untimed steps at the start of each round (the other model ran in between)


def build_llama(config: dict, root: Path, precision: str, threads: int) -> tuple[Path, int]:
    """genai's model folder of a random-weight Llama the size of linear ``config``; its parameters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["d_model"], num_hidden_layers=config["n_layers"],
        num_attention_heads=config["n_heads"], num_key_value_heads=config["n_heads"],
        intermediate_size=2 * config["d_ff"] // 3, max_position_embeddings=32768, tie_word_embeddings=True))
    hf = root / "hf"
    llama.save_pretrained(hf)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 byte symbols: ids 0..255
    tokenizer = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(hf)
    out = root / f"genai-{precision}"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                    "-p", precision, "-e", "cpu", "-c", str(root / "cache")], check=True, capture_output=True)
    genai_config = json.loads((out / "genai_config.json").read_text())
    genai_config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (out / "genai_config.json").write_text(json.dumps(genai_config, indent=1))
    return out, sum(p.numel() for p in llama.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--contexts", default="64,1024,4096")
    ap.add_argument("--precision", choices=("fp32", "int4"), default="fp32", help="genai's Llama (ours: fp32)")
    ap.add_argument("--quantize", choices=("int8", "int4"), default=None, help="ours quantized (default: fp32)")
    ap.add_argument("--accuracy-level", type=int, default=None, help="ours: MatMulNBits' compute type")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--steps", type=int, default=25, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "genai-peer-decode.json")
    args = ap.parse_args()
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise SystemExit("this benchmark needs the peer: pip install onnxruntime-genai transformers onnx_ir") from None
    torch.set_num_threads(args.threads)
    config = configs(args.layers, args.d_model, args.heads)["linear"]
    result = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "machine": machine_info(),
              "versions": {**versions("ort"), "onnxruntime-genai": og.__version__},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    with tempfile.TemporaryDirectory(prefix="linexport-genai-peer-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = build_model("linear", config).eval()
        save_checkpoint(model, root / "linear.pt")
        quantize = QuantOptions(args.quantize, accuracy_level=args.accuracy_level) if args.quantize else None
        export_checkpoint(root / "linear.pt", root / "linear", quantize=quantize)
        peer_dir, peer_params = build_llama(config, root, args.precision, args.threads)
        result["parameters"] = {"linear": sum(p.numel() for p in model.parameters()), "llama": peer_params}
        print(f"linear {result['parameters']['linear'] / 1e6:.2f}M parameters, genai Llama ({args.precision}) "
              f"{peer_params / 1e6:.2f}M", flush=True)
        peer = og.Model(str(peer_dir))
        ours = OrtBackend(root / "linear" / "prefill.onnx", root / "linear" / "decode.onnx", 1, threads=args.threads)
        rng = np.random.default_rng(0)
        for context in (int(c) for c in args.contexts.split(",")):
            prompt = rng.integers(0, config["vocab_size"], context)
            params = og.GeneratorParams(peer)
            params.set_search_options(max_length=context + args.rounds * (WARMUP + args.steps) + 1, do_sample=False)
            generator = og.Generator(peer, params)
            generator.append_tokens(prompt.tolist())
            ours.prefill(prompt[None], np.array([context]), [0])
            position, times = context, {"genai": [], "linexport": []}
            for _ in range(args.rounds):
                for i in range(WARMUP + args.steps):
                    start = time.perf_counter()
                    generator.generate_next_token()
                    if i >= WARMUP:
                        times["genai"].append(time.perf_counter() - start)
                for i in range(WARMUP + args.steps):
                    start = time.perf_counter()
                    ours.decode([0], np.array([7]), np.array([position]))
                    position += 1
                    if i >= WARMUP:
                        times["linexport"].append(time.perf_counter() - start)
            del generator
            ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            result["rows"].append({"context": context, **{f"{k}_ms": v for k, v in ms.items()}})
            print(f"context {context:6d}: genai Llama {ms['genai']:6.2f} ms/token, linexport linear "
                  f"{ms['linexport']:6.2f} ms/token: genai / linexport = {ms['genai'] / ms['linexport']:.2f}x",
                  flush=True)
        ours.close()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
