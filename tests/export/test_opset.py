"""Moving a traced graph to another opset: upgrades only where no op changed meaning."""

import onnx
import pytest
from onnx import TensorProto, helper

from linexport.errors import LinexportError
from linexport.export.opset import convert_opset, opset_of


def _graph(op_type, opset, **attrs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inputs = ["x", "scale"] if op_type == "DequantizeLinear" else ["x"]
    init = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])]
    node = helper.make_node(op_type, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [x], [y], initializer=init if len(inputs) > 1 else [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("op_type", ["Elu", "Reshape", "Cast", "Range", "MatMul"])
def test_upgrade_relabels_ops_whose_later_versions_only_add_types(op_type):
    model = _graph(op_type, 20)
    model = convert_opset(model, 27)
    assert opset_of(model) == 27


def test_upgrade_refuses_an_op_whose_meaning_changed():
    model = _graph("DequantizeLinear", 20)  # opset 21 added blocked quantization
    with pytest.raises(LinexportError, match="DequantizeLinear, which changed in opset 21"):
        convert_opset(model, 27)


def test_no_downgrade():
    with pytest.raises(LinexportError, match="expected --opset 20 or higher"):
        convert_opset(_graph("Elu", 20), 18)


def test_upgraded_export_is_valid(exports):
    for name in ("prefill", "decode"):
        model = onnx.load(str(exports.dir("linear", "fp32") / f"{name}.onnx"))
        model = convert_opset(model, 27)
        onnx.checker.check_model(model, full_check=True)
