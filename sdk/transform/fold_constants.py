"""fold-constants: evaluate every node whose inputs are all constants with the operator's NumPy reference.

Expects: graph-level operators in ``main``. Guarantees: no registered operator node has only constant inputs
(its results are :class:`Constant` values now). Removes: those nodes.
"""

from __future__ import annotations

from ..ir import Constant, Module, Node, Value
from ..ops import get_op, has_op
from .pipeline import register_pass


def fold_node(n: Node) -> list[Constant] | None:
    """Constants for ``n``'s results if all its inputs are constants, its operator is foldable and its results
    have fixed sizes (a table sliced to a run-time length stays a node)."""
    if not has_op(n.op) or not all(isinstance(v, Constant) for v in n.inputs):
        return None
    if not all(o.type.is_static for o in n.outputs):
        return None
    values = get_op(n.op).reference([v.data for v in n.inputs], n.attrs)  # type: ignore[union-attr]
    return [Constant(o.name, v) for o, v in zip(n.outputs, values, strict=True)]


@register_pass("fold-constants", "after_import")
def fold_constants(mod: Module) -> Module:
    main = mod.main
    mapping: dict[Value, Value] = {}
    nodes: list[Node] = []
    for n in main.nodes:
        n = n.with_(inputs=tuple(mapping.get(v, v) for v in n.inputs))
        folded = fold_node(n)
        if folded is None:
            nodes.append(n)
        else:
            mapping.update(zip(n.outputs, folded, strict=True))
    outputs = tuple(mapping.get(v, v) for v in main.outputs)
    return mod.with_function(main.with_(nodes=tuple(nodes), outputs=outputs))
