"""Structural equality of modules and functions: what a text round trip preserves.

Two modules are equal when they have the same functions, in the same order and under the same names, and
equal attributes. Everything is compared by structure and value, never by object identity or uid:

* graph functions: parameters, nodes (operator, node name, attributes, inputs, results) and outputs in
  order; variables by name and type, and each use must refer to the corresponding definition (so two
  distinct variables of the same name stay distinct); constants by name and value (dtype, shape and
  elements; NaNs equal NaNs, but -0.0 is not 0.0), wherever they are shared or not;
* tensor functions: parameters (buffers by name, shape, dtype, strides and scope), output count, attributes
  and the body; loop variables and buffers by binding, as above; a nested ``Seq`` is the same as its
  statements spliced into the enclosing one (the nesting means nothing);
* attributes: dictionaries as mappings (order ignored); lists, tuples, ints, floats, bools, strings, NumPy
  arrays and scalars by type and value; nested graph functions (a fused node's body) recursively; records
  (dataclasses) field by field; the ``memory_plan`` attribute with its uids read as the values they name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .graph import Constant, GraphFunction, Var
from .module import Module
from .printer import module_attrs_with_refs
from .tensor import (
    Allocate,
    BinOp,
    Buffer,
    Call,
    Cast,
    Expr,
    FloatImm,
    For,
    IfThenElse,
    IntImm,
    Load,
    LoopVar,
    Select,
    Seq,
    Stmt,
    Store,
    TensorFunction,
    const,
)


class _Diff(Exception):
    pass


def _float_eq(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and elements (NaN equals NaN; the sign of zero counts)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b)))
    return bool(np.array_equal(a, b))


def _key(x: Any) -> tuple[str, int]:
    """Graph values and tensor-level objects count their uids separately."""
    return ("g" if isinstance(x, Var | Constant) else "t", x.uid)


def _flat(s: Stmt) -> list[Stmt]:
    if isinstance(s, Seq):
        return [x for st in s.stmts for x in _flat(st)]
    return [s]


class _Cmp:
    def __init__(self) -> None:
        self.vars: dict[tuple[str, int], Any] = {}  # uid in a -> object in b (graph vars, loop vars, buffers)

    def fail(self, path: str, msg: str) -> None:
        raise _Diff(f"{path}: {msg}")

    def bind(self, a: Any, b: Any) -> None:
        self.vars[_key(a)] = b

    def same_binding(self, a: Any, b: Any, path: str, what: str) -> None:
        got = self.vars.get(_key(a))
        if got is None:
            if a.uid != b.uid:  # both unbound (invalid IR): the same object or nothing
                self.fail(path, f"{what} {a.name} is not defined in this scope")
        elif got.uid != b.uid:  # by uid: a buffer view (another shape of the same memory) keeps its uid
            self.fail(path, f"{what} {a.name} refers to another definition than {b.name}")
        if isinstance(a, Buffer) and (a.name, a.shape, a.dtype, a.strides, a.scope) != (
            b.name,
            b.shape,
            b.dtype,
            b.strides,
            b.scope,
        ):
            self.fail(path, f"buffer view {a!r} (strides {a.strides}) != {b!r} (strides {b.strides})")

    # modules and graphs ----------------------------------------------------------------------------------
    def module(self, a: Module, b: Module) -> None:
        if list(a.functions) != list(b.functions):
            self.fail("module", f"functions {list(a.functions)} != {list(b.functions)}")
        for k in a.functions:
            fa, fb = a.functions[k], b.functions[k]
            self.function(fa, fb, k)
        ma, mb = a.functions.get("main"), b.functions.get("main")
        ga = ma if isinstance(ma, GraphFunction) else None
        gb = mb if isinstance(mb, GraphFunction) else None
        self.attrs(module_attrs_with_refs(a.attrs, ga), module_attrs_with_refs(b.attrs, gb), "module attrs")

    def function(self, a: Any, b: Any, path: str) -> None:
        if type(a) is not type(b):
            self.fail(path, f"{type(a).__name__} != {type(b).__name__}")
        if isinstance(a, GraphFunction):
            self.graph(a, b, path)
        else:
            self.tensor(a, b, path)

    def var_def(self, a: Var, b: Var, path: str) -> None:
        if a.name != b.name or a.type != b.type:
            self.fail(path, f"%{a.name}: {a.type} != %{b.name}: {b.type}")
        self.bind(a, b)

    def value(self, a: Any, b: Any, path: str) -> None:
        if isinstance(a, Constant):
            if not isinstance(b, Constant):
                self.fail(path, f"@{a.name} != {b!r}")
            if a.name != b.name or not arrays_equal(np.asarray(a.data), np.asarray(b.data)):
                self.fail(path, f"constant @{a.name} {a.type} != @{b.name} {b.type} (or its data differs)")
        elif isinstance(a, Var):
            if not isinstance(b, Var):
                self.fail(path, f"%{a.name} != {b!r}")
            if a.name != b.name or a.type != b.type:
                self.fail(path, f"%{a.name}: {a.type} != %{b.name}: {b.type}")
            self.same_binding(a, b, path, "value")
        else:
            self.fail(path, f"not a value: {a!r}")

    def graph(self, a: GraphFunction, b: GraphFunction, path: str) -> None:
        path = f"graph {a.name}"
        if a.name != b.name:
            self.fail(path, f"name {a.name!r} != {b.name!r}")
        if len(a.params) != len(b.params):
            self.fail(path, f"{len(a.params)} params != {len(b.params)}")
        for pa, pb in zip(a.params, b.params, strict=True):
            self.var_def(pa, pb, f"{path} params")
        self.attrs(a.attrs, b.attrs, f"{path} attrs")
        if len(a.nodes) != len(b.nodes):
            self.fail(path, f"{len(a.nodes)} nodes != {len(b.nodes)}")
        for i, (na, nb) in enumerate(zip(a.nodes, b.nodes, strict=True)):
            where = f"{path} node {i} ({na.op} {na.name!r})"
            if na.op != nb.op or na.name != nb.name:
                self.fail(where, f"{na.op} {na.name!r} != {nb.op} {nb.name!r}")
            if len(na.inputs) != len(nb.inputs) or len(na.outputs) != len(nb.outputs):
                self.fail(where, "input or result counts differ")
            for va, vb in zip(na.inputs, nb.inputs, strict=True):
                self.value(va, vb, where)
            self.attrs(na.attrs, nb.attrs, f"{where} attrs")
            for va, vb in zip(na.outputs, nb.outputs, strict=True):
                self.var_def(va, vb, where)
        if len(a.outputs) != len(b.outputs):
            self.fail(path, f"{len(a.outputs)} outputs != {len(b.outputs)}")
        for va, vb in zip(a.outputs, b.outputs, strict=True):
            self.value(va, vb, f"{path} return")

    # attributes ------------------------------------------------------------------------------------------
    def attrs(self, a: dict[str, Any], b: dict[str, Any], path: str) -> None:
        self.attr(a, b, path)

    def attr(self, a: Any, b: Any, path: str) -> None:
        if isinstance(a, Var | Constant) or isinstance(b, Var | Constant):
            self.value(a, b, path)
            return
        if type(a) is not type(b):
            self.fail(path, f"{a!r} ({type(a).__name__}) != {b!r} ({type(b).__name__})")
        if isinstance(a, dict):
            keys = {self.key(k, b): k for k in a}  # key in b -> key in a (values by their binding)
            if len(a) != len(b) or set(keys) != set(b):
                self.fail(path, f"keys {sorted(map(repr, a))} != {sorted(map(repr, b))}")
            for kb, ka in keys.items():
                self.attr(a[ka], b[kb], f"{path}[{ka!r}]")
        elif isinstance(a, list | tuple):
            if len(a) != len(b):
                self.fail(path, f"length {len(a)} != {len(b)}")
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                self.attr(x, y, f"{path}[{i}]")
        elif isinstance(a, float):
            if not _float_eq(a, b):
                self.fail(path, f"{a!r} != {b!r}")
        elif isinstance(a, np.ndarray):
            if not arrays_equal(a, b):
                self.fail(path, f"arrays differ ({a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)})")
        elif isinstance(a, np.generic):
            if not arrays_equal(np.asarray(a), np.asarray(b)):
                self.fail(path, f"{a!r} != {b!r}")
        elif isinstance(a, GraphFunction):
            self.graph(a, b, path)
        elif dataclasses.is_dataclass(a) and not isinstance(a, type) and not _has_eq(a):
            for f in dataclasses.fields(a):
                self.attr(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
        elif a != b:
            self.fail(path, f"{a!r} != {b!r}")

    def key(self, k: Any, b: dict[Any, Any]) -> Any:
        """The key of ``b`` that corresponds to key ``k`` of the other dict."""
        if isinstance(k, Var):
            return self.vars.get(_key(k), k)
        if isinstance(k, Constant):
            for kb in b:
                if isinstance(kb, Constant) and kb.name == k.name and arrays_equal(kb.data, k.data):
                    return kb
        return k

    # tensor functions ------------------------------------------------------------------------------------
    def buffer_def(self, a: Buffer, b: Buffer, path: str) -> None:
        if (a.name, a.shape, a.dtype, a.strides, a.scope) != (b.name, b.shape, b.dtype, b.strides, b.scope):
            self.fail(
                path,
                f"buffer {a!r} ({a.scope}, strides {a.strides}) != {b!r} ({b.scope}, strides {b.strides})",
            )
        self.bind(a, b)

    def tensor(self, a: TensorFunction, b: TensorFunction, path: str) -> None:
        path = f"tensor {a.name}"
        if a.name != b.name or a.num_outputs != b.num_outputs or len(a.params) != len(b.params):
            self.fail(path, "name, parameter count or output count differ")
        for x, y in zip(a.params, b.params, strict=True):
            self.buffer_def(x, y, f"{path} params")
        self.attrs(a.attrs, b.attrs, f"{path} attrs")
        self.stmt(a.body, b.body, path)

    def stmt(self, a: Stmt, b: Stmt, path: str) -> None:
        la, lb = _flat(a), _flat(b)
        if len(la) != len(lb):
            self.fail(path, f"{len(la)} statements != {len(lb)}")
        for i, (x, y) in enumerate(zip(la, lb, strict=True)):
            self.one_stmt(x, y, f"{path}/{i}")

    def one_stmt(self, a: Stmt, b: Stmt, path: str) -> None:
        if type(a) is not type(b):
            self.fail(path, f"{type(a).__name__} != {type(b).__name__}")
        if isinstance(a, For):
            assert isinstance(b, For)
            if a.kind != b.kind or a.var.name != b.var.name or a.var.dtype != b.var.dtype:
                self.fail(path, f"for {a.var.name} ({a.kind}) != for {b.var.name} ({b.kind})")
            self.expr(a.start, b.start, f"{path} start")
            self.expr(a.extent, b.extent, f"{path} extent")
            self.bind(a.var, b.var)
            self.stmt(a.body, b.body, f"{path}/for {a.var.name}")
        elif isinstance(a, Store):
            assert isinstance(b, Store)
            self.same_binding(a.buffer, b.buffer, path, "buffer")
            self.exprs(a.indices, b.indices, path)
            self.expr(a.value, b.value, path)
        elif isinstance(a, IfThenElse):
            assert isinstance(b, IfThenElse)
            self.expr(a.cond, b.cond, f"{path} if")
            self.stmt(a.then, b.then, f"{path}/then")
            if (a.else_ is None) != (b.else_ is None):
                self.fail(path, "one has an else branch")
            if a.else_ is not None and b.else_ is not None:
                self.stmt(a.else_, b.else_, f"{path}/else")
        elif isinstance(a, Allocate):
            assert isinstance(b, Allocate)
            self.buffer_def(a.buffer, b.buffer, path)
            self.stmt(a.body, b.body, f"{path}/alloc {a.buffer.name}")
        else:
            self.fail(path, f"unknown statement {a!r}")

    def exprs(self, a: tuple[Expr, ...], b: tuple[Expr, ...], path: str) -> None:
        if len(a) != len(b):
            self.fail(path, f"{len(a)} indices != {len(b)}")
        for x, y in zip(a, b, strict=True):
            self.expr(x, y, path)

    def expr(self, a: Expr, b: Expr, path: str) -> None:
        a, b = const(a), const(b)  # a plain int index is the int64 literal
        if type(a) is not type(b) or a.dtype != b.dtype:
            self.fail(path, f"{type(a).__name__}:{a.dtype} != {type(b).__name__}:{b.dtype}")
        if isinstance(a, IntImm):
            if a.value != b.value:  # type: ignore[attr-defined]
                self.fail(path, f"{a.value} != {b.value}")  # type: ignore[attr-defined]
        elif isinstance(a, FloatImm):
            if not _float_eq(float(a.value), float(b.value)):  # type: ignore[attr-defined]
                self.fail(path, f"{a.value!r} != {b.value!r}")  # type: ignore[attr-defined]
        elif isinstance(a, LoopVar):
            if a.name != b.name:  # type: ignore[attr-defined]
                self.fail(path, f"loop variable {a.name} != {b.name}")  # type: ignore[attr-defined]
            self.same_binding(a, b, path, "loop variable")
        elif isinstance(a, BinOp):
            assert isinstance(b, BinOp)
            if a.op != b.op:
                self.fail(path, f"{a.op} != {b.op}")
            self.expr(a.a, b.a, path)
            self.expr(a.b, b.b, path)
        elif isinstance(a, Call):
            assert isinstance(b, Call)
            if a.fn != b.fn:
                self.fail(path, f"{a.fn} != {b.fn}")
            self.exprs(a.args, b.args, path)
        elif isinstance(a, Select):
            assert isinstance(b, Select)
            self.exprs((a.cond, a.t, a.f), (b.cond, b.t, b.f), path)
        elif isinstance(a, Cast):
            assert isinstance(b, Cast)
            self.expr(a.value, b.value, path)
        elif isinstance(a, Load):
            assert isinstance(b, Load)
            self.same_binding(a.buffer, b.buffer, path, "buffer")
            self.exprs(a.indices, b.indices, path)
        else:
            self.fail(path, f"unknown expression {a!r}")


def _has_eq(x: Any) -> bool:
    """Records with a value ``==`` of their own (frozen dataclasses with eq) compare with it."""
    params = getattr(type(x), "__dataclass_params__", None)
    return bool(params and params.eq) and not any(
        isinstance(getattr(x, f.name), np.ndarray | GraphFunction | Var | Constant)
        for f in dataclasses.fields(x)
    )


def first_difference(
    a: Module | GraphFunction | TensorFunction, b: Module | GraphFunction | TensorFunction
) -> str | None:
    """Where ``a`` and ``b`` first differ structurally (a path and what differs), or None if they are equal."""
    c = _Cmp()
    try:
        if isinstance(a, Module):
            if not isinstance(b, Module):
                return f"a Module and a {type(b).__name__}"
            c.module(a, b)
        else:
            c.function(a, b, getattr(a, "name", "?"))
    except _Diff as e:
        return str(e)
    return None


def structural_equal(
    a: Module | GraphFunction | TensorFunction, b: Module | GraphFunction | TensorFunction
) -> bool:
    """True when ``a`` and ``b`` are the same IR up to object identity (see this module's docstring)."""
    return first_difference(a, b) is None


def assert_structural_equal(
    a: Module | GraphFunction | TensorFunction, b: Module | GraphFunction | TensorFunction
) -> None:
    """Raise AssertionError naming the first difference."""
    diff = first_difference(a, b)
    if diff is not None:
        raise AssertionError(f"IR differs: {diff}")


def expr_equal(a: Expr, b: Expr) -> bool:
    """Two expressions of the same scope are equal: same structure, the same loop variables and buffers."""
    c = _Cmp()
    try:
        c.expr(a, b, "expr")
    except _Diff:
        return False
    return True


__all__ = ["arrays_equal", "assert_structural_equal", "expr_equal", "first_difference", "structural_equal"]
