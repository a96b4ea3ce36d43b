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

``parallel`` loops (when the target has an OS: ``threads=True``) are outlined: the loop over ``[begin, end)``
becomes an internal function taking every buffer pointer and outer loop index the body uses as parameters
(pointers ``noalias``, like the kernel's own), behind a trampoline ``void body(ptr context, i64 begin, i64
end)`` that unpacks them from a struct on the caller's stack; the loop itself becomes one call of the runtime's
``kiln_parallel_for(body, context, extent)`` (:data:`kiln.runtime_c.abi.PARALLEL_FOR_SYMBOL`, threads.h),
which runs chunks of the range on its worker threads. ``workspace`` buffers allocated inside the body are
stack arrays of the outlined function, so each chunk has its own; a body whose stack buffers would exceed
half of a worker's stack (:data:`kiln.runtime_c.abi.THREAD_STACK_BYTES`) runs serially instead. A parallel
loop inside another one's body, and every parallel loop of a bare-metal target (``threads=False``), is an
ordinary serial loop: firmware has no thread code.
"""

from __future__ import annotations

import llvmlite.ir as ir

from ..ir import tensor as T
from ..ir.tensor import workspace_bytes
from ..runtime_c import abi
from . import vectorize
from .mathlib import MathLib
from .scalar import I64, FunctionContext, ScalarCodegen

PTR = ir.PointerType()

MAX_UNROLL = 64


class TensorCodegen(ScalarCodegen):
    """Statements: loops, stores, conditionals and allocations, over :class:`ScalarCodegen`'s expressions.
    ``threads``: run ``parallel`` loops on the runtime's thread pool (targets with an OS)."""

    def __init__(
        self,
        module: ir.Module,
        math: MathLib,
        vector_bits: int = 0,
        index_bits: int = 64,
        threads: bool = False,
    ) -> None:
        super().__init__(module, math, vector_bits, index_bits)
        self.threads = threads

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
        if buf.scope == "local" or (buf.scope == "workspace" and c.in_parallel):
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
        if s.kind == "parallel" and self.threads and not c.in_parallel and self._parallel(c, s):
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

    # ------------------------------------------------------------------------------------------ parallel loops
    def _parallel(self, c: FunctionContext, s: T.For) -> bool:
        """Emit ``s`` as an outlined body run by ``kiln_parallel_for`` (module docstring); False (nothing
        emitted) when its stack buffers would not fit a worker's stack."""
        stmts = list(T.walk_stmts(s.body))
        allocs = [x.buffer for x in stmts if isinstance(x, T.Allocate)]
        if sum(abi.align_up(b.nbytes) for b in allocs) > abi.THREAD_STACK_BYTES // 2:
            return False
        inner = {b.uid for b in allocs}
        bound = {x.var.uid for x in stmts if isinstance(x, T.For)} | {s.var.uid}
        bufs: dict[int, None] = {}
        lvars: dict[int, None] = {}
        exprs = [s.start, *(e for x in stmts for e in T.stmt_exprs(x))]
        for x in stmts:
            if isinstance(x, T.Store) and x.buffer.uid not in inner:
                bufs[x.buffer.uid] = None
        for y in (y for e in exprs for y in T.walk_exprs(e)):
            if isinstance(y, T.Load) and y.buffer.uid not in inner:
                bufs[y.buffer.uid] = None
            elif isinstance(y, T.LoopVar) and y.uid not in bound and y.uid in c.vars:
                lvars[y.uid] = None
        ptr_uids = [u for u in bufs if u in c.ptrs]
        var_uids = list(lvars)
        values = [c.ptrs[u] for u in ptr_uids] + [c.vars[u] for u in var_uids]
        types = [v.type if u in lvars else PTR for u, v in zip([*ptr_uids, *var_uids], values, strict=True)]

        name = self.module.get_unique_name(f"{c.fn.name}.{s.var.name}.parallel")
        impl = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [*types, I64, I64]), name)
        impl.linkage = "internal"
        impl.attributes.add("nounwind")
        for arg in impl.args[: len(ptr_uids)]:
            arg.add_attribute("noalias")
        entry = impl.append_basic_block("entry")
        first = impl.append_basic_block("body")
        ic = FunctionContext(ir.IRBuilder(first), impl, entry, in_parallel=True)
        ic.ptrs.update(zip(ptr_uids, impl.args, strict=False))
        ic.vars.update(zip(var_uids, impl.args[len(ptr_uids) :], strict=False))
        begin, end = impl.args[-2:]
        count = T.LoopVar("count")
        ic.vars[count.uid] = self.fit(ic, ic.b.sub(end, begin), self.index)
        lo = ic.b.add(self.fit(ic, begin, self.index), self.fit(ic, self.expr(ic, s.start), self.index))
        self.counted_loop(ic, s.var, lo, count, lambda: self.stmt(ic, s.body))
        ic.b.ret_void()
        ir.IRBuilder(entry).branch(first)

        struct = ir.LiteralStructType(types) if types else ir.LiteralStructType([I64])
        tramp = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]), f"{name}.body")
        tramp.linkage = "internal"
        tramp.attributes.add("nounwind")
        tb = ir.IRBuilder(tramp.append_basic_block("entry"))
        ctx_arg, b_arg, e_arg = tramp.args
        zero = ir.Constant(ir.IntType(32), 0)
        loaded = [
            tb.load(tb.gep(ctx_arg, [zero, ir.Constant(ir.IntType(32), i)], source_etype=struct), typ=t)
            for i, t in enumerate(types)
        ]
        tb.call(impl, [*loaded, b_arg, e_arg])
        tb.ret_void()

        slot = ir.IRBuilder(c.entry).alloca(struct, name=f"{s.var.name}.context")
        slot.type = PTR  # llvmlite types allocas as typed pointers; LLVM 22 IR only has opaque ones
        for i, v in enumerate(values):
            c.b.store(v, c.b.gep(slot, [zero, ir.Constant(ir.IntType(32), i)], source_etype=struct))
        run = self.module.globals.get(abi.PARALLEL_FOR_SYMBOL) or ir.Function(
            self.module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64]), abi.PARALLEL_FOR_SYMBOL
        )
        tramp.type = PTR  # passed as a value: an opaque pointer (llvmlite would print a typed one)
        c.b.call(run, [tramp, slot, self.fit(c, self.expr(c, s.extent), I64)])
        return True
