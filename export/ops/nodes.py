"""Building ONNX nodes in Python: the helper the ops' function bodies and lowerings share."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Nodes:
    """Collects nodes, naming every value ``{prefix}{name}`` so rewrites never collide."""

    def __init__(self, prefix: str, named: bool = True):
        self.prefix = prefix
        # Node names inside a function would repeat once per call after inlining (TensorRT
        # warns about each), so function bodies leave them empty.
        self.named = named
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def __call__(self, op_type: str, inputs, outputs=1, name: str | None = None, **attrs):
        self._count += 1
        label = name or op_type.lower()
        if isinstance(outputs, int):
            outputs = [f"{self.prefix}{label}_{self._count}" + (f"_{i}" if outputs > 1 else "")
                       for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                           name=f"{self.prefix}{label}_{self._count}" if self.named else None,
                                           **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, name: str, value) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        tensor = numpy_helper.from_array(array, name=f"{self.prefix}{name}")
        return self("Constant", [], name=name, value=tensor)
