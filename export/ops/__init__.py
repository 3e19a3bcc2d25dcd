"""The export side of each attention op that exports as a custom node, one module per op
(models/ops/<op>/ holds its PyTorch side):

    causal_linear_attention.py   translation to the bare node, function body, standard lowering
    nodes.py                     the node-building helper they share

``translation_table()`` is the ``custom_translation_table`` the exporter passes to every
export: a model that calls one of these ops gets its node, whatever its arch.
"""

from __future__ import annotations

from linexport.export.ops import causal_linear_attention


def translation_table() -> dict:
    """torch op overload -> onnxscript function, for every custom op linexport exports."""
    return dict(causal_linear_attention.translation_table())


_MODEL_OPS = "linexport.models.ops."


def ops_in_model(model) -> list[str]:
    """The models/ops packages the model's layers draw on, by name (flash's layers import
    ``chunk_mixed_attention`` from ``models/ops/mixed_chunk_attention/``: "mixed_chunk_attention"),
    read from the modules defining the model's layer classes. For the manifest's record; whether
    an op became a custom node is read from the traced graph, not from here."""
    import sys

    found = set()
    for module in {sys.modules.get(type(layer).__module__) for layer in model.modules()} - {None}:
        for value in vars(module).values():
            where = getattr(value, "__module__", None)
            if callable(value) and isinstance(where, str) and where.startswith(_MODEL_OPS):
                found.add(where[len(_MODEL_OPS):].split(".")[0])
    return sorted(found)
