"""Tensor function -> LLVM IR function (llvmlite.ir).

Signature: ``void name(ptr noalias p0, ..., ptr noalias pN [, ptr scratch])``; buffers are addressed as flat
arrays with their element strides, loops become counted loops with phi nodes (``unrolled`` loops with a
constant trip count are replicated here), ``local`` allocations become entry-block allocas (so SROA can keep
accumulator tiles in registers) and ``workspace`` allocations are carved from the trailing ``scratch`` pointer.
``vectorized`` loops with a constant trip count whose body is straight-line stores are emitted as SIMD code
for the target's vector width here (see :mod:`kiln.codegen.vectorize`): every load and store is unit-stride
or loop-invariant, so each becomes one vector access or a broadcast. Other ``vectorized`` loops (gathers,
math calls, nested loops) are left to LLVM's loop and SLP vectorizers, which the code is shaped for
(unit-stride inner loops, noalias parameters, constant trip counts).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from ..ir import tensor as T
from ..ir.tensor import workspace_bytes
from ..ir.types import is_float, itemsize
from ..runtime_c import abi
from . import vectorize
from .context import FunctionContext
from .mathlib import MathLib

PTR = ir.PointerType()
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
MAX_UNROLL = 64
# Allow a*b+c to become one fused multiply-add (like C's -ffp-contract=fast); nothing else is relaxed.
FP_FLAGS = ("contract",)


def ll_type(dtype: str) -> ir.Type:
    return _LL_TYPES[dtype]


class TensorCodegen:
    def __init__(self, module: ir.Module, math: MathLib, vector_bits: int = 0) -> None:
        self.module = module
        self.math = math
        self.vector_bits = vector_bits

    @staticmethod
    def mem_type(dtype: str) -> ir.Type:
        """The LLVM type of one element of ``dtype`` in memory (``bool`` is a byte there, ``i1`` in values)."""
        return _MEM_TYPES[dtype]

    def emit(self, f: T.TensorFunction) -> ir.Function:
        ws = workspace_bytes(f)
        nparams = len(f.params) + (1 if ws else 0)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * nparams), f.name)
        fn.attributes.add("nounwind")
        fn.linkage = "internal"  # only kiln_model_entry is exported from the object
        for i, arg in enumerate(fn.args):
            arg.add_attribute("noalias")
            arg.name = f.params[i].name if i < len(f.params) else "scratch"
        entry = fn.append_basic_block("entry")
        body = fn.append_basic_block("body")
        ctx = FunctionContext(ir.IRBuilder(body), fn, entry)
        for p, arg in zip(f.params, fn.args, strict=False):
            ctx.ptrs[p.uid] = arg
        if ws:
            ctx.scratch = fn.args[-1]
        self.stmt(ctx, f.body)
        ctx.b.ret_void()
        ir.IRBuilder(entry).branch(body)
        return fn

    # ----------------------------------------------------------------------------------------- statements
    def stmt(self, c: FunctionContext, s: T.Stmt) -> None:
        if isinstance(s, T.Seq):
            for x in s.stmts:
                self.stmt(c, x)
        elif isinstance(s, T.For):
            self._for(c, s)
        elif isinstance(s, T.Store):
            ptr = self.addr(c, s.buffer, s.indices)
            val = self.expr(c, s.value)
            if s.buffer.dtype == "bool":
                val = c.b.zext(val, _MEM_TYPES["bool"])
            elif s.value.dtype != s.buffer.dtype:
                val = self.convert(c, val, s.value.dtype, s.buffer.dtype)
            c.b.store(val, ptr)
        elif isinstance(s, T.IfThenElse):
            cond = self.expr(c, s.cond)
            if s.else_ is None:
                with c.b.if_then(cond):
                    self.stmt(c, s.then)
            else:
                with c.b.if_else(cond) as (then, otherwise):
                    with then:
                        self.stmt(c, s.then)
                    with otherwise:
                        self.stmt(c, s.else_)
        elif isinstance(s, T.Allocate):
            self._allocate(c, s)
        else:
            raise TypeError(f"codegen: unknown statement {s!r}")

    def _allocate(self, c: FunctionContext, s: T.Allocate) -> None:
        buf = s.buffer
        if buf.scope == "local":
            eb = ir.IRBuilder(c.entry)
            ty = ir.ArrayType(_MEM_TYPES[buf.dtype], buf.numel)
            slot = eb.alloca(ty, name=buf.name)
            slot.align = abi.ALIGNMENT
            slot.type = PTR  # llvmlite types allocas as typed pointers; LLVM 22 IR only has opaque ones
            c.ptrs[buf.uid] = slot
            self.stmt(c, s.body)
        elif buf.scope == "workspace":
            if c.scratch is None:
                raise ValueError("workspace allocation without a scratch parameter")
            off = c.scratch_off
            c.ptrs[buf.uid] = c.b.gep(c.scratch, [ir.Constant(I64, off)], source_etype=ir.IntType(8))
            c.scratch_off += abi.align_up(buf.nbytes)
            self.stmt(c, s.body)
            c.scratch_off = off
        else:
            raise ValueError(f"cannot allocate buffer {buf.name} in scope {buf.scope!r}")

    def _for(self, c: FunctionContext, s: T.For) -> None:
        start, extent = s.start, s.extent
        if s.kind == "vectorized" and self.vector_bits and vectorize.emit_vector_loop(self, c, s):
            return
        if (
            s.kind == "unrolled"
            and isinstance(extent, T.IntImm)
            and isinstance(start, T.IntImm)
            and extent.value <= MAX_UNROLL
        ):
            for i in range(extent.value):
                c.vars[s.var.uid] = ir.Constant(I64, start.value + i)
                self.stmt(c, s.body)
            return
        if isinstance(extent, T.IntImm) and extent.value <= 0:
            return
        self.counted_loop(c, s.var, self.expr(c, start), extent, lambda: self.stmt(c, s.body))

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
        hi = b.add(lo, self.expr(c, extent))
        pre = b.block
        header = b.append_basic_block(f"{var.name}.loop")
        after = b.append_basic_block(f"{var.name}.end")
        if not (isinstance(extent, T.IntImm) and extent.value > 0):
            b.cbranch(b.icmp_signed("<", lo, hi), header, after)
        else:
            b.branch(header)
        b.position_at_end(header)
        iv = b.phi(I64, name=var.name)
        iv.add_incoming(lo, pre)
        c.vars[var.uid] = iv
        body()
        nxt = b.add(iv, ir.Constant(I64, step), flags=["nsw", "nuw"])
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
            if isinstance(idx, T.IntImm):
                const_off += idx.value * stride
                continue
            v = self.expr(c, idx)
            if stride != 1:
                v = c.b.mul(v, ir.Constant(I64, stride), flags=["nsw"])
            off = v if off is None else c.b.add(off, v, flags=["nsw"])
        if off is None:
            off = ir.Constant(I64, const_off)
        elif const_off:
            off = c.b.add(off, ir.Constant(I64, const_off), flags=["nsw"])
        return c.b.gep(base, [off], inbounds=True, source_etype=_MEM_TYPES[buf.dtype])

    def expr(self, c: FunctionContext, e: T.Expr) -> ir.Value:
        b = c.b
        if isinstance(e, T.IntImm):
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
            return b.select(self.expr(c, e.cond), self.expr(c, e.t), self.expr(c, e.f))
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
        sw, dw = ll_type(src).width, ll_type(dst).width  # type: ignore[attr-defined]
        if dw == sw:
            return v
        if dw < sw:
            return b.trunc(v, dt)
        return b.zext(v, dt) if src in ("uint8", "bool") else b.sext(v, dt)
