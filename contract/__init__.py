"""The contract between export and runtime: what an export directory holds and how to read it.

Pure Python + numpy (no torch, no onnx), so both sides import it and neither imports the other:

    manifest    linexport.json: its schema, validation, file hashes (docs/DESIGN.md, "Contracts")
    graph_io    the two graphs' input/output names (docs/DESIGN.md, "Contracts")
    op_spec     the custom attention op's identity: ONNX node, TensorRT plugin, lowerings, opsets
    checks      one error measure and the tolerances every comparison uses (verify, compare)

``models/`` and ``export/`` build what this describes; ``runtime/`` reads it.
"""
