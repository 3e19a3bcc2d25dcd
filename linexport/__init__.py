"""linexport: deploy linear-time transformers as ONNX prefill/decode graphs and TensorRT engines."""

from linexport.errors import LinexportError

__version__ = "0.1.0"
__all__ = ["LinexportError", "__version__"]
