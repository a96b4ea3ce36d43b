"""Hooks of the example targets convc-x86_64 and convc-aarch64: the three ways a target customizes kiln.

1. A pass at a named phase: :func:`unroll_short_loops` (``tensor_opt``) marks loops of at most four
   iterations for unrolling in every tensor function kiln generates.
2. A per-operator lowering override: :func:`conv2d_to_c` takes every 2D convolution before ``legalize`` does
   and calls the hand-written C kernel in convc.c instead; kiln compiles convc.c for the target with zig and
   links it into the package.
3. A code-generation override: :func:`relu_in_llvm` emits the code of every standalone ReLU kernel itself, as
   LLVM IR built with llvmlite, which kiln compiles for the target and links.

The target files name them (``[hooks]`` in convc-*.toml); this module sits next to them, in the directory
named by ``KILN_TARGET_PATH``, so no installation is needed.
"""

from __future__ import annotations

from pathlib import Path

import llvmlite.ir as ll
import numpy as np

from kiln.ir import Constant, Module
from kiln.ir import tensor as T
from kiln.transform import hook
from kiln.transform.codegen_override import CodegenRequest, LLVMCode, codegen_override
from kiln.transform.dispatch import OUT, CLibrary, lowering
from kiln.transform.patterns import Match

HERE = Path(__file__).parent
CONVC = CLibrary("convc", sources=[HERE / "convc.c"], headers=[HERE / "convc.h"])


# ------------------------------------------------------------------------------- 1. a pass at a named phase
@hook(when="after", phase="tensor_opt")
def unroll_short_loops(mod: Module) -> Module:
    """Mark serial loops of at most four iterations as unrolled, in every tensor function."""

    def visit(s: T.Stmt) -> T.Stmt:
        if isinstance(s, T.For):
            short = isinstance(s.extent, T.IntImm) and s.extent.value <= 4 and s.kind == "serial"
            return T.For(s.var, s.extent, visit(s.body), "unrolled" if short else s.kind, s.start)
        if isinstance(s, T.Seq):
            return T.Seq(tuple(visit(x) for x in s.stmts))
        if isinstance(s, T.IfThenElse):
            return T.IfThenElse(s.cond, visit(s.then), visit(s.else_) if s.else_ is not None else None)
        if isinstance(s, T.Allocate):
            return T.Allocate(s.buffer, visit(s.body))
        return s

    funcs = {
        name: f.with_(body=visit(f.body)) if isinstance(f, T.TensorFunction) else f
        for name, f in mod.functions.items()
    }
    return mod.with_functions(funcs)


# ------------------------------------------------------------------------- 2. a per-operator lowering override
@lowering("conv2d")
def conv2d_to_c(m: Match) -> object:
    """Every float32 2D convolution without groups goes to convc_conv2d_f32 (the others stay with kiln)."""
    node = m.root
    x, w = node.inputs[0], node.inputs[1]
    if x.type.dtype != "float32" or int(node.attrs.get("groups", 1)) != 1:
        return None
    n, c, h, wd = x.type.static_shape
    k, _, r, s = w.type.static_shape
    oh, ow = node.outputs[0].type.static_shape[2:]
    sh, sw = node.attrs.get("strides", (1, 1))
    pt, pl = tuple(node.attrs.get("pads", (0, 0, 0, 0)))[:2]
    dh, dw = node.attrs.get("dilations", (1, 1))
    bias = node.inputs[2] if len(node.inputs) > 2 else Constant("convc_no_bias", np.zeros(k, "float32"))
    return CONVC.call(
        "convc_conv2d_f32", x, w, bias, OUT, n, c, h, wd, k, r, s, sh, sw, pt, pl, dh, dw, oh, ow
    )


# ----------------------------------------------------------------------------- 3. a code-generation override
@codegen_override
def relu_in_llvm(req: CodegenRequest) -> LLVMCode | None:
    """Standalone float32 ReLU kernels: a loop written directly in LLVM IR (kiln compiles it for the target)."""
    f = req.func
    if f.attrs.get("ops") != ["relu"] or any(b.dtype != "float32" or b.strides for b in f.params):
        return None
    count = f.outputs[0].numel
    f32, i64, ptr = ll.FloatType(), ll.IntType(64), ll.PointerType()
    mod = ll.Module(name=req.symbol)
    fn = ll.Function(mod, ll.FunctionType(ll.VoidType(), [ptr, ptr]), req.symbol)
    src, dst = fn.args
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ll.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    i.add_incoming(ll.Constant(i64, 0), entry)
    v = b.load(b.gep(src, [i], source_etype=f32), typ=f32)
    zero = ll.Constant(f32, 0.0)
    b.store(b.select(b.fcmp_ordered(">", v, zero), v, zero), b.gep(dst, [i], source_etype=f32))
    nxt = b.add(i, ll.Constant(i64, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, ll.Constant(i64, count)), loop, done)
    b.position_at_end(done)
    b.ret_void()
    return LLVMCode(str(mod))
