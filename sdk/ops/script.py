"""kiln script: tensor functions written as Python loop nests, and custom operators made from them.

    from kiln.ops import script

    @script.operator("rotary_embedding")
    def rotary_embedding(x, cos, sin, out):
        seq, dim = x.shape[-2], x.shape[-1]
        for b in range(x.shape[0]):
            for t in range(seq):
                for i in range(dim // 2):
                    a = x[b, t, 2 * i]
                    c = x[b, t, 2 * i + 1]
                    out[b, t, 2 * i] = a * cos[t, i] - c * sin[t, i]
                    out[b, t, 2 * i + 1] = a * sin[t, i] + c * cos[t, i]

The function's source is parsed (it is never run to build code) into kiln's tensor IR
(:mod:`kiln.ir.tensor`), once per call site, with the buffers' shapes and dtypes known: parameters are
buffers, inputs first, then outputs (destination-passing style, like ``call_tensor``); keyword-only parameters
are the operator's attributes. In the body:

* ``for i in range(n)`` / ``range(a, b)`` / ``range(a, b, step)``, ``script.grid(m, n)`` (a nest),
  ``script.vectorized(n)``, ``script.unrolled(n)``, ``script.parallel(n)``: loops;
* ``buf[i, j]`` loads, ``buf[i, j] = v`` and ``buf[i, j] += v`` stores; ``script.alloc(shape, dtype)`` a local
  scratch array;
* arithmetic (``+ - * / // % **``), comparisons, ``and``/``or``/``not``, ``a if c else b``, ``min``,
  ``max``, ``abs``, ``float(x)``/``int(x)``, ``script.cast(dtype, x)``, ``script.select(c, a, b)`` and math
  calls (``script.exp``, ``math.exp``, ``np.exp``, ... for exp, log, sqrt, tanh, erf, sigmoid, sin, cos, floor,
  ceil, round, pow);
* ``if`` on a value known at build time (a shape, an attribute) chooses code; on a run-time value it branches;
* a local name assigned once is a name for its expression; one assigned again (an accumulator) is a scalar
  variable;
* anything else that only involves build-time values (shapes, attributes, helper functions) is plain Python.

Because the body is also valid Python over NumPy arrays, the same function is its own reference: a
:class:`ScriptOp` without an explicit ``reference`` runs the function on the inputs (slowly, elementwise).

:func:`operator` registers a kiln operator (so ``GraphBuilder``, ONNX custom-domain nodes and the NumPy
interpreter see it), :func:`kernel` only makes a :class:`Kernel` whose :meth:`Kernel.tensor_function` can be
called from a graph with ``call_tensor`` or returned by a lowering override.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import itertools
import math
import operator as pyop
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.tensor import TensorFunction
from ..ir.types import TensorType, is_float, np_dtype
from .base import _REGISTRY, LowerContext, OpDef, OpError, elementwise_copy, register


class ScriptError(OpError):
    """A kernel uses Python kiln script does not translate; the message names the function and line."""


# ------------------------------------------------------------------------------- functions usable in a kernel
def _intrinsic(name: str, py: Callable[..., Any]) -> Callable[..., Any]:
    def f(*args: Any) -> Any:
        if any(isinstance(a, T.Expr) for a in args):
            return _math_call(name, list(args))
        return py(*args)

    f.__name__ = name
    f.kiln_intrinsic = name  # type: ignore[attr-defined]
    return f


def _sigmoid(x: Any) -> Any:
    return 1.0 / (1.0 + np.exp(-x))


exp = _intrinsic("exp", np.exp)
log = _intrinsic("log", np.log)
sqrt = _intrinsic("sqrt", np.sqrt)
tanh = _intrinsic("tanh", np.tanh)
erf = _intrinsic("erf", np.vectorize(math.erf, otypes=[np.float64]))
sigmoid = _intrinsic("sigmoid", _sigmoid)
sin = _intrinsic("sin", np.sin)
cos = _intrinsic("cos", np.cos)
floor = _intrinsic("floor", np.floor)
ceil = _intrinsic("ceil", np.ceil)
round = _intrinsic("round", np.round)  # noqa: A001 - the name users expect next to floor and ceil
pow = _intrinsic("pow", np.power)  # noqa: A001

_PY_INTRINSICS: dict[Any, str] = {
    math.exp: "exp",
    math.log: "log",
    math.sqrt: "sqrt",
    math.tanh: "tanh",
    math.erf: "erf",
    math.sin: "sin",
    math.cos: "cos",
    math.floor: "floor",
    math.ceil: "ceil",
    math.fabs: "abs",
    math.pow: "pow",
    np.exp: "exp",
    np.log: "log",
    np.sqrt: "sqrt",
    np.tanh: "tanh",
    np.sin: "sin",
    np.cos: "cos",
    np.floor: "floor",
    np.ceil: "ceil",
    np.abs: "abs",
    np.power: "pow",
}


def cast(dtype: str, x: Any) -> Any:
    """``x`` converted to ``dtype``."""
    if isinstance(x, T.Expr):
        return T.cast(dtype, x)
    return np_dtype(dtype).type(x)


def select(cond: Any, a: Any, b: Any) -> Any:
    """``a`` where ``cond`` holds, else ``b`` (both are evaluated)."""
    if isinstance(cond, T.Expr):
        a, b = _promote(a, b)
        return T.select(cond, a, b)
    return a if cond else b


def grid(*extents: int) -> Iterator[tuple[int, ...]]:
    """A loop nest over ``extents`` (in Python: every index tuple)."""
    return itertools.product(*(builtins.range(e) for e in extents))


def vectorized(n: int) -> range:
    """A loop that codegen emits as SIMD code (``For.kind == "vectorized"``)."""
    return builtins.range(n)


def unrolled(n: int) -> range:
    """A loop that codegen unrolls."""
    return builtins.range(n)


def parallel(n: int) -> range:
    """A loop whose iterations may run on worker threads."""
    return builtins.range(n)


def alloc(shape: Sequence[int] | int, dtype: str = "float32") -> np.ndarray:
    """A local scratch array (zeros in Python; uninitialized in generated code)."""
    return np.zeros(shape, np_dtype(dtype))


_LOOP_KINDS = {vectorized: "vectorized", unrolled: "unrolled", parallel: "parallel", builtins.range: "serial"}


def _math_call(name: str, args: list[Any]) -> T.Expr:
    exprs = [a for a in args if isinstance(a, T.Expr)]
    dtype = next((e.dtype for e in exprs if is_float(e.dtype)), "float32")
    conv = [T.cast(dtype, a) if isinstance(a, T.Expr) else T.const(float(a), dtype) for a in args]
    if name == "abs":
        return T.Call("abs", (conv[0],), dtype)
    return T.Call(name, tuple(conv), dtype)


def _promote(a: Any, b: Any) -> tuple[T.Expr, T.Expr]:
    """Two operands as expressions of one dtype: a float wins over an int; a Python number takes the other
    operand's dtype."""
    if not isinstance(a, T.Expr) and not isinstance(b, T.Expr):
        return T.const(a), T.const(b)
    if not isinstance(a, T.Expr):
        a = _const_like(a, b)  # type: ignore[arg-type]
    if not isinstance(b, T.Expr):
        b = _const_like(b, a)
    if a.dtype == b.dtype:
        return a, b
    if is_float(a.dtype) and not is_float(b.dtype):
        return a, T.cast(a.dtype, b)
    if is_float(b.dtype) and not is_float(a.dtype):
        return T.cast(b.dtype, a), b
    wider = a.dtype if np_dtype(a.dtype).itemsize >= np_dtype(b.dtype).itemsize else b.dtype
    return T.cast(wider, a), T.cast(wider, b)


