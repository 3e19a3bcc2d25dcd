"""The house rules of docs/DESIGN.md ("Layout"), read from the code itself.

Data flows one way: models/ -> export/ -> (the export directory) -> runtime/, and both sides of
that directory meet only in contract/. Every import is checked, lazy ones inside functions too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder -> the linexport subpackages its modules may import (linexport.errors etc. always)
ALLOWED = {
    "contract": {"contract"},
    "models": {"models"},
    # export/ runs its graphs (verify) on the runtime's own loader; never the other way round.
    "export": {"export", "contract", "models", "runtime", "plugins", "tensorrt_flavours"},
    "runtime": {"runtime", "contract", "plugins", "tensorrt_flavours"},
}
ALWAYS = {"errors", "files", "__version__"}
# Third-party packages a folder must never import, lazily or not.
FORBIDDEN_THIRD_PARTY = {
    "contract": {"torch", "onnx", "onnxscript", "onnxruntime", "tensorrt"},
    "runtime": {"torch", "onnx", "onnxscript"},
}


def _imports(path: Path):
    """(line, dotted module) of every import in ``path``, nested ones included."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "linexport":  # `from linexport import x`: x is the subpackage
                for alias in node.names:
                    yield node.lineno, f"linexport.{alias.name}"
            else:
                yield node.lineno, node.module


def _violations(folder: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in _imports(path):
            parts = module.split(".")
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if parts[0] == "linexport" and len(parts) > 1:
                if parts[1] not in ALLOWED[folder] | ALWAYS:
                    bad.append(where)
            elif parts[0] in FORBIDDEN_THIRD_PARTY.get(folder, ()):
                bad.append(where)
    return bad


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_follow_the_layers(folder):
    assert _violations(folder) == []


def test_the_check_sees_lazy_imports(tmp_path):
    """The scan must catch an import inside a function (the way a violation would sneak in)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from linexport.export.exporter import export_checkpoint\n")
    assert [m for _, m in _imports(probe)] == ["linexport.export.exporter"]


def test_runtime_and_contract_import_without_torch_onnx_or_export():
    """Importing every runtime and contract module pulls in neither torch/onnx nor the exporter."""
    modules = [f"linexport.{p.relative_to(ROOT).with_suffix('').as_posix().replace('/', '.')}"
               for folder in ("runtime", "contract") for p in sorted((ROOT / folder).rglob("*.py"))
               if p.name != "__init__.py" and p.stem not in ("trt", "cuda")]
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxscript') "
            "or m.startswith(('linexport.export', 'linexport.models'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_patches_no_other_module():
    """No module in export/ assigns attributes of another module (the exporter once swapped the
    model's attention functions while tracing; the model now calls the custom op itself)."""
    bad = []
    for path in sorted((ROOT / "export").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == []
