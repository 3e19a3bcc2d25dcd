"""Attention ops, one file per op, each with a chunked parallel form and a recurrent step.

``naive.py`` holds the obviously-correct references every other implementation is tested
against (the models' paths, the ONNX lowerings, the CUDA kernels, the TensorRT plugin).
"""
