"""Graph patterns: small trees of operators that a rewrite (:mod:`kiln.transform.dispatch`) looks for.

    from kiln.transform.patterns import op, var, const

    conv_bias_relu = op("relu", op("add", op("conv2d", var("x"), const("w")), const("b")))
    matmul_nt = op("matmul", var("a"), op("transpose", var("b"), perm=[1, 0]))

A pattern matches a value by following producers upward: ``op(name, *inputs, **attrs)`` a node of that
operator (a tuple of names: any of them) whose inputs match ``inputs`` in order (no inputs given: any inputs)
and whose attributes equal ``attrs`` (or satisfy them, for a callable); ``var(name)`` any value,
``const(name)`` a constant; ``p | q`` either. Names bind what they matched: ``m["x"]`` is the value,
``m.node("conv")`` the node of ``op(..., bind="conv")``; a name used twice must bind the same value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..ir import Constant, Node, Value, Var


class Pattern:
    def __or__(self, other: Pattern) -> Pattern:
        return Alt((self, other))

    def match_value(self, v: Value, st: _State) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Op(Pattern):
    ops: tuple[str, ...]
    inputs: tuple[Pattern, ...] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    bind: str | None = None
    where: Callable[[Node], bool] | None = None

    def match_value(self, v: Value, st: _State) -> bool:
        n = st.producers.get(id(v)) if isinstance(v, Var) else None
        return n is not None and self.match_node(n, st)

    def match_node(self, n: Node, st: _State) -> bool:
        if n.op not in self.ops or id(n) in st.taken:
            return False
        for k, want in self.attrs.items():
            have = n.attrs.get(k)
            if callable(want):
                if not want(have):
                    return False
            elif _norm(have) != _norm(want):
                return False
        if self.where is not None and not self.where(n):
            return False
        if self.inputs is not None:
            if len(self.inputs) != len(n.inputs):
                return False
            for p, v in zip(self.inputs, n.inputs, strict=True):
                if not p.match_value(v, st):
                    return False
        if self.bind is not None:
            if st.nodes.get(self.bind, n) is not n:
                return False
            st.nodes[self.bind] = n
        st.matched.append(n)
        return True


@dataclass(frozen=True, eq=False)
class Bind(Pattern):
    """Any value (``const_only``: a constant), bound to ``name`` when it has one."""

    name: str | None = None
    const_only: bool = False

    def match_value(self, v: Value, st: _State) -> bool:
        if self.const_only and not isinstance(v, Constant):
            return False
        if self.name is None:
            return True
        if self.name in st.values:
            return st.values[self.name] is v
        st.values[self.name] = v
        return True


@dataclass(frozen=True, eq=False)
class Alt(Pattern):
    options: tuple[Pattern, ...]

    def __or__(self, other: Pattern) -> Pattern:
        return Alt((*self.options, other))

    def match_value(self, v: Value, st: _State) -> bool:
        for p in self.options:
            trial = st.copy()
            if p.match_value(v, trial):
                st.restore(trial)
                return True
        return False


def op(
    name: str | Sequence[str],
    *inputs: Pattern,
    bind: str | None = None,
    where: Callable[[Node], bool] | None = None,
    **attrs: Any,
) -> Op:
    """A node of operator ``name`` (or any of several) with ``inputs`` (none given: any inputs)."""
    ops = (name,) if isinstance(name, str) else tuple(name)
    return Op(ops, tuple(inputs) if inputs else None, dict(attrs), bind, where)


def var(name: str | None = None) -> Pattern:
    """Any value (an input, a node's result or a constant)."""
    return Bind(name)


def const(name: str | None = None) -> Pattern:
    """A constant (weights)."""
    return Bind(name, const_only=True)


def _norm(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_norm(x) for x in v)
    return v


@dataclass
class _State:
    producers: dict[int, Node]
    taken: set[int]
    values: dict[str, Value] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    matched: list[Node] = field(default_factory=list)

    def copy(self) -> _State:
        return _State(self.producers, self.taken, dict(self.values), dict(self.nodes), list(self.matched))

    def restore(self, other: _State) -> None:
        self.values, self.nodes, self.matched = other.values, other.nodes, other.matched


@dataclass
class Match:
    """A match of a pattern rooted at node ``root``: ``nodes`` are every matched node (root last), ``m[name]``
    a bound value, :meth:`node` a bound node; ``target`` is the module's target (or None)."""

    root: Node
    nodes: list[Node]
    values: dict[str, Value]
    bound_nodes: dict[str, Node]
    target: Any = None

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def get(self, name: str, default: Value | None = None) -> Value | None:
        return self.values.get(name, default)

    def node(self, name: str) -> Node:
        return self.bound_nodes[name]

    @property
    def outputs(self) -> tuple[Var, ...]:
        return self.root.outputs

    @property
    def inputs(self) -> list[Value]:
        """The values the matched nodes read from outside the match, in first-use order."""
        inner = {id(o) for n in self.nodes for o in n.outputs}
        out: list[Value] = []
        for n in self.nodes:
            for v in n.inputs:
                if id(v) not in inner and all(x is not v for x in out):
                    out.append(v)
        return out


def match_at(
    pattern: Op, root: Node, producers: dict[int, Node], taken: set[int], target: Any = None
) -> Match | None:
    """Match ``pattern`` with its root at node ``root`` (``taken``: ids of nodes already rewritten)."""
    st = _State(producers, taken)
    if not pattern.match_node(root, st):
        return None
    order = {id(n): i for i, n in enumerate(producers_order(producers))}
    nodes = sorted({id(n): n for n in st.matched}.values(), key=lambda n: order.get(id(n), 0))
    return Match(root, nodes, st.values, st.nodes, target)


def producers_order(producers: dict[int, Node]) -> list[Node]:
    seen: dict[int, Node] = {}
    for n in producers.values():
        seen.setdefault(id(n), n)
    return list(seen.values())


__all__ = ["Match", "Op", "Pattern", "const", "match_at", "op", "var"]
