"""widen-float16: compute a half-precision model in float32.

kiln's kernels have no half-precision arithmetic on any target, and a float16 matrix product or reduction
that accumulates in float16 drifts far from the float32 result (a sum of 256 products is off by ~100 float16
steps). This pass makes every float16 value inside ``main`` a float32 one: float16 constants (weights) are
widened once at compile time, ``cast(to=float16)`` nodes cast to float32 instead, and every node's result
types are inferred again. The model's interface does not change: float16 inputs are cast to float32 on entry
and float16 outputs back to float16 on exit (the only rounding to half precision left). Nodes without an
operator definition (``call_tensor``/``call_extern`` kernels, whose buffers are fixed) and ``bitcast`` (whose
meaning is the bit pattern) keep their float16 operands and results.

Expects: graph-level operators in ``main`` (runs after fuse-qdq, before constant folding). Guarantees: no
float16 value inside ``main`` except at the interface and around the nodes above. Removes: nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Constant, Module, Node, Value, Var
from ..ir.types import TensorType
from ..ops import get_op, has_op
from .pipeline import register_pass

#: Operators whose float16 operands are not numbers (their bits matter): they keep float16.
KEEP_FLOAT16 = frozenset({"bitcast"})


def _is_half(v: Value) -> bool:
    return v.type.dtype == "float16"


def _attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = dict(attrs)
    if out.get("to") == "float16":
        out["to"] = "float32"
    for k, v in out.items():  # constant-valued attributes (constant_of_shape's value, ...)
        if isinstance(v, np.ndarray) and v.dtype == np.float16:
            out[k] = v.astype(np.float32)
    return out


@register_pass("widen-float16", "after_import")
def widen_float16(mod: Module) -> Module:
    main = mod.main
    touched = any(_is_half(v) for n in main.nodes for v in (*n.inputs, *n.outputs)) or any(
        _is_half(p) for p in main.params
    )
    if not touched:
        return mod
    nodes: list[Node] = []
    wide: dict[int, Value] = {}  # float16 value -> its float32 counterpart
    produced: set[int] = set()  # float16 results of nodes that now compute in float32
    narrow: dict[int, Value] = {}  # such a result -> a float16 copy, for the nodes that keep float16
    serial = iter(range(1 << 30))

    def cast(v: Value, to: str, name: str) -> Var:
        out = Var(f"{name}__{to}_{next(serial)}", TensorType(v.type.shape, to))
        nodes.append(Node("cast", (v,), (out,), {"to": to}, name))
        return out

    def widened(v: Value, where: str) -> Value:
        if not _is_half(v):
            return v
        if v.uid not in wide:
            wide[v.uid] = (
                Constant(v.name, v.data.astype(np.float32))
                if isinstance(v, Constant)
                else cast(v, "float32", where)
            )
        return wide[v.uid]

    def kept(v: Value, where: str) -> Value:
        if v.uid not in produced:
            return v
        if v.uid not in narrow:
            narrow[v.uid] = cast(wide[v.uid], "float16", where)
        return narrow[v.uid]

    for n in main.nodes:
        where = n.name or n.op
        if not has_op(n.op) or n.op in KEEP_FLOAT16:
            nodes.append(n.with_(inputs=tuple(kept(v, where) for v in n.inputs)))
            continue
        ins = tuple(widened(v, where) for v in n.inputs)
        attrs = _attrs(n.attrs)
        types = get_op(n.op).infer([v.type for v in ins], attrs)
        outs = tuple(o if o.type == t else Var(o.name, t) for o, t in zip(n.outputs, types, strict=True))
        for o, new in zip(n.outputs, outs, strict=True):
            if new is not o:
                wide[o.uid] = new
                produced.add(o.uid)
        nodes.append(n.with_(inputs=ins, outputs=outs, attrs=attrs))
    outputs: list[Value] = []
    for v in main.outputs:
        if v.uid not in produced:
            outputs.append(v)
            continue
        out = Var(v.name, v.type)  # back to float16 under the output's own name
        nodes.append(Node("cast", (wide[v.uid],), (out,), {"to": "float16"}, v.name))
        outputs.append(out)
    return mod.with_function(main.with_(nodes=tuple(nodes), outputs=tuple(outputs)))
