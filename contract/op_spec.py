"""The exported attention op's name, fields and layouts: the plugin's contract, as constants.

The spec itself is written once in ``plugins/causal_linear_attention/README.md``:

    linexport::CausalLinearAttention (version 1)
    inputs   query [B, T, H*Dk]   φ(q), already feature-mapped
             key   [B, T, H*Dk]   φ(k), zero rows at padded positions
             value [B, T, H*Dv]
             past_state [B, H, Dk, W] float32   (zeros for prefill; W = Dv + normalize)
    outputs  output [B, T, H*Dv]  dtype of query (float32 / float16 / bfloat16)
             present_state [B, H, Dk, W] float32
    attrs    num_heads (int), eps (float, default 1e-6), normalize (int 0/1, default 1)
    math     normalize 1: P_t = P_{t-1} + k_t [v_t, 1]ᵀ;  u = q_tᵀ P_t;  o_t = u[:Dv] / (u[Dv] + eps)
             normalize 0: S_t = S_{t-1} + k_t v_tᵀ;  o_t = q_tᵀ S_t   (eps unused)

Nothing here imports torch or onnx: the runtime and the manifest checks read these too.
"""

# The ONNX node.
DOMAIN = "linexport"
OP_TYPE = "CausalLinearAttention"
OP_VERSION = 1
INPUTS = ("query", "key", "value", "past_state")
OUTPUTS = ("output", "present_state")
ATTR_NUM_HEADS = "num_heads"
ATTR_EPS = "eps"
DEFAULT_EPS = 1e-6
ATTR_NORMALIZE = "normalize"  # 1: o = qᵀS / (qᵀz + eps), state [.., Dv+1]; 0: o = qᵀS, state [.., Dv]
DEFAULT_NORMALIZE = 1  # a node without the attribute is normalised (every graph before it existed)

# The PyTorch custom op the models call (models/ops/causal_linear_attention/op.py), and the
# op's name in the manifest's "lowering.ops".
OP_NAME = "causal_linear_attention"
TORCH_OP = f"{DOMAIN}::{OP_NAME}"

# The TensorRT plugin (plugins/causal_linear_attention/causal_linear_attention_plugin.h:
# kPluginName, kPluginVersion, kPluginNamespace, kFieldNumHeads, kFieldEps, kFieldNormalize). TensorRT's ONNX
# parser finds it by name = op_type, version "1" and namespace "" (README.md there), and fills
# its fields from the node's attributes of the same names.
TRT_PLUGIN_NAME = OP_TYPE
TRT_PLUGIN_VERSION = str(OP_VERSION)
TRT_PLUGIN_NAMESPACE = ""
TRT_FIELD_NUM_HEADS = ATTR_NUM_HEADS
TRT_FIELD_EPS = ATTR_EPS
TRT_FIELD_NORMALIZE = ATTR_NORMALIZE

# Lowerings of the op (one export option) and the opsets each needs.
LOWERINGS = ("function", "plugin", "standard")
DEFAULT_LOWERING = "function"
MIN_OPSET = 20  # torch.onnx exports opset 20 (tanh-GELU is Gelu-20); the body needs >= 18
STANDARD_MIN_OPSET = 27  # ONNX LinearAttention
MAX_OPSET = 27  # the newest opset whose changes over ours we know and check (export/opset.py)
DEFAULT_OPSET = {"function": 20, "plugin": 20, "standard": 27}