def _const_like(v: Any, like: T.Expr) -> T.Expr:
    if isinstance(v, float | np.floating) and not is_float(like.dtype):
        return T.const(float(v), "float32")
    if isinstance(v, bool | np.bool_):
        return T.IntImm(int(v), "bool")
    return T.const(v.item() if isinstance(v, np.generic) else v, like.dtype)


# ------------------------------------------------------------------------------------------------- the parser
@dataclass
class _Mutable:
    """A local name assigned more than once: a 0-d local buffer."""

    name: str
    buffer: T.Buffer | None = None


class _Builder:
    def __init__(
        self, fn: Callable[..., Any], tree: ast.FunctionDef, env: dict[str, Any], where: str
    ) -> None:
        self.fn = fn
        self.tree = tree
        self.env = env
        self.where = where
        self.globals = {**fn.__globals__, **inspect.getclosurevars(fn).nonlocals}
        self.locals: list[T.Buffer] = []
        self.loop_names = itertools.count()
        counts: dict[str, int] = {}
        stored: set[str] = set()
        loop_targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        counts[t.id] = counts.get(t.id, 0) + 1
                    elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                        stored.add(t.value.id)
            elif isinstance(node, ast.AugAssign):
                if isinstance(node.target, ast.Name):
                    counts[node.target.id] = counts.get(node.target.id, 0) + 2
                elif isinstance(node.target, ast.Subscript) and isinstance(node.target.value, ast.Name):
                    stored.add(node.target.value.id)
            elif isinstance(node, ast.For):
                loop_targets |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
        self.mutable = {n for n, c in counts.items() if c > 1} - loop_targets
        self.stored = stored  # names of buffers the kernel writes
        self.stored_locals: set[int] = set()  # script.alloc buffers bound to such a name (by buffer uid)

    def fail(self, node: ast.AST, msg: str) -> ScriptError:
        line = getattr(node, "lineno", 0) + self.tree.lineno - 1
        return ScriptError(f"{self.where}, line {line}: {msg}")

    # -------------------------------------------------------------------------------------------- statements
    def body(self, stmts: Sequence[ast.stmt]) -> list[T.Stmt]:
        out: list[T.Stmt] = []
        for s in stmts:
            r = self.stmt(s)
            if r is not None:
                out.append(r)
        return out

    def stmt(self, s: ast.stmt) -> T.Stmt | None:
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
            return None  # a docstring
        if isinstance(s, ast.Pass):
            return None
        if isinstance(s, ast.Return) and s.value is None:
            return None
        if isinstance(s, ast.For):
            return self.for_(s)
        if isinstance(s, ast.If):
            cond = self.expr(s.test)
            if not isinstance(cond, T.Expr):
                return (
                    T.seq(self.body(s.body if cond else s.orelse)) if (s.body if cond else s.orelse) else None
                )
            then = T.seq(self.body(s.body))
            other = T.seq(self.body(s.orelse)) if s.orelse else None
            return T.IfThenElse(cond, then, other)
        if isinstance(s, ast.Assign):
            if len(s.targets) != 1:
                raise self.fail(s, "assign one target at a time")
            return self.assign(s.targets[0], self.expr(s.value), s)
        if isinstance(s, ast.AugAssign):
            op = _BINOPS.get(type(s.op))
            if op is None:
                raise self.fail(s, f"operator {type(s.op).__name__} is not supported")
            current = self.expr(_load_of(s.target))
            return self.assign(s.target, self.binop(op, current, self.expr(s.value), s), s)
        raise self.fail(s, f"{type(s).__name__} statements are not supported in a kernel")

    def assign(self, target: ast.expr, value: Any, s: ast.stmt) -> T.Stmt | None:
        if isinstance(target, ast.Subscript):
            buf = self.expr(target.value)
            if not isinstance(buf, T.Buffer):
                raise self.fail(s, "only buffers can be stored to")
            idx = self.indices(target.slice, buf, s)
            v = value if isinstance(value, T.Expr) else _const_like(value, T.IntImm(0, buf.dtype))
            return T.Store(buf, idx, v)
        if isinstance(target, ast.Tuple):
            if not isinstance(value, tuple) or len(value) != len(target.elts):
                raise self.fail(s, "tuple assignment needs a tuple of the same length")
            return (
                T.seq([x for t, v in zip(target.elts, value, strict=True) if (x := self.assign(t, v, s))])
                or None
            )
        if not isinstance(target, ast.Name):
            raise self.fail(s, f"cannot assign to {type(target).__name__}")
        name = target.id
        stored_load = isinstance(value, T.Expr) and any(
            isinstance(e, T.Load) and (e.buffer.name in self.stored or e.buffer.uid in self.stored_locals)
            for e in T.walk_exprs(value)
        )
        if name in self.mutable or stored_load:
            cur = self.env.get(name)
            if not isinstance(cur, _Mutable):
                cur = _Mutable(name)
                self.env[name] = cur
            if cur.buffer is None:
                dtype = (
                    value.dtype
                    if isinstance(value, T.Expr)
                    else ("float32" if isinstance(value, float) else "int64")
                )
                cur.buffer = T.Buffer(name, (), dtype, scope="local")
                self.locals.append(cur.buffer)
            v = value if isinstance(value, T.Expr) else _const_like(value, T.IntImm(0, cur.buffer.dtype))
            return T.Store(cur.buffer, (), v)
        if isinstance(value, T.Buffer) and name in self.stored:  # a scratch array the kernel writes: a value
            self.stored_locals.add(value.uid)  # read from it is taken when it is read, not when used
        self.env[name] = value
        return None

    def for_(self, s: ast.For) -> T.Stmt:
        if s.orelse:
            raise self.fail(s, "for ... else is not supported")
        if not isinstance(s.iter, ast.Call):
            raise self.fail(
                s, "loop over range(...), script.grid(...) or script.vectorized/unrolled/parallel(...)"
            )
        fn = self.expr(s.iter.func)
        args = [self.expr(a) for a in s.iter.args]
        if fn is grid:
            names = [t.id for t in s.target.elts] if isinstance(s.target, ast.Tuple) else []  # type: ignore[attr-defined]
            if len(names) != len(args):
                raise self.fail(s, "for i, j in script.grid(m, n): one name per extent")
            return self._nest(list(zip(names, args, strict=True)), s)
        kind = _LOOP_KINDS.get(fn)
        if kind is None:
            raise self.fail(
                s, "loop over range(...), script.grid(...) or script.vectorized/unrolled/parallel(...)"
            )
        if not isinstance(s.target, ast.Name):
            raise self.fail(s, "the loop variable must be one name")
        start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
        if not isinstance(step, int) or step == 0:
            raise self.fail(s, "a range step must be a non-zero integer known when the kernel is built")
        if step != 1 and not (isinstance(start, int) and isinstance(stop, int)):
            raise self.fail(s, "a range with a step needs bounds known when the kernel is built")
        if step != 1:
            extent: Any = len(builtins.range(start, stop, step))
        else:
            extent = (
                stop - start
                if not isinstance(stop, int) or not isinstance(start, int)
                else max(0, stop - start)
            )
        var = T.LoopVar(f"{s.target.id}")
        saved = self.env.get(s.target.id, _MISSING)
        self.env[s.target.id] = var if step == 1 else start + var * step
        body = T.seq(self.body(s.body))
        _restore(self.env, s.target.id, saved)
        return T.For(var, T.const(extent), body, kind, T.const(start) if step == 1 else T.IntImm(0))

    def _nest(self, dims: list[tuple[str, Any]], s: ast.For) -> T.Stmt:
        vars_ = [T.LoopVar(n) for n, _ in dims]
        saved = {n: self.env.get(n, _MISSING) for n, _ in dims}
        for (n, _), v in zip(dims, vars_, strict=True):
            self.env[n] = v
        stmt = T.seq(self.body(s.body))
        for n, old in saved.items():
            _restore(self.env, n, old)
        for (_, ext), v in zip(reversed(dims), reversed(vars_), strict=True):
            stmt = T.For(v, T.const(ext), stmt)
        return stmt

    def indices(self, sl: ast.expr, buf: T.Buffer, s: ast.AST) -> tuple[T.Expr, ...]:
        items = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        if len(items) == 1 and isinstance(items[0], ast.Tuple) and not items[0].elts:
            items = []
        idx = []
        for it in items:
            v = self.expr(it)
            if isinstance(v, T.Expr):
                if is_float(v.dtype):
                    raise self.fail(s, f"index of {buf.name} is a float ({v.dtype}); use int(...) or //")
                idx.append(v if v.dtype == "int64" else T.cast("int64", v))
            elif isinstance(v, int | np.integer):
                d = len(idx)
                if d < buf.ndim and not -buf.shape[d] <= int(v) < buf.shape[d]:
                    raise self.fail(s, f"index {int(v)} is out of bounds for dimension {d} of {buf!r}")
                idx.append(T.IntImm(int(v) % buf.shape[d] if d < buf.ndim else int(v)))
            else:
                raise self.fail(s, f"index {v!r} of {buf.name} is not an integer")
        if len(idx) != buf.ndim:
            raise self.fail(s, f"{buf.name} has {buf.ndim} dimensions, indexed with {len(idx)}")
        return tuple(idx)

    # ------------------------------------------------------------------------------------------- expressions
    def expr(self, e: ast.expr) -> Any:  # noqa: C901 - one dispatch over expression kinds
        if isinstance(e, ast.Constant):
            return e.value
        if isinstance(e, ast.Name):
            return self.name(e)
        if isinstance(e, ast.Attribute):
            base = self.expr(e.value)
            if isinstance(base, T.Expr):
                raise self.fail(e, f"{e.attr!r} of a run-time value")
            return getattr(base, e.attr)
        if isinstance(e, ast.Subscript):
            base = self.expr(e.value)
            if isinstance(base, T.Buffer):
                return T.Load(base, self.indices(e.slice, base, e))
            return base[self.expr(e.slice)]
        if isinstance(e, ast.Tuple | ast.List):
            return tuple(self.expr(x) for x in e.elts)
        if isinstance(e, ast.BinOp):
            op = _BINOPS.get(type(e.op))
            if op is None:
                raise self.fail(e, f"operator {type(e.op).__name__} is not supported")
            return self.binop(op, self.expr(e.left), self.expr(e.right), e)
        if isinstance(e, ast.UnaryOp):
            v = self.expr(e.operand)
            if isinstance(e.op, ast.USub):
                return -v
            if isinstance(e.op, ast.UAdd):
                return v
            if isinstance(e.op, ast.Not):
                return v.eq(T.IntImm(0, v.dtype)) if isinstance(v, T.Expr) else not v
            raise self.fail(e, f"operator {type(e.op).__name__} is not supported")
        if isinstance(e, ast.Compare):
            return self.compare(e)
        if isinstance(e, ast.BoolOp):
            vals = [self.expr(x) for x in e.values]
            if not any(isinstance(v, T.Expr) for v in vals):
                return all(vals) if isinstance(e.op, ast.And) else any(vals)
            conds = [v if isinstance(v, T.Expr) else T.IntImm(int(bool(v)), "bool") for v in vals]
            out = conds[0]
            for c in conds[1:]:
                out = T.BinOp("and" if isinstance(e.op, ast.And) else "or", out, c)
            return out
        if isinstance(e, ast.IfExp):
            c = self.expr(e.test)
            if not isinstance(c, T.Expr):
                return self.expr(e.body if c else e.orelse)
            return select(c, self.expr(e.body), self.expr(e.orelse))
        if isinstance(e, ast.Call):
            return self.call(e)
        raise self.fail(e, f"{type(e).__name__} expressions are not supported in a kernel")

    def name(self, e: ast.Name) -> Any:
        if e.id in self.env:
            v = self.env[e.id]
            if isinstance(v, _Mutable):
                if v.buffer is None:
                    raise self.fail(e, f"{e.id!r} is used before it is assigned")
                return T.Load(v.buffer, ())
            return v
        if e.id in self.globals:
            return self.globals[e.id]
        if hasattr(builtins, e.id):
            return getattr(builtins, e.id)
        raise self.fail(e, f"name {e.id!r} is not defined")

    def binop(self, op: str, a: Any, b: Any, node: ast.AST) -> Any:
        if not isinstance(a, T.Expr) and not isinstance(b, T.Expr):
            return _PY_BINOPS[op](a, b)
        a, b = _promote(a, b)
        if op == "/" and not is_float(a.dtype):
            raise self.fail(node, "'/' on integers: use '//' (or float(...) for a float result)")
        if op == "**":
            return _math_call("pow", [a, b])
        return a._bin(op, b)

    def compare(self, e: ast.Compare) -> Any:
        left = self.expr(e.left)
        out: Any = True
        for o, right_node in zip(e.ops, e.comparators, strict=True):
            right = self.expr(right_node)
            name = _CMPOPS.get(type(o))
            if name is None:
                raise self.fail(e, f"comparison {type(o).__name__} is not supported")
            if isinstance(left, T.Expr) or isinstance(right, T.Expr):
                a, b = _promote(left, right)
                c: Any = T.BinOp(name, a, b)
            else:
                c = _PY_CMPOPS[name](left, right)
            if out is True:
                out = c
            elif isinstance(out, T.Expr) or isinstance(c, T.Expr):
                out = T.BinOp("and", _as_bool(out), _as_bool(c))
            else:
                out = out and c
            left = right
        return out

    def call(self, e: ast.Call) -> Any:
        fn = self.expr(e.func)
        args = [self.expr(a) for a in e.args]
        kwargs = {k.arg: self.expr(k.value) for k in e.keywords if k.arg}
        symbolic = any(isinstance(a, T.Expr) for a in [*args, *kwargs.values()])
        if fn is alloc:
            shape = args[0] if args else kwargs["shape"]
            dtype = args[1] if len(args) > 1 else kwargs.get("dtype", "float32")
            shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
            buf = T.Buffer(f"local{len(self.locals)}", shape, dtype, scope="local")
            self.locals.append(buf)
            return buf
        name = getattr(fn, "kiln_intrinsic", None) or _PY_INTRINSICS.get(fn)
        if name is not None and symbolic:
            return _math_call(name, args)
        if fn in (builtins.min, builtins.max) and symbolic:
            out = args[0]
            for b in args[1:]:
                x, y = _promote(out, b)
                out = T.minimum(x, y) if fn is builtins.min else T.maximum(x, y)
            return out
        if fn is builtins.abs and symbolic:
            return _math_call("abs", args)
        if fn is builtins.float and symbolic:
            return T.cast("float32", args[0])
        if fn is builtins.int and symbolic:
            return T.cast("int64", args[0])
        if fn in (cast, select):
            return fn(*args, **kwargs)
        if symbolic:
            raise self.fail(
                e, f"{getattr(fn, '__name__', fn)!r} cannot be called on run-time values in a kernel"
            )
        return fn(*args, **kwargs)


