"""Tensor function -> LLVM IR function (llvmlite.ir): the statements, over the expressions, addresses and
counted loops of :mod:`kiln.codegen.scalar`.

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

import llvmlite.ir as ir

from ..ir import tensor as T
from ..ir.tensor import workspace_bytes
from ..runtime_c import abi
from . import vectorize
from .scalar import I64, FunctionContext, ScalarCodegen

PTR = ir.PointerType()

MAX_UNROLL = 64


class TensorCodegen(ScalarCodegen):
    """Statements: loops, stores, conditionals and allocations, over :class:`ScalarCodegen`'s expressions."""

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
                val = c.b.zext(val, self.mem_type("bool"))
            elif s.value.dtype != s.buffer.dtype:
                val = self.convert(c, val, s.value.dtype, s.buffer.dtype)
            c.b.store(self.fit(c, val, self.mem_type(s.buffer.dtype)), ptr)
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
            ty = ir.ArrayType(self.mem_type(buf.dtype), buf.numel)
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

        def body() -> None:
            self.stmt(c, s.body)

        if s.kind == "vectorized" and self.vector_bits and vectorize.emit_vector_loop(self, c, s, body):
            return
        if (
            s.kind == "unrolled"
            and isinstance(extent, T.IntImm)
            and isinstance(start, T.IntImm)
            and extent.value <= MAX_UNROLL
        ):
            for i in range(extent.value):
                c.vars[s.var.uid] = self.index_const(start.value + i)
                self.stmt(c, s.body)
            return
        if isinstance(extent, T.IntImm) and extent.value <= 0:
            return
        self.counted_loop(c, s.var, self.expr(c, start), extent, body)
