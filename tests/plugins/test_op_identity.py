"""The op's identity is written once, in contract/op_spec.py; the C++ plugin header, the spec
block of the plugin README and linexport/plugins.py must say the same. Plain text parsing: no
compiler, no TensorRT. Each check is also run on a drifted copy, which it must reject."""

from __future__ import annotations

import ast
import re

import pytest

from linexport import plugins
from linexport.contract import op_spec
from tests.plugins.conftest import REPO

PLUGIN_DIR = REPO / "plugins" / "causal_linear_attention"
HEADER = PLUGIN_DIR / "causal_linear_attention_plugin.h"
README = PLUGIN_DIR / "README.md"
PLUGINS_PY = REPO / "linexport" / "plugins.py"


# -- what each file says ----------------------------------------------------------------------
def header_identity(text: str) -> dict:
    """The constexpr strings of the plugin header, and the C++ namespace they live in."""
    consts = dict(re.findall(r'constexpr\s+char\s+const\s*\*\s*(k\w+)\s*=\s*"([^"]*)"\s*;', text))
    eps = re.search(r"constexpr\s+float\s+kDefaultEps\s*=\s*([0-9.eE+-]+)[fF]?\s*;", text)
    normalize = re.search(r"constexpr\s+int32_t\s+kDefaultNormalize\s*=\s*(\d+)\s*;", text)
    namespaces = re.findall(r"^namespace\s+(\w+)", text, re.MULTILINE)
    return {"name": consts.get("kPluginName"), "version": consts.get("kPluginVersion"),
            "namespace": consts.get("kPluginNamespace"), "num_heads": consts.get("kFieldNumHeads"),
            "eps": consts.get("kFieldEps"), "default_eps": float(eps.group(1)) if eps else None,
            "normalize": consts.get("kFieldNormalize"),
            "default_normalize": int(normalize.group(1)) if normalize else None,
            "cpp_namespace": "::".join(namespaces)}


def readme_identity(text: str) -> dict:
    """The "Op spec" section of the README: node, plugin, IO names in order, attributes."""
    spec = text[text.index("## Op spec"):text.index("\n## ", text.index("## Op spec") + 1)]
    node = re.search(r"\| ONNX node \| domain `(\w+)`, op_type `(\w+)`, version (\d+) \|", spec)
    plugin = re.search(r'\| TensorRT plugin \| name `(\w+)`, version `"([^"]*)"`, namespace `"([^"]*)"` \|', spec)
    tables = {}
    for title in ("Inputs", "Outputs"):
        block = spec[spec.index(f"\n{title}\n"):]
        block = block[:block.index("\n\n", block.index("|---"))]
        tables[title] = tuple(re.findall(r"^\| \d+ \| `(\w+)` \|", block, re.MULTILINE))
    attrs = spec[spec.index("Attributes"):]
    heads = re.search(r"^\| `(\w+)` \| int \| required", attrs, re.MULTILINE)
    eps = re.search(r"^\| `(\w+)` \| float \| default ([0-9.eE+-]+)", attrs, re.MULTILINE)
    normalize = re.search(r"^\| `(\w+)` \| int \| default (\d+); 0 or 1", attrs, re.MULTILINE)
    return {"domain": node and node.group(1), "op_type": node and node.group(2),
            "op_version": node and int(node.group(3)), "name": plugin and plugin.group(1),
            "version": plugin and plugin.group(2), "namespace": plugin and plugin.group(3),
            "inputs": tables["Inputs"], "outputs": tables["Outputs"],
            "num_heads": heads and heads.group(1), "eps": eps and eps.group(1),
            "default_eps": eps and float(eps.group(2)), "normalize": normalize and normalize.group(1),
            "default_normalize": normalize and int(normalize.group(2))}


