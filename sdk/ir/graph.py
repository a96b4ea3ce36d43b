"""Graph-level IR: a dataflow of operator calls on tensors.

A :class:`GraphFunction` has parameters (:class:`Var`), a list of :class:`Node` in topological order and a
list of outputs. A node applies an operator (from the registry in :mod:`kiln.ops`, or one of the special
operators below) to values and binds its results to fresh vars. Values are vars or :class:`Constant` (which
carry their NumPy data). Nodes are immutable; passes build new lists.

Special operators, which the IR itself defines:

* ``call_tensor``: ``attrs["func"]`` names a :class:`~kiln.ir.tensor.TensorFunction` in the same module; its
  parameters are the node's inputs followed by its outputs (destination-passing style, like Relax's call_tir).
* ``call_extern``: ``attrs["symbol"]`` names a C function linked into the package, with the same calling
  convention (``void symbol(T* in0, ..., T* out0, ...)``).
* ``view``: the output is the input reinterpreted with another shape (no data moves); created by legalize for
  reshapes and resolved by memory planning.
* ``fused``: a group made by fuse-ops; ``attrs["body"]`` is a graph function whose parameters stand for the
  node's inputs; legalize lowers it as one kernel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .types import TensorType, dtype_of

_ids = itertools.count()


@dataclass(frozen=True, eq=False)
class Var:
    """A named tensor value (a parameter or a node result). Identity is the object, not the name."""

    name: str
    type: TensorType
    uid: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"

    def with_type(self, t: TensorType) -> Var:
        return replace(self, type=t, uid=next(_ids))


@dataclass(frozen=True, eq=False)
class Constant:
    """A tensor known at compile time (weights). ``data`` must not be mutated."""

    name: str
    data: np.ndarray
    uid: int = field(default_factory=lambda: next(_ids))

    @property
    def type(self) -> TensorType:
        # an object array is a tensor of dimensions (int64 entries, some symbolic): shape arithmetic at import
        dtype = "int64" if self.data.dtype == object else dtype_of(self.data)
        return TensorType(tuple(int(d) for d in self.data.shape), dtype)

    def __repr__(self) -> str:
        return f"@{self.name}: {self.type}"


Value = Var | Constant


@dataclass(frozen=True, eq=False)
class Node:
    """``outputs = op(*inputs, **attrs)``. ``name`` is the source node name (kept for errors and profiles)."""

    op: str
    inputs: tuple[Value, ...]
    outputs: tuple[Var, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def with_(self, **changes: Any) -> Node:
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class GraphFunction:
    name: str
    params: tuple[Var, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Value, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> GraphFunction:
        return replace(self, **changes)

    def producers(self) -> dict[Var, Node]:
        return {v: n for n in self.nodes for v in n.outputs}

    def users(self) -> dict[Value, list[Node]]:
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(v, []).append(n)
        return out

    def constants(self) -> list[Constant]:
        seen: dict[int, Constant] = {}
        for n in self.nodes:
            for v in n.inputs:
                if isinstance(v, Constant):
                    seen.setdefault(v.uid, v)
        for v in self.outputs:
            if isinstance(v, Constant):
                seen.setdefault(v.uid, v)
        return list(seen.values())


def substitute(nodes: list[Node] | tuple[Node, ...], mapping: dict[Any, Value]) -> list[Node]:
    """Replace values in node inputs according to ``mapping`` (keyed by the value objects)."""
    if not mapping:
        return list(nodes)
    out = []
    for n in nodes:
        new_inputs = tuple(mapping.get(v, v) for v in n.inputs)
        out.append(n if new_inputs == n.inputs else n.with_(inputs=new_inputs))
    return out


def resolve(mapping: dict[Any, Value], v: Value) -> Value:
    """Follow a substitution chain to its end."""
    while v in mapping:
        v = mapping[v]
    return v
