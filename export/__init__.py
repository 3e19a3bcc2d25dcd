"""ONNX export: prefill + decode graphs, attention lowerings, manifest (see DESIGN.md).

    exporter.export_checkpoint   checkpoint -> OUT/{prefill.onnx, decode.onnx, linexport.json}
    graphs                       tracing a CausalLM into the two graphs of the contract
    attention_op                 the attention as a torch custom op -> one bare ONNX node
    lowerings                    that node -> function body / plugin node / opset-27 LinearAttention
    opset                        moving a traced graph to the requested opset, op by op
    manifest, op_spec            pure JSON / constants: no torch, no onnx (the runtime reads them)
    ort_session, verify          running an export in ONNX Runtime against the PyTorch model

Nothing is imported here, so ``linexport.contract.manifest`` stays torch-free.
"""
