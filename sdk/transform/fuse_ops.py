"""fuse-ops: fuse chains of elementwise operators into the operator that produces their input.

A group is an anchor (any single-result operator that is not a view) followed by elementwise operators
producing results of the anchor's shape (other operands may broadcast), each using an earlier result of the
group, where every result but the last is used only inside the group (and is not a graph output). The group
becomes one ``fused`` node whose ``attrs["body"]`` is a graph function holding the original nodes; legalize
lowers the anchor with the rest as its epilogue, so for example ``conv2d -> add(bias) -> add(residual) ->
relu`` is one loop nest that stores each output element once, and so is SiLU after a convolution,
``y = conv2d(x); y * sigmoid(y)``, whose ``mul`` reads the convolution's result a second time.

Expects: graph-level operators. Guarantees: results unchanged; a graph output is never fused away.
"""

from __future__ import annotations

from ..ir import GraphFunction, Module, Node, Var
from ..ops import get_op, has_op
from .pipeline import register_pass


def _kind(n: Node) -> str:
    return get_op(n.op).kind if has_op(n.op) else "special"


@register_pass("fuse-ops", "graph_opt")
def fuse_ops(mod: Module) -> Module:
    main = mod.main
    users = main.users()
    graph_outputs = {id(v) for v in main.outputs}
    groups: list[list[Node]] = []
    member: set[int] = set()
    order = {id(n): i for i, n in enumerate(main.nodes)}
    for n in main.nodes:
        if id(n) in member or len(n.outputs) != 1 or _kind(n) in ("view", "special"):
            continue
        chain = [n]
        inside = {id(n)}
        closed = 1  # the longest prefix of the chain whose inner results are used only inside it
        while id(chain[-1].outputs[0]) not in graph_outputs:
            pending = [u for c in chain for u in users.get(c.outputs[0], []) if id(u) not in inside]
            if not pending:
                break
            u = min(pending, key=lambda x: order[id(x)])  # the next user of any result of the chain
            if (
                id(u) in member
                or _kind(u) != "elementwise"
                or len(u.outputs) != 1
                or u.outputs[0].type.shape != n.outputs[0].type.shape
            ):
                break
            chain.append(u)
            inside.add(id(u))
            if all(id(x) in inside for c in chain[:-1] for x in users.get(c.outputs[0], [])):
                closed = len(chain)
        chain = chain[:closed]
        if len(chain) > 1:
            groups.append(chain)
            member.update(id(x) for x in chain)
    if not groups:
        return mod
    last = {id(g[-1]): g for g in groups}
    nodes: list[Node] = []
    for n in main.nodes:
        if id(n) in last:
            nodes.append(_fused_node(last[id(n)]))
        elif id(n) not in member:
            nodes.append(n)
    return mod.with_function(main.with_(nodes=tuple(nodes)))


def _fused_node(chain: list[Node]) -> Node:
    """One ``fused`` node for ``chain``. External vars become the body's params; constants stay in the body
    (legalize turns scalars into immediates and passes the others as buffers)."""
    inner = {id(o) for n in chain[:-1] for o in n.outputs}
    params: dict[int, Var] = {}
    ext: list[Var] = []
    for n in chain:
        for v in n.inputs:
            if isinstance(v, Var) and id(v) not in inner and id(v) not in params:
                params[id(v)] = Var(v.name, v.type)
                ext.append(v)
    body_nodes = tuple(n.with_(inputs=tuple(params.get(id(v), v) for v in n.inputs)) for n in chain)
    name = "_".join(n.op for n in chain)
    body = GraphFunction(name, tuple(params[id(v)] for v in ext), body_nodes, chain[-1].outputs)
    return Node("fused", tuple(ext), chain[-1].outputs, {"body": body}, name=chain[0].name or name)