def _as_bool(v: Any) -> T.Expr:
    return v if isinstance(v, T.Expr) else T.IntImm(int(bool(v)), "bool")


_MISSING = object()


def _restore(env: dict[str, Any], name: str, old: Any) -> None:
    if old is _MISSING:
        env.pop(name, None)
    else:
        env[name] = old


def _load_of(target: ast.expr) -> ast.expr:
    if isinstance(target, ast.Subscript):
        return ast.Subscript(target.value, target.slice, ast.Load(), lineno=target.lineno, col_offset=0)
    if isinstance(target, ast.Name):
        return ast.Name(target.id, ast.Load(), lineno=target.lineno, col_offset=0)
    return target


_BINOPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_PY_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": pyop.add,
    "-": pyop.sub,
    "*": pyop.mul,
    "/": pyop.truediv,
    "//": pyop.floordiv,
    "%": pyop.mod,
    "**": pyop.pow,
}
_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_PY_CMPOPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": pyop.lt,
    "<=": pyop.le,
    ">": pyop.gt,
    ">=": pyop.ge,
    "==": pyop.eq,
    "!=": pyop.ne,
}


# ------------------------------------------------------------------------------------------ kernels, operators
class Kernel:
    """A Python loop nest (see the module doc). :meth:`build` gives its tensor IR for given buffers."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        self.__qualname__ = fn.__qualname__
        sig = inspect.signature(fn)
        self.buffer_params = [
            p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self.attr_params = {p.name: p.default for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY}
        self._tree: ast.FunctionDef | None = None

    def _parse(self) -> ast.FunctionDef:
        if self._tree is None:
            try:
                lines, first = inspect.getsourcelines(self.fn)
            except OSError as e:
                raise ScriptError(f"kernel {self.__name__}: its source is not available ({e})") from e
            tree = ast.parse(textwrap.dedent("".join(lines)))
            fdef = tree.body[0]
            if not isinstance(fdef, ast.FunctionDef):
                raise ScriptError(f"kernel {self.__name__}: not a function definition")
            fdef.lineno = first  # line numbers in messages are the file's
            self._tree = fdef
        return self._tree

    def attrs_for(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(attrs) - set(self.attr_params))
        if unknown:
            raise OpError(
                f"kernel {self.__name__} has no attribute(s) {unknown}; its attributes are "
                f"{sorted(self.attr_params) or 'none'} (keyword-only parameters)"
            )
        out = {}
        for k, default in self.attr_params.items():
            if k in attrs:
                out[k] = attrs[k]
            elif default is inspect.Parameter.empty:
                raise OpError(f"kernel {self.__name__} needs attribute {k!r}")
            else:
                out[k] = default
        return out

    def build(
        self, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any] | None = None
    ) -> T.Stmt:
        """The loop nest over buffers ``ins`` then ``outs``."""
        bufs = [*ins, *outs]
        if len(bufs) != len(self.buffer_params):
            raise OpError(
                f"kernel {self.__name__} takes {len(self.buffer_params)} buffers "
                f"({', '.join(self.buffer_params)}), got {len(ins)} inputs and {len(outs)} outputs"
            )
        env: dict[str, Any] = dict(zip(self.buffer_params, bufs, strict=True))
        env.update(self.attrs_for(dict(attrs or {})))
        tree = self._parse()
        b = _Builder(self.fn, tree, env, f"kernel {self.__name__} ({inspect.getsourcefile(self.fn)})")
        body: T.Stmt = T.seq(b.body(tree.body)) if tree.body else T.Seq(())
        for buf in reversed(b.locals):
            body = T.Allocate(buf, body)
        return body

    def tensor_function(
        self,
        inputs: Sequence[TensorType | tuple[Sequence[int], str]],
        outputs: Sequence[TensorType | tuple[Sequence[int], str]],
        attrs: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> TensorFunction:
        """A tensor function of this kernel for inputs and outputs of the given types (or (shape, dtype))."""

        def buf(prefix: str, i: int, t: TensorType | tuple[Sequence[int], str]) -> T.Buffer:
            shape, dtype = (t.static_shape, t.dtype) if isinstance(t, TensorType) else (tuple(t[0]), t[1])
            return T.Buffer(f"{prefix}{i}", tuple(int(d) for d in shape), dtype)

        ins = [buf("in", i, t) for i, t in enumerate(inputs)]
        outs = [buf("out", j, t) for j, t in enumerate(outputs)]
        body = self.build(ins, outs, attrs)
        return TensorFunction(name or self.__name__, (*ins, *outs), body, len(outs), {"ops": [self.__name__]})

    def run(self, *arrays: np.ndarray, **attrs: Any) -> None:
        """Run the kernel as plain Python on NumPy arrays (inputs, then outputs, which it fills)."""
        self.fn(*arrays, **self.attrs_for(attrs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<kiln script kernel {self.__module__}.{self.__qualname__}>"


def kernel(fn: Callable[..., Any]) -> Kernel:
    """Decorator: a :class:`Kernel` from a Python loop nest."""
    return Kernel(fn)


class ScriptOp(OpDef):
    """A kiln operator whose lowering is a :class:`Kernel` (made by :func:`operator`)."""

    def __init__(
        self,
        name: str,
        k: Kernel,
        infer: Callable[..., Any] | None,
        reference: Callable[..., Any] | None,
        num_outputs: int,
        flops_per_element: int,
    ) -> None:
        self.name = name
        self.kernel = k
        self._infer = infer
        self._reference = reference
        self.num_outputs = num_outputs
        self.flops_per_element = flops_per_element
        self.__doc__ = k.__doc__
        self.__module__ = k.__module__
        self.__qualname__ = k.__qualname__

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        n_in = len(self.kernel.buffer_params) - self.num_outputs
        if len(inputs) != n_in:
            raise self.error(
                f"takes {n_in} inputs ({', '.join(self.kernel.buffer_params[:n_in])}), got {len(inputs)}"
            )
        if self._infer is None:
            return [inputs[0]] * self.num_outputs
        r = self._infer(*inputs, **self.kernel.attrs_for(attrs))
        return [r] if isinstance(r, TensorType) else list(r)

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        if self._reference is not None:
            r = self._reference(*inputs, **self.kernel.attrs_for(attrs))
            return [np.asarray(x) for x in (r if isinstance(r, list | tuple) else [r])]
        from ..ir.types import dtype_of

        types = self.infer([TensorType(tuple(x.shape), dtype_of(np.asarray(x))) for x in inputs], attrs)
        outs = [np.zeros(t.static_shape, np_dtype(t.dtype)) for t in types]
        self.kernel.run(*(np.asarray(x) for x in inputs), *outs, **attrs)
        return outs

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        if ctx.epilogue is None:
            return self.kernel.build(ins, outs, attrs)
        # fused with an elementwise epilogue: compute into scratch, then store through the epilogue
        tmp = T.Buffer(f"{ctx.name}_pre", outs[0].shape, outs[0].dtype, scope="workspace")
        body = self.kernel.build(ins, [tmp, *outs[1:]], attrs)
        return T.Allocate(tmp, T.seq(body, elementwise_copy(ctx, tmp, outs[0])))


def operator(
    name: str,
    infer: Callable[..., Any] | None = None,
    reference: Callable[..., Any] | None = None,
    num_outputs: int = 1,
    flops_per_element: int = 1,
) -> Callable[[Callable[..., Any]], ScriptOp]:
    """Decorator: register a kiln operator ``name`` lowered by the decorated kernel.

    ``infer(*input_types, **attrs)`` gives the result type(s) (default: each result like the first input);
    ``reference(*arrays, **attrs)`` the NumPy result(s) (default: run the kernel in Python)."""

    def deco(fn: Callable[..., Any]) -> ScriptOp:
        k = fn if isinstance(fn, Kernel) else Kernel(fn)
        op = ScriptOp(name, k, infer, reference, num_outputs, flops_per_element)
        old = _REGISTRY.get(name)
        if isinstance(old, ScriptOp) and old.kernel.__qualname__ == k.__qualname__:
            del _REGISTRY[name]  # the same kernel again (its module imported a second time, e.g. as a script)
        register(op)
        return op

    return deco


__all__ = [
    "Kernel",
    "ScriptError",
    "ScriptOp",
    "alloc",
    "cast",
    "ceil",
    "cos",
    "erf",
    "exp",
    "floor",
    "grid",
    "kernel",
    "log",
    "operator",
    "parallel",
    "pow",
    "round",
    "select",
    "sigmoid",
    "sin",
    "sqrt",
    "tanh",
    "unrolled",
    "vectorized",
]
