"""Attention ops, one folder per op (the layout of flash-linear-attention's ``fla/ops``):

    <op>/chunk.py      the parallel form (chunked where the op allows, linear in T)
    <op>/recurrent.py  the one-token step against the op's state
    <op>/naive.py      the obviously-correct oracles every other implementation is tested
                       against (the models' paths, the ONNX lowerings, the CUDA kernels, the
                       TensorRT plugin); slow on purpose, tests only
    <op>/__init__.py   the op's public names

Ops: causal_linear_attention (also a registered torch custom op, op.py, that exports as one
ONNX node), mixed_chunk_attention (GAU / FLASH), softmax_attention, lsh_attention (Reformer).
"""
