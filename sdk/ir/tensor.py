"""Tensor-level IR: loop nests over buffers.

A :class:`TensorFunction` takes buffer parameters (inputs first, then outputs: destination-passing style) and
has a statement body. Statements are loops (:class:`For`, with a ``kind`` that schedules may set to
``vectorized``, ``unrolled`` or ``parallel``), stores, sequences, conditionals and local allocations (scratch
tiles, packed copies). Expressions are immutable trees with Python operator overloading, so a lowering reads
like the math: ``Store(out, (i, j), acc[()] + x[i, k] * w[k, j])``.

Buffers are dense and row-major by default; ``strides`` can describe any other layout (padded rows, packed
panels). Every index is an ``int64`` expression. This is the level where schedules (tiling, vectorization,
unrolling, parallel loops, packed layouts) are expressed; codegen maps it one-to-one onto LLVM IR.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..runtime_c.abi import align_up
from .types import is_float, itemsize

_ids = itertools.count()

LOOP_KINDS = ("serial", "vectorized", "unrolled", "parallel")
BIN_OPS = ("+", "-", "*", "/", "//", "%", "min", "max", "<", "<=", ">", ">=", "==", "!=", "and", "or")
CMP_OPS = ("<", "<=", ">", ">=", "==", "!=")
# Math intrinsics codegen knows (all implemented without libm): unary unless noted.
INTRINSICS = (
    "exp",
    "log",
    "sqrt",
    "tanh",
    "erf",
    "sigmoid",
    "abs",
    "floor",
    "ceil",
    "round",
    "neg",
    "pow",  # pow: binary
    "sin",
    "cos",
)


# ----------------------------------------------------------------------------------------------------- expressions
class Expr:
    """Base of all expressions. ``dtype`` is a kiln dtype name (``int64`` for indices, ``bool`` for tests)."""

    dtype: str

    def _bin(self, op: str, other: ExprLike, rev: bool = False) -> Expr:
        o = const(other, self.dtype if not isinstance(other, Expr) else other.dtype)
        a, b = (o, self) if rev else (self, o)
        return _fold_int(op, a, b) or BinOp(op, a, b)

    def __add__(self, o: ExprLike) -> Expr:
        return self._bin("+", o)

    def __radd__(self, o: ExprLike) -> Expr:
        return self._bin("+", o, True)

    def __sub__(self, o: ExprLike) -> Expr:
        return self._bin("-", o)

    def __rsub__(self, o: ExprLike) -> Expr:
        return self._bin("-", o, True)

    def __mul__(self, o: ExprLike) -> Expr:
        return self._bin("*", o)

    def __rmul__(self, o: ExprLike) -> Expr:
        return self._bin("*", o, True)

    def __truediv__(self, o: ExprLike) -> Expr:
        return self._bin("/", o)

    def __rtruediv__(self, o: ExprLike) -> Expr:
        return self._bin("/", o, True)

    def __floordiv__(self, o: ExprLike) -> Expr:
        return self._bin("//", o)

    def __mod__(self, o: ExprLike) -> Expr:
        return self._bin("%", o)

    def __neg__(self) -> Expr:
        return Call("neg", (self,), self.dtype)

    def __lt__(self, o: ExprLike) -> Expr:  # type: ignore[override]
        return self._bin("<", o)

    def __le__(self, o: ExprLike) -> Expr:  # type: ignore[override]
        return self._bin("<=", o)

    def __gt__(self, o: ExprLike) -> Expr:  # type: ignore[override]
        return self._bin(">", o)

    def __ge__(self, o: ExprLike) -> Expr:  # type: ignore[override]
        return self._bin(">=", o)

    def eq(self, o: ExprLike) -> Expr:
        return self._bin("==", o)

    def ne(self, o: ExprLike) -> Expr:
        return self._bin("!=", o)

    # Expressions are used as dict keys by identity; keep Python's default hash/eq for that.
    __hash__ = object.__hash__


ExprLike = Expr | int | float | bool


def _fold_int(op: str, a: Expr, b: Expr) -> Expr | None:
    """Integer identities (x+0, x*1, x*0, const op const), so index arithmetic stays small and readable."""
    if a.dtype != "int64" or b.dtype != "int64":
        return None
    ai = a.value if isinstance(a, IntImm) else None
    bi = b.value if isinstance(b, IntImm) else None
    if ai is not None and bi is not None:
        fold = {"+": ai + bi, "-": ai - bi, "*": ai * bi}
        if op in fold:
            return IntImm(fold[op])
        if op == "//" and bi > 0 and ai >= 0:
            return IntImm(ai // bi)
        if op == "%" and bi > 0 and ai >= 0:
            return IntImm(ai % bi)
    if op in ("+", "-") and bi == 0:
        return a
    if op == "+" and ai == 0:
        return b
    if op == "*" and (ai == 0 or bi == 0):
        return IntImm(0)
    if op in ("*", "//") and bi == 1:
        return a
    if op == "*" and ai == 1:
        return b
    if op == "%" and bi == 1:
        return IntImm(0)
    return None


@dataclass(frozen=True, eq=False)
class IntImm(Expr):
    value: int
    dtype: str = "int64"


@dataclass(frozen=True, eq=False)
class FloatImm(Expr):
    value: float
    dtype: str = "float32"


@dataclass(frozen=True, eq=False)
class LoopVar(Expr):
    """A loop induction variable or a scalar integer parameter (``int64``)."""

    name: str
    dtype: str = "int64"
    uid: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class BinOp(Expr):
    op: str
    a: Expr
    b: Expr

    def __post_init__(self) -> None:
        if self.op not in BIN_OPS:
            raise ValueError(f"unknown binary op {self.op!r}")

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return "bool" if self.op in CMP_OPS or self.op in ("and", "or") else self.a.dtype


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """A math intrinsic from :data:`INTRINSICS` (computed by generated code, never by libm)."""

    fn: str
    args: tuple[Expr, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.fn not in INTRINSICS:
            raise ValueError(f"unknown intrinsic {self.fn!r}; known: {', '.join(INTRINSICS)}")


@dataclass(frozen=True, eq=False)
class Select(Expr):
    cond: Expr
    t: Expr
    f: Expr

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.t.dtype


@dataclass(frozen=True, eq=False)
class Cast(Expr):
    dtype: str
    value: Expr


@dataclass(frozen=True, eq=False)
class Load(Expr):
    buffer: Buffer
    indices: tuple[Expr, ...]

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.buffer.dtype


def const(v: ExprLike, dtype: str = "int64") -> Expr:
    if isinstance(v, Expr):
        return v
    if isinstance(v, bool):
        return IntImm(int(v), "bool")
    if is_float(dtype) or isinstance(v, float):
        return FloatImm(float(v), dtype if is_float(dtype) else "float32")
    return IntImm(int(v), dtype)


def call(fn: str, *args: ExprLike) -> Expr:
    exprs = tuple(const(a, "float32") for a in args)
    return Call(fn, exprs, exprs[0].dtype)


def minimum(a: ExprLike, b: ExprLike) -> Expr:
    a = const(a, b.dtype if isinstance(b, Expr) else "int64")
    return BinOp("min", a, const(b, a.dtype))


def maximum(a: ExprLike, b: ExprLike) -> Expr:
    a = const(a, b.dtype if isinstance(b, Expr) else "int64")
    return BinOp("max", a, const(b, a.dtype))


def select(cond: Expr, t: ExprLike, f: ExprLike) -> Expr:
    dt = t.dtype if isinstance(t, Expr) else (f.dtype if isinstance(f, Expr) else "float32")
    return Select(cond, const(t, dt), const(f, dt))


def cast(dtype: str, v: ExprLike) -> Expr:
    e = const(v, dtype)
    return e if e.dtype == dtype else Cast(dtype, e)


def logical_and(*conds: Expr) -> Expr:
    out = conds[0]
    for c in conds[1:]:
        out = BinOp("and", out, c)
    return out


# --------------------------------------------------------------------------------------------------------- buffers
@dataclass(frozen=True, eq=False)
class Buffer:
    """A typed N-d view of memory. ``strides`` in elements (row-major when empty).

    ``scope`` is ``param`` (a function argument), ``local`` (a small scratch array that codegen places on the
    stack, e.g. an accumulator tile that LLVM keeps in registers) or ``workspace`` (a larger scratch area, placed
    by memory planning).
    """

    name: str
    shape: tuple[Any, ...]  # ints; an int64 Expr for a dimension known only at run time (dynamic shapes)
    dtype: str = "float32"
    strides: tuple[Any, ...] = ()
    scope: str = "param"
    uid: int = field(default_factory=lambda: next(_ids))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_dynamic(self) -> bool:
        """Some dimension is an expression evaluated at run time (see docs/how-to/dynamic-shapes.md)."""
        return not all(isinstance(d, int) for d in self.shape)

    @property
    def elem_strides(self) -> tuple[Any, ...]:
        if self.strides:
            return self.strides
        out, acc = [], 1
        for d in reversed(self.shape):
            out.append(acc)
            acc *= d
        return tuple(reversed(out))

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    def __getitem__(self, idx: ExprLike | tuple[ExprLike, ...]) -> Load:
        items = idx if isinstance(idx, tuple) else (idx,)
        if len(items) != self.ndim:
            raise IndexError(f"buffer {self.name} has {self.ndim} dims, indexed with {len(items)}")
        return Load(self, tuple(const(i) for i in items))

    def __repr__(self) -> str:
        return f"{self.name}: {self.dtype}{list(self.shape)}"

    def with_(self, **changes: Any) -> Buffer:
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------------------ statements
class Stmt:
    pass


@dataclass(frozen=True, eq=False)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr


@dataclass(frozen=True, eq=False)
class For(Stmt):
    """``for var in range(start, start + extent): body``. ``kind`` is a scheduling request:
    ``vectorized`` asks codegen to emit the loop as SIMD code for the target's vector width, ``unrolled`` to
    unroll it fully, ``parallel`` to run iterations on worker threads (serial where the runtime has none)."""

    var: LoopVar
    extent: Expr
    body: Stmt
    kind: str = "serial"
    start: Expr = field(default_factory=lambda: IntImm(0))

    def __post_init__(self) -> None:
        if self.kind not in LOOP_KINDS:
            raise ValueError(f"unknown loop kind {self.kind!r}; kinds: {', '.join(LOOP_KINDS)}")


@dataclass(frozen=True, eq=False)
class Seq(Stmt):
    stmts: tuple[Stmt, ...]


@dataclass(frozen=True, eq=False)
class IfThenElse(Stmt):
    cond: Expr
    then: Stmt
    else_: Stmt | None = None


@dataclass(frozen=True, eq=False)
class Allocate(Stmt):
    """Scratch ``buffer`` (scope local or workspace) live inside ``body``."""

    buffer: Buffer
    body: Stmt


@dataclass(frozen=True, eq=False)
class TensorFunction:
    """``name(*params)``: inputs first, the last ``num_outputs`` params are outputs.

    ``attrs`` carries what passes and codegen need (``ops``: graph ops covered, for profile names;
    ``flops``: arithmetic operations per call, for the manifest).
    """

    name: str
    params: tuple[Buffer, ...]
    body: Stmt
    num_outputs: int = 1
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return self.params[: len(self.params) - self.num_outputs]

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return self.params[len(self.params) - self.num_outputs :]

    def with_(self, **changes: Any) -> TensorFunction:
        return replace(self, **changes)


# --------------------------------------------------------------------------------------------------------- helpers
def seq(*stmts: Stmt | Iterable[Stmt] | None) -> Stmt:
    flat: list[Stmt] = []
    for s in stmts:
        if s is None:
            continue
        if isinstance(s, Seq):
            flat.extend(s.stmts)
        elif isinstance(s, Stmt):
            flat.append(s)
        else:
            for x in s:
                flat.extend(x.stmts if isinstance(x, Seq) else [x])
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def loop(
    extent: ExprLike,
    body: Callable[[LoopVar], Stmt],
    name: str = "i",
    kind: str = "serial",
    start: ExprLike = 0,
) -> For:
    v = LoopVar(name)
    return For(v, const(extent), body(v), kind, const(start))


def loop_or_once(extent: int, body: Callable[[Expr], Stmt], name: str = "i", kind: str = "serial") -> Stmt:
    """:func:`loop` over ``range(extent)``, except that a single iteration is ``body`` alone with the index
    the constant 0: no loop, and index arithmetic on it folds to constants. For loops over tiles, whose count
    is 1 for some shapes."""
    return body(IntImm(0)) if extent == 1 else loop(extent, body, name, kind)


def loop_nest(
    shape: Sequence[int],
    body: Callable[[tuple[LoopVar, ...]], Stmt],
    prefix: str = "i",
    innermost: str = "serial",
) -> Stmt:
    """A perfect loop nest over ``shape`` (one loop per dim; the innermost gets ``innermost`` kind)."""
    vars_ = tuple(LoopVar(f"{prefix}{d}") for d in range(len(shape)))
    stmt = body(vars_)
    for d in reversed(range(len(shape))):
        kind = innermost if d == len(shape) - 1 else "serial"
        stmt = For(vars_[d], const(shape[d]), stmt, kind)
    return stmt


def walk_stmts(s: Stmt) -> Iterable[Stmt]:
    yield s
    if isinstance(s, For | Allocate):
        yield from walk_stmts(s.body)
    elif isinstance(s, Seq):
        for x in s.stmts:
            yield from walk_stmts(x)
    elif isinstance(s, IfThenElse):
        yield from walk_stmts(s.then)
        if s.else_ is not None:
            yield from walk_stmts(s.else_)


def walk_exprs(e: Expr) -> Iterable[Expr]:
    yield e
    if isinstance(e, BinOp):
        yield from walk_exprs(e.a)
        yield from walk_exprs(e.b)
    elif isinstance(e, Call):
        for a in e.args:
            yield from walk_exprs(a)
    elif isinstance(e, Select):
        yield from walk_exprs(e.cond)
        yield from walk_exprs(e.t)
        yield from walk_exprs(e.f)
    elif isinstance(e, Cast):
        yield from walk_exprs(e.value)
    elif isinstance(e, Load):
        for i in e.indices:
            yield from walk_exprs(i)
        yield from _stride_exprs(e.buffer)


def _stride_exprs(buf: Buffer) -> Iterable[Expr]:
    """Run-time strides of ``buf`` (dynamic shapes): addressing it reads the values they load."""
    if buf.is_dynamic or buf.strides:
        for st in buf.elem_strides:
            if isinstance(st, Expr):
                yield from walk_exprs(st)


def stmt_exprs(s: Stmt) -> Iterable[Expr]:
    """Every top-level expression directly held by ``s`` (not recursing into child statements)."""
    if isinstance(s, Store):
        yield from s.indices
        yield s.value
        yield from _stride_exprs(s.buffer)
    elif isinstance(s, For):
        yield s.start
        yield s.extent
    elif isinstance(s, IfThenElse):
        yield s.cond


def workspace_bytes(fn: TensorFunction) -> int:
    """Scratch bytes a tensor function needs: its workspace allocations, each rounded up to the ABI alignment
    (codegen hands them out in this order; plan-memory reserves the largest over all functions)."""
    return sum(
        align_up(s.buffer.nbytes)
        for s in walk_stmts(fn.body)
        if isinstance(s, Allocate) and s.buffer.scope == "workspace"
    )
