"""simplify: remove operators that do nothing.

Drops ``identity`` nodes, ``reshape`` to the input's own shape and ``transpose`` with the identity
permutation, and merges chains of reshapes. Expects: types inferred on every value. Guarantees: none of those
patterns remain, except where the no-op names a graph output (outputs keep their names).
"""

from __future__ import annotations

from ..ir import Module, Node, Value
from .pipeline import register_pass


def _is_noop(n: Node) -> bool:
    if n.op == "identity":
        return True
    if n.op in ("reshape", "transpose") and len(n.inputs) == 1:
        same_shape = n.inputs[0].type == n.outputs[0].type
        if n.op == "reshape":
            return same_shape
        perm = n.attrs.get("perm")
        return perm is not None and list(perm) == sorted(perm)
    return False


@register_pass("simplify", "after_import")
def simplify(mod: Module) -> Module:
    main = mod.main
    mapping: dict[Value, Value] = {}
    producer: dict[Value, Node] = {}
    nodes: list[Node] = []
    graph_outputs = {id(v) for v in main.outputs}
    for n in main.nodes:
        n = n.with_(inputs=tuple(mapping.get(v, v) for v in n.inputs))
        if _is_noop(n) and id(n.outputs[0]) not in graph_outputs:
            mapping[n.outputs[0]] = n.inputs[0]
            continue
        src = producer.get(n.inputs[0]) if n.inputs else None
        if n.op == "reshape" and src is not None and src.op == "reshape":
            n = n.with_(inputs=src.inputs)  # reshape(reshape(x)) -> reshape(x); the inner one may die
        nodes.append(n)
        for o in n.outputs:
            producer[o] = n
    outputs = tuple(mapping.get(v, v) for v in main.outputs)
    return mod.with_function(main.with_(nodes=tuple(nodes), outputs=outputs))