def creator_lookups(source: str) -> list[tuple]:
    """(name, version, namespace) of every ``registry.get_creator(...)`` in linexport/plugins.py;
    ``*PLUGIN_CREATOR`` is resolved to the module's value."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get_creator":
            args = []
            for arg in node.args:
                if isinstance(arg, ast.Starred) and getattr(arg.value, "id", None) == "PLUGIN_CREATOR":
                    args.extend(plugins.PLUGIN_CREATOR)
                else:
                    args.append(ast.literal_eval(arg))
            found.append(tuple(args))
    return found


# -- what they must say -----------------------------------------------------------------------
PLUGIN = (op_spec.TRT_PLUGIN_NAME, op_spec.TRT_PLUGIN_VERSION, op_spec.TRT_PLUGIN_NAMESPACE)


def header_mismatches(text: str) -> list[str]:
    got = header_identity(text)
    want = {"name": op_spec.TRT_PLUGIN_NAME, "version": op_spec.TRT_PLUGIN_VERSION,
            "namespace": op_spec.TRT_PLUGIN_NAMESPACE, "num_heads": op_spec.TRT_FIELD_NUM_HEADS,
            "eps": op_spec.TRT_FIELD_EPS, "default_eps": op_spec.DEFAULT_EPS,
            "normalize": op_spec.TRT_FIELD_NORMALIZE, "default_normalize": op_spec.DEFAULT_NORMALIZE,
            "cpp_namespace": "linexport::trt"}
    return [f"{k}: header {got[k]!r}, op_spec {v!r}" for k, v in want.items() if got[k] != v]


def readme_mismatches(text: str) -> list[str]:
    got = readme_identity(text)
    want = {"domain": op_spec.DOMAIN, "op_type": op_spec.OP_TYPE, "op_version": op_spec.OP_VERSION,
            "name": op_spec.TRT_PLUGIN_NAME, "version": op_spec.TRT_PLUGIN_VERSION,
            "namespace": op_spec.TRT_PLUGIN_NAMESPACE, "inputs": op_spec.INPUTS,
            "outputs": op_spec.OUTPUTS, "num_heads": op_spec.ATTR_NUM_HEADS, "eps": op_spec.ATTR_EPS,
            "default_eps": op_spec.DEFAULT_EPS, "normalize": op_spec.ATTR_NORMALIZE,
            "default_normalize": op_spec.DEFAULT_NORMALIZE}
    return [f"{k}: README {got[k]!r}, op_spec {v!r}" for k, v in want.items() if got[k] != v]


def plugins_py_mismatches(source: str) -> list[str]:
    lookups = creator_lookups(source)
    bad = [f"get_creator{args} != {PLUGIN}" for args in lookups if args != PLUGIN]
    return bad if lookups else ["no get_creator call found"]


def test_plugin_header_matches_op_spec():
    assert header_mismatches(HEADER.read_text()) == []


def test_readme_spec_block_matches_op_spec():
    assert readme_mismatches(README.read_text()) == []


def test_plugins_py_looks_up_the_op_spec_plugin():
    assert plugins.PLUGIN_CREATOR == PLUGIN
    assert plugins_py_mismatches(PLUGINS_PY.read_text()) == []


def test_the_plugin_is_the_node_tensorrt_resolves():
    """TensorRT's ONNX parser looks a plugin up by the node's op_type, version "1", namespace ""
    and fills its fields from the attributes of the same names (README: "How TensorRT finds")."""
    assert (op_spec.TRT_PLUGIN_NAME, op_spec.TRT_PLUGIN_VERSION, op_spec.TRT_PLUGIN_NAMESPACE) == \
        (op_spec.OP_TYPE, "1", "")
    assert (op_spec.TRT_FIELD_NUM_HEADS, op_spec.TRT_FIELD_EPS, op_spec.TRT_FIELD_NORMALIZE) == \
        (op_spec.ATTR_NUM_HEADS, op_spec.ATTR_EPS, op_spec.ATTR_NORMALIZE)


@pytest.mark.parametrize("old,new", [
    ('kPluginName = "CausalLinearAttention"', 'kPluginName = "CausalLinearAttn"'),
    ('kPluginVersion = "1"', 'kPluginVersion = "2"'),
    ('kPluginNamespace = ""', 'kPluginNamespace = "linexport"'),
    ('kFieldNumHeads = "num_heads"', 'kFieldNumHeads = "heads"'),
    ('kFieldEps = "eps"', 'kFieldEps = "epsilon"'),
    ("kDefaultEps = 1e-6F", "kDefaultEps = 1e-5F"),
    ('kFieldNormalize = "normalize"', 'kFieldNormalize = "normalise"'),
    ("kDefaultNormalize = 1;", "kDefaultNormalize = 0;"),
    ("namespace trt\n", "namespace tensorrt\n"),
])
def test_header_drift_is_caught(old, new):
    text = HEADER.read_text()
    assert old in text
    assert header_mismatches(text.replace(old, new, 1))


@pytest.mark.parametrize("old,new", [
    ("op_type `CausalLinearAttention`", "op_type `CausalLinearAttn`"),
    ("domain `linexport`", "domain `linexport.ai`"),
    ('version `"1"`', 'version `"2"`'),
    ("| 3 | `past_state` |", "| 3 | `state` |"),
    ("| 1 | `present_state` |", "| 1 | `new_state` |"),
    ("| `eps` | float | default 1e-6", "| `eps` | float | default 1e-5"),
    ("| `num_heads` | int |", "| `heads` | int |"),
    ("| `normalize` | int | default 1", "| `normalize` | int | default 0"),
    ("| `normalize` | int |", "| `normalise` | int |"),
])
def test_readme_drift_is_caught(old, new):
    text = README.read_text()
    assert old in text
    assert readme_mismatches(text.replace(old, new, 1))


def test_plugins_py_drift_is_caught():
    source = PLUGINS_PY.read_text()
    assert "get_creator(*PLUGIN_CREATOR)" in source
    drifted = source.replace("get_creator(*PLUGIN_CREATOR)", 'get_creator("CausalLinearAttention", "2", "")', 1)
    assert plugins_py_mismatches(drifted) == [f"get_creator{('CausalLinearAttention', '2', '')} != {PLUGIN}"]
    assert plugins_py_mismatches("def load(registry):\n    return None\n") == ["no get_creator call found"]
