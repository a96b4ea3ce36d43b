"""Explicit SIMD code for ``vectorized`` loops (used by :class:`kiln.codegen.tensor_codegen.TensorCodegen`;
built on :class:`kiln.codegen.scalar.ScalarCodegen`).

A ``vectorized`` loop over ``v`` is emitted here, as LLVM vector operations of ``lanes`` elements (the
target's vector bits over the widest element the loop touches), when:

- its start and extent are constants and its body is a sequence of stores (no nested loops, conditionals or
  allocations);
- every store, and every load that depends on ``v``, has unit stride in ``v``: its flat element offset is
  ``offset + v``, so it becomes one vector load or store; loads that do not depend on ``v`` are loaded once
  and broadcast;
- a buffer the loop stores to (or a view of it: views share its uid) is loaded only at the indices, in the
  same view, that it is stored at (lanes never depend on each other);
- the values use operations that have a vector form: arithmetic, comparisons, min/max, select, casts, neg,
  abs, sqrt, and the float32 math functions of :mod:`kiln.codegen.mathlib` (exp, sigmoid, erf, tanh, ...),
  whose vector forms compute lane-wise exactly what their scalar forms do.

It then runs ``extent // lanes`` vector steps (unrolled when there are few) and the remaining iterations as
scalar code; on targets that load and store parts of vectors natively (``masked_tails``: x86 with AVX2 or
AVX-512), as one more vector step whose loads and stores are masked to the remaining lanes (LLVM's
``llvm.masked.load``/``store``), also for loops shorter than one vector (a 7-pixel row of a 7x7 map), unless
the loop touches a ``local`` buffer (register tiles, which LLVM keeps in registers only when every access is
plain) or divides integers (masked-off lanes must not trap). :func:`emit_vector_loop` returns False for
any other loop, which the caller emits as a scalar loop for LLVM's loop and SLP vectorizers. Doing this
here rather than leaving it to LLVM keeps register-tiled kernels (the GEMM micro-kernel's ``MR x NC``
accumulator tile) exactly as the schedule wrote them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import llvmlite.ir as ir

from ..ir import tensor as T
from ..ir.types import is_float, itemsize
from . import mathlib
from .scalar import FunctionContext, ScalarCodegen

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
MAX_UNROLLED_STEPS = 4
_VECTOR_CALLS = ("neg", "abs", "sqrt")


def emit_vector_loop(cg: ScalarCodegen, c: FunctionContext, s: T.For, body: Callable[[], None]) -> bool:
    """Emit ``s`` as vector code into ``c`` if it qualifies (module docstring); returns whether it did.
    ``body()`` emits one scalar iteration of ``s`` (for the remainder)."""
    if not (isinstance(s.start, T.IntImm) and isinstance(s.extent, T.IntImm)):
        return False
    stores = _stores(s.body)
    if not stores:
        return False
    v = s.var
    loads = [e for st in stores for e in T.walk_exprs(st.value) if isinstance(e, T.Load)]
    width = max(itemsize(b.dtype) for b in [*(st.buffer for st in stores), *(ld.buffer for ld in loads)])
    lanes = cg.vector_bits // (8 * width)
    steps, rest = divmod(s.extent.value, lanes) if lanes >= 2 else (0, 0)
    masked = rest > 0 and cg.masked_tails and _maskable(stores, loads)
    if (steps == 0 and not masked) or not _qualifies(stores, loads, v):
        return False

    def step(base: ir.Value, mask: ir.Value | None = None) -> None:
        for st in stores:
            _store(cg, c, st, v, base, lanes, mask)

    start = s.start.value
    if steps <= MAX_UNROLLED_STEPS:
        for k in range(steps):
            step(cg.index_const(start + k * lanes))
    else:
        cg.counted_loop(
            c, v, cg.index_const(start), T.IntImm(steps * lanes), lambda: step(c.vars[v.uid]), step=lanes
        )
    if rest and masked:
        step(
            cg.index_const(start + steps * lanes),
            ir.Constant(ir.VectorType(I1, lanes), [int(k < rest) for k in range(lanes)]),
        )
    elif rest:
        tail = cg.index_const(start + steps * lanes)
        cg.counted_loop(c, v, tail, T.IntImm(rest), body)
    return True


def _maskable(stores: list[T.Store], loads: list[T.Load]) -> bool:
    """Whether the loop may end in a masked step (module docstring)."""
    if any(b.scope == "local" for b in [*(st.buffer for st in stores), *(ld.buffer for ld in loads)]):
        return False
    return not any(
        isinstance(e, T.BinOp) and e.op in ("/", "//", "%") and not is_float(e.a.dtype)
        for st in stores
        for e in T.walk_exprs(st.value)
    )


# ------------------------------------------------------------------------------------------------- analysis
def _stores(s: T.Stmt) -> list[T.Store] | None:
    if isinstance(s, T.Store):
        return [s]
    if isinstance(s, T.Seq):
        out: list[T.Store] = []
        for x in s.stmts:
            sub = _stores(x)
            if sub is None:
                return None
            out += sub
        return out
    return None


def _depends(e: T.Expr, v: T.LoopVar) -> bool:
    return any(isinstance(x, T.LoopVar) and x.uid == v.uid for x in T.walk_exprs(e))


def _coef(e: T.Expr, v: T.LoopVar) -> int | None:
    """The constant coefficient of ``v`` in the integer expression ``e``, or None if ``e`` is not affine in
    ``v`` with a constant coefficient."""
    if not _depends(e, v):
        return 0
    if isinstance(e, T.LoopVar):
        return 1
    if isinstance(e, T.BinOp):
        ca, cb = _coef(e.a, v), _coef(e.b, v)
        if ca is None or cb is None:
            return None
        if e.op == "+":
            return ca + cb
        if e.op == "-":
            return ca - cb
        if e.op == "*" and cb == 0 and isinstance(e.b, T.IntImm):
            return ca * e.b.value
        if e.op == "*" and ca == 0 and isinstance(e.a, T.IntImm):
            return cb * e.a.value
    return None


def _stride(buf: T.Buffer, indices: tuple[T.Expr, ...], v: T.LoopVar) -> int | None:
    total = 0
    for idx, stride in zip(indices, buf.elem_strides, strict=True):
        k = _coef(idx, v)
        if k is None or (k and not isinstance(stride, int)):
            return None
        if k:
            total += k * stride
    return total


def _key(x: Any) -> Any:
    """A structural key: equal keys mean the same expression (loop variables and buffers by identity)."""
    if isinstance(x, T.LoopVar):
        return ("var", x.uid)
    if isinstance(x, T.Buffer):
        return ("buf", x.uid)
    if isinstance(x, tuple):
        return tuple(_key(y) for y in x)
    if isinstance(x, T.Expr):
        fields = dataclasses.fields(x)  # type: ignore[arg-type]  # every Expr is a dataclass
        return (type(x).__name__, *(_key(getattr(x, f.name)) for f in fields))
    return x


def _vector_value(e: T.Expr, v: T.LoopVar) -> bool:
    """Whether ``e`` has a vector form (loop-invariant parts are emitted as scalars and broadcast)."""
    if not _depends(e, v) or isinstance(e, T.LoopVar):
        return True
    if isinstance(e, T.Load):
        return _stride(e.buffer, e.indices, v) == 1
    if isinstance(e, T.BinOp):
        if is_float(e.a.dtype) and e.op in ("//", "%"):  # floor and fmod are scalar calls
            return False
        return _vector_value(e.a, v) and _vector_value(e.b, v)
    if isinstance(e, T.Select):
        return all(_vector_value(x, v) for x in (e.cond, e.t, e.f))
    if isinstance(e, T.Cast):
        return _vector_value(e.value, v)
    if isinstance(e, T.Call):
        vector_form = e.fn in _VECTOR_CALLS or (
            e.fn in mathlib.NAMES and all(x.dtype == "float32" for x in (e, *e.args))
        )
        return vector_form and all(_vector_value(a, v) for a in e.args)
    return False


def _qualifies(stores: list[T.Store], loads: list[T.Load], v: T.LoopVar) -> bool:
    stored: dict[int, set[Any]] = {}
    for st in stores:
        if _stride(st.buffer, st.indices, v) != 1 or not _vector_value(st.value, v):
            return False
        stored.setdefault(st.buffer.uid, set()).add((st.buffer.elem_strides, _key(st.indices)))
    return all(
        (ld.buffer.elem_strides, _key(ld.indices)) in stored[ld.buffer.uid]
        for ld in loads
        if ld.buffer.uid in stored
    )


# ------------------------------------------------------------------------------------------------- emission
def _broadcast(c: FunctionContext, x: ir.Value, lanes: int) -> ir.Value:
    if isinstance(x.type, ir.VectorType):
        return x
    vt = ir.VectorType(x.type, lanes)
    one = c.b.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(I32, 0))
    zeros = ir.Constant(ir.VectorType(I32, lanes), [0] * lanes)
    return c.b.shuffle_vector(one, ir.Constant(vt, ir.Undefined), zeros)


def _masked(cg: ScalarCodegen, op: str, vt: ir.VectorType) -> ir.Function:
    """``llvm.masked.load`` or ``llvm.masked.store`` for vectors of type ``vt`` (llvmlite does not name vector
    overloads)."""
    name = f"llvm.masked.{op}.v{vt.count}{vt.element.intrinsic_name}.p0"
    fn = cg.module.globals.get(name)
    if fn is None:
        mt = ir.VectorType(I1, vt.count)
        ptr = ir.PointerType()
        ty = (
            ir.FunctionType(vt, [ptr, I32, mt, vt])
            if op == "load"
            else ir.FunctionType(ir.VoidType(), [vt, ptr, I32, mt])
        )
        fn = ir.Function(cg.module, ty, name)
    return fn


def _store(
    cg: ScalarCodegen,
    c: FunctionContext,
    st: T.Store,
    v: T.LoopVar,
    base: ir.Value,
    lanes: int,
    mask: ir.Value | None = None,
) -> None:
    c.vars[v.uid] = base  # addresses are computed for lane 0
    val = _broadcast(c, _vexpr(cg, c, st.value, v, base, lanes, mask), lanes)
    if st.buffer.dtype == "bool":
        val = c.b.zext(val, ir.VectorType(I8, lanes))
    elif st.value.dtype != st.buffer.dtype:
        val = cg.convert(c, val, st.value.dtype, st.buffer.dtype)
    val = cg.fit(c, val, ir.VectorType(cg.mem_type(st.buffer.dtype), lanes))
    ptr = cg.addr(c, st.buffer, st.indices)
    if mask is not None:
        align = ir.Constant(I32, itemsize(st.buffer.dtype))
        c.b.call(_masked(cg, "store", val.type), [val, ptr, align, mask])
    else:
        c.b.store(val, ptr, align=itemsize(st.buffer.dtype))


def _vexpr(
    cg: ScalarCodegen,
    c: FunctionContext,
    e: T.Expr,
    v: T.LoopVar,
    base: ir.Value,
    lanes: int,
    mask: ir.Value | None = None,
) -> ir.Value:
    if not _depends(e, v):
        return cg.expr(c, e)
    b = c.b

    def vec(x: T.Expr) -> ir.Value:
        return _broadcast(c, _vexpr(cg, c, x, v, base, lanes, mask), lanes)

    if isinstance(e, T.LoopVar):
        return b.add(
            _broadcast(c, base, lanes), ir.Constant(ir.VectorType(base.type, lanes), list(range(lanes)))
        )
    if isinstance(e, T.Load):
        vt = ir.VectorType(cg.mem_type(e.buffer.dtype), lanes)
        ptr = cg.addr(c, e.buffer, e.indices)
        if mask is not None:  # masked-off lanes read nothing and are zero
            align = ir.Constant(I32, itemsize(e.buffer.dtype))
            x = b.call(_masked(cg, "load", vt), [ptr, align, mask, ir.Constant(vt, None)])
        else:
            x = b.load(ptr, typ=vt, align=itemsize(e.buffer.dtype))
        return b.trunc(x, ir.VectorType(I1, lanes)) if e.buffer.dtype == "bool" else x
    if isinstance(e, T.BinOp):
        return cg.binop_values(c, e.op, vec(e.a), vec(e.b), e.a.dtype, e.b.dtype)
    if isinstance(e, T.Select):
        t, f = cg.widen(c, vec(e.t), vec(e.f))
        return b.select(_vexpr(cg, c, e.cond, v, base, lanes, mask), t, f)
    if isinstance(e, T.Cast):
        return cg.convert(c, vec(e.value), e.value.dtype, e.dtype)
    if isinstance(e, T.Call):
        if e.fn not in _VECTOR_CALLS:  # a float32 math function (_vector_value checked)
            return cg.math.call(b, e.fn, [vec(a) for a in e.args])
        x = vec(e.args[0])
        if e.fn == "neg":
            return b.fneg(x) if is_float(e.dtype) else b.neg(x)
        if e.fn == "abs" and not is_float(e.dtype):
            return b.select(b.icmp_signed("<", x, ir.Constant(x.type, None)), b.neg(x), x)
        name = {"abs": "llvm.fabs", "sqrt": "llvm.sqrt"}[e.fn]
        name += f".v{lanes}{x.type.element.intrinsic_name}"  # llvmlite does not name vector overloads
        fn = cg.module.globals.get(name) or ir.Function(cg.module, ir.FunctionType(x.type, [x.type]), name)
        return b.call(fn, [x])
    raise TypeError(f"codegen: no vector form for {e!r}")
