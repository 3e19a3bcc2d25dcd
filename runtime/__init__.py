"""linexport.runtime: stateful decoding on exported graphs. Imports numpy only; ONNX Runtime
or TensorRT load when a backend is created. Never imports torch.

    from linexport.runtime import Model, Generator, SamplingParams
    gen = Generator(Model("linexport-out"))
    for text in gen.generate("def ", SamplingParams(max_new_tokens=100, temperature=0.8)):
        print(text, end="")
"""

from linexport.runtime.generator import Generator, Sequence, Snapshot
from linexport.runtime.model import Model
from linexport.runtime.prefix_cache import PrefixCache
from linexport.runtime.sampling import SamplingParams
from linexport.runtime.tokenizers import ByteTokenizer, CallableTokenizer, tokenizer_from_json

__all__ = ["ByteTokenizer", "CallableTokenizer", "Generator", "Model", "PrefixCache", "SamplingParams",
           "Sequence", "Snapshot", "tokenizer_from_json"]
