"""Scalar code for tensor functions: element types, expressions, addresses, conversions and counted loops.

:class:`ScalarCodegen` emits what both statement emission (:mod:`kiln.codegen.tensor_codegen`) and vector
emission (:mod:`kiln.codegen.vectorize`) build on; :class:`FunctionContext` is the state of one function being
emitted. Operations take LLVM scalars or vectors of one length alike (``binop_values``, ``convert``), so
vector code reuses them lane-wise.

Index arithmetic follows the target's pointer width (``index_bits``): on a 32-bit target, loop variables and
``int64`` constants that fit in 32 bits are ``i32`` values, so addresses cost no 64-bit carry chains. A value
loaded from or cast to ``int64`` stays ``i64``; where the two meet (an operation, a select, a store) the
narrower one is sign-extended, and every address offset is truncated to the index width (a tensor on a 32-bit
target has fewer than 2**31 elements).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import llvmlite.ir as ir

from ..ir import tensor as T
from ..ir.types import is_float, itemsize
from .mathlib import MathLib

I64 = ir.IntType(64)
I1 = ir.IntType(1)

_LL_TYPES: dict[str, ir.Type] = {
    "float32": ir.FloatType(),
    "float64": ir.DoubleType(),
    "float16": ir.HalfType(),
    "int8": ir.IntType(8),
    "uint8": ir.IntType(8),
    "int16": ir.IntType(16),
    "int32": ir.IntType(32),
    "int64": I64,
    "bool": I1,
}
_MEM_TYPES = {**_LL_TYPES, "bool": ir.IntType(8)}
# Allow a*b+c to become one fused multiply-add (like C's -ffp-contract=fast); nothing else is relaxed.
FP_FLAGS = ("contract",)


def ll_type(dtype: str) -> ir.Type:
    return _LL_TYPES[dtype]


@dataclass
class FunctionContext:
    """The state of one tensor function being emitted."""

    b: ir.IRBuilder
    fn: ir.Function
    entry: ir.Block
    ptrs: dict[int, ir.Value] = field(default_factory=dict)  # buffer uid -> base pointer
    vars: dict[int, ir.Value] = field(default_factory=dict)  # loop var uid -> value of the index type
    scratch: ir.Value | None = None
    scratch_off: int = 0
    #: inside the outlined body of a parallel loop: its workspace buffers live on the stack (one per chunk)
    #: and a nested parallel loop runs serially
    in_parallel: bool = False


class ScalarCodegen:
    """Emits expressions, addresses and counted loops into a :class:`FunctionContext` of ``module``;
    ``vector_bits`` is the target's vector width (0: no vector unit), ``index_bits`` its pointer width (the
    type of loop variables and address offsets)."""

    def __init__(self, module: ir.Module, math: MathLib, vector_bits: int = 0, index_bits: int = 64) -> None:
        self.module = module
        self.math = math
        self.vector_bits = vector_bits
        self.index_bits = index_bits
        self.index = ir.IntType(index_bits)
        #: vector loops may end in a masked vector step (kiln.codegen.vectorize); set for targets that
        #: load and store parts of vectors natively
        self.masked_tails = False

    def fit(self, c: FunctionContext, v: ir.Value, ty: ir.Type) -> ir.Value:
        """Integer ``v`` (scalar or vector) at the width of ``ty`` (sign-extended or truncated)."""
        have = v.type.element if isinstance(v.type, ir.VectorType) else v.type
        want = ty.element if isinstance(ty, ir.VectorType) else ty
        if not isinstance(have, ir.IntType) or not isinstance(want, ir.IntType) or have.width == want.width:
            return v
        if isinstance(v.type, ir.VectorType):
            ty = ir.VectorType(want, v.type.count)
        return c.b.sext(v, ty) if want.width > have.width else c.b.trunc(v, ty)

    def widen(self, c: FunctionContext, a: ir.Value, y: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Integer operands of one kiln dtype brought to one width (index-typed values meeting int64 data)."""
        ea = a.type.element if isinstance(a.type, ir.VectorType) else a.type
        ey = y.type.element if isinstance(y.type, ir.VectorType) else y.type
        if isinstance(ea, ir.IntType) and isinstance(ey, ir.IntType) and ea.width != ey.width:
            if ea.width < ey.width:
                return self.fit(c, a, y.type), y
            return a, self.fit(c, y, a.type)
        return a, y

    def index_const(self, value: int) -> ir.Constant:
        return ir.Constant(self.index, value)

    @staticmethod
    def mem_type(dtype: str) -> ir.Type:
        """The LLVM type of one element of ``dtype`` in memory (``bool`` is a byte there, ``i1`` in values)."""
        return _MEM_TYPES[dtype]

    def counted_loop(
        self,
        c: FunctionContext,
        var: T.LoopVar,
        lo: ir.Value,
        extent: T.Expr,
        body: Callable[[], None],
        step: int = 1,
    ) -> None:
        """``for var = lo; var < lo + extent; var += step: body()`` (``extent`` a multiple of ``step``)."""
        b = c.b
        lo = self.fit(c, lo, self.index)
        hi = b.add(lo, self.fit(c, self.expr(c, extent), self.index))
        pre = b.block
        header = b.append_basic_block(f"{var.name}.loop")
        after = b.append_basic_block(f"{var.name}.end")
        if not (isinstance(extent, T.IntImm) and extent.value > 0):
            b.cbranch(b.icmp_signed("<", lo, hi), header, after)
        else:
            b.branch(header)
        b.position_at_end(header)
        iv = b.phi(self.index, name=var.name)
        iv.add_incoming(lo, pre)
        c.vars[var.uid] = iv
        body()
        nxt = b.add(iv, self.index_const(step), flags=["nsw", "nuw"])
        iv.add_incoming(nxt, b.block)
        b.cbranch(b.icmp_signed("<", nxt, hi), header, after)
        b.position_at_end(after)

    # ----------------------------------------------------------------------------------------- expressions
    def addr(self, c: FunctionContext, buf: T.Buffer, indices: tuple[T.Expr, ...]) -> ir.Value:
        try:
            base = c.ptrs[buf.uid]
        except KeyError:
            raise ValueError(f"codegen: buffer {buf.name} is not a parameter or allocation") from None
        off: ir.Value | None = None
        const_off = 0
        for idx, stride in zip(indices, buf.elem_strides, strict=True):
            if isinstance(stride, T.Expr):  # a run-time stride (dynamic shapes): the product is an expression
                if isinstance(idx, T.IntImm) and idx.value == 0:
                    continue
                v = self.fit(c, self.expr(c, idx * stride), self.index)
                off = v if off is None else c.b.add(off, v, flags=["nsw"])
                continue
            if isinstance(idx, T.IntImm):
                const_off += idx.value * stride
                continue
            v = self.fit(c, self.expr(c, idx), self.index)
            if stride != 1:
                v = c.b.mul(v, self.index_const(stride), flags=["nsw"])
            off = v if off is None else c.b.add(off, v, flags=["nsw"])
        if off is None:
            off = self.index_const(const_off)
        elif const_off:
            off = c.b.add(off, self.index_const(const_off), flags=["nsw"])
        return c.b.gep(base, [off], inbounds=True, source_etype=_MEM_TYPES[buf.dtype])

    def expr(self, c: FunctionContext, e: T.Expr) -> ir.Value:
        b = c.b
        if isinstance(e, T.IntImm):
            if e.dtype == "int64" and -(1 << (self.index_bits - 1)) <= e.value < 1 << (self.index_bits - 1):
                return self.index_const(e.value)
            return ir.Constant(ll_type(e.dtype), e.value)
        if isinstance(e, T.FloatImm):
            return ir.Constant(ll_type(e.dtype), e.value)
        if isinstance(e, T.LoopVar):
            try:
                return c.vars[e.uid]
            except KeyError:
                raise ValueError(f"codegen: loop variable {e.name} used outside its loop") from None
        if isinstance(e, T.Load):
            v = b.load(self.addr(c, e.buffer, e.indices), typ=_MEM_TYPES[e.buffer.dtype])
            return b.trunc(v, I1) if e.buffer.dtype == "bool" else v
        if isinstance(e, T.BinOp):
            return self._binop(c, e)
        if isinstance(e, T.Select):
            t, f = self.widen(c, self.expr(c, e.t), self.expr(c, e.f))
            return b.select(self.expr(c, e.cond), t, f)
        if isinstance(e, T.Cast):
            return self.convert(c, self.expr(c, e.value), e.value.dtype, e.dtype)
        if isinstance(e, T.Call):
            args = [self.expr(c, a) for a in e.args]
            if e.fn == "neg":
                return b.fneg(args[0]) if is_float(e.dtype) else b.neg(args[0])
            if e.dtype != "float32":
                if e.fn == "abs" and not is_float(e.dtype):
                    x = args[0]
                    return b.select(b.icmp_signed("<", x, ir.Constant(x.type, 0)), b.neg(x), x)
                args = [self.convert(c, a, x.dtype, "float32") for a, x in zip(args, e.args, strict=True)]
                return self.convert(c, self.math.call(b, e.fn, args), "float32", e.dtype)
            return self.math.call(b, e.fn, args)
        raise TypeError(f"codegen: unknown expression {e!r}")

    def _binop(self, c: FunctionContext, e: T.BinOp) -> ir.Value:
        return self.binop_values(c, e.op, self.expr(c, e.a), self.expr(c, e.b), e.a.dtype, e.b.dtype)

    def binop_values(
        self, c: FunctionContext, op: str, a: ir.Value, y: ir.Value, dt: str, dt_b: str
    ) -> ir.Value:
        """``a op y`` on emitted operands (scalars or vectors of one length) of kiln dtypes ``dt``/``dt_b``."""
        b = c.b
        if dt_b != dt:
            y = self.convert(c, y, dt_b, dt)
        a, y = self.widen(c, a, y)
        if op in ("and", "or"):
            return b.and_(a, y) if op == "and" else b.or_(a, y)
        if is_float(dt):
            if op in T.CMP_OPS:
                return b.fcmp_ordered(op, a, y)
            if op == "min":
                return b.select(b.fcmp_ordered("<", a, y), a, y)
            if op == "max":
                return b.select(b.fcmp_ordered(">", a, y), a, y)
            if op == "//":
                if isinstance(a.type, ir.VectorType):
                    raise ValueError("codegen: floor division has no vector form")  # vectorize.py avoids it
                return self.math.call(b, "floor", [b.fdiv(a, y)])
            fop = {"+": b.fadd, "-": b.fsub, "*": b.fmul, "/": b.fdiv, "%": b.frem}[op]
            return fop(a, y, flags=FP_FLAGS)
        unsigned = dt in ("uint8", "bool")
        if op in T.CMP_OPS:
            return b.icmp_unsigned(op, a, y) if unsigned else b.icmp_signed(op, a, y)
        if op in ("min", "max"):
            cmp = (b.icmp_unsigned if unsigned else b.icmp_signed)("<" if op == "min" else ">", a, y)
            return b.select(cmp, a, y)
        if op in ("/", "//"):
            return b.udiv(a, y) if unsigned else b.sdiv(a, y)
        if op == "%":
            return b.urem(a, y) if unsigned else b.srem(a, y)
        iop = {"+": b.add, "-": b.sub, "*": b.mul}[op]
        return iop(a, y)

    def convert(self, c: FunctionContext, v: ir.Value, src: str, dst: str) -> ir.Value:
        """``v`` (a scalar or a vector) of kiln dtype ``src`` converted to ``dst``."""
        if src == dst:
            return v
        b = c.b
        st, dt = ll_type(src), ll_type(dst)
        if isinstance(v.type, ir.VectorType):
            st, dt = ir.VectorType(st, v.type.count), ir.VectorType(dt, v.type.count)
        if is_float(src) and is_float(dst):
            return b.fpext(v, dt) if itemsize(dst) > itemsize(src) else b.fptrunc(v, dt)
        if is_float(src):
            if dst == "bool":
                return b.fcmp_unordered("!=", v, ir.Constant(st, None))
            return b.fptoui(v, dt) if dst == "uint8" else b.fptosi(v, dt)
        if is_float(dst):
            return b.uitofp(v, dt) if src in ("uint8", "bool") else b.sitofp(v, dt)
        if dst == "bool":
            return b.icmp_unsigned("!=", v, ir.Constant(st, None))
        have = v.type.element if isinstance(v.type, ir.VectorType) else v.type
        sw, dw = have.width, ll_type(dst).width  # type: ignore[attr-defined]  # an index value may be narrow
        if dw == sw:
            return v
        if dw < sw:
            return b.trunc(v, dt)
        return b.zext(v, dt) if src in ("uint8", "bool") else b.sext(v, dt)
