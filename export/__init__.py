"""ONNX export: prefill + decode graphs, attention lowerings, manifest (see docs/DESIGN.md).

    exporter.export_checkpoint   checkpoint -> OUT/{prefill.onnx, decode.onnx, linexport.json}
    graphs                       tracing a CausalLM into the two graphs of the contract
    ops/                         each custom op's export side, one module per op: its translation
                                 to the bare ONNX node, its function body, its standard lowering
    lowerings                    applying a lowering: function body / plugin node / opset-27 op
    opset                        moving a traced graph to the requested opset, op by op
    ort_session, verify          running an export in ONNX Runtime against the PyTorch model

The models call the custom ops themselves (models/ops/<op>/op.py); the manifest and op spec
(pure JSON / constants, no torch, no onnx) live in contract/. Nothing is imported here.
"""
