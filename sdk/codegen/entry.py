"""The AOT entry ``<prefix>_entry`` (see docs/topics/runtime-abi.md) and the weights blob layout.

The model's global symbols carry its prefix, module attribute ``symbol_prefix`` (default
:data:`kiln.runtime_c.abi.DEFAULT_PREFIX`; the names are :mod:`kiln.runtime_c.abi`'s), so several models link
into one program. Each kernel call that needs scratch memory gets its own slice of the workspace, placed by
plan-memory (``memory_plan["scratch"]``, by node position) among the tensors that are dead during the call.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from ..ir import Constant, Module, Sym, Value
from ..ir.tensor import workspace_bytes
from ..runtime_c import abi

PTR = ir.PointerType()
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)


def layout_constants(mod: Module) -> tuple[bytes, dict[int, int]]:
    """Pack every constant used by ``main`` into one blob (entries aligned to ``abi.ALIGNMENT``, first-use order)."""
    parts: list[bytes] = []
    offsets: dict[int, int] = {}
    size = 0
    for c in mod.main.constants():
        if c.uid in offsets:
            continue
        data = np.ascontiguousarray(c.data).tobytes()
        pad = (-size) % abi.ALIGNMENT
        parts.append(b"\0" * pad)
        size += pad
        offsets[c.uid] = size
        parts.append(data)
        size += len(data)
    return b"".join(parts), offsets


def emit_entry(
    llmod: ir.Module, mod: Module, funcs: dict[str, ir.Function], const_offsets: dict[int, int]
) -> list[str]:
    """Define ``<prefix>_entry``; returns the kernel names in kernel-index order."""
    main = mod.main
    plan = mod.attrs["memory_plan"]
    storage: dict[int, tuple[str, int]] = plan["storage"]
    scratch: dict[int, int] = plan["scratch"]
    prefix = str(mod.attrs.get("symbol_prefix") or abi.DEFAULT_PREFIX)
    weights = ir.GlobalVariable(llmod, ir.ArrayType(I8, 0), abi.weights_symbol(prefix))
    weights.linkage = "external"
    weights.global_constant = True
    begin = ir.Function(llmod, ir.FunctionType(ir.VoidType(), [PTR, I32]), abi.PROFILE_BEGIN_SYMBOL)
    end = ir.Function(llmod, ir.FunctionType(ir.VoidType(), [PTR, I32]), abi.PROFILE_END_SYMBOL)
    fn = ir.Function(llmod, ir.FunctionType(I32, [PTR, PTR, PTR, PTR, PTR]), abi.entry_symbol(prefix))
    fn.attributes.add("nounwind")
    inputs, outputs, ws, prof, dims = fn.args
    for a, n in zip(fn.args, ("inputs", "outputs", "workspace", "prof", "dims"), strict=True):
        a.name = n
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    profiling = b.icmp_unsigned("!=", prof, ir.Constant(PTR, None))
    dim_table = mod.attrs.get("dims")
    if dim_table:
        _fill_dims(b, dims, dim_table["table"], dim_table["named"])

    def slot(array: ir.Value, i: int) -> ir.Value:
        return b.load(b.gep(array, [ir.Constant(I64, i)], source_etype=PTR), typ=PTR)

    in_ptrs = [slot(inputs, i) for i in range(len(main.params))]
    out_ptrs = [slot(outputs, j) for j in range(len(main.outputs))]

    def byte_ptr(base: ir.Value, off: int) -> ir.Value:
        return b.gep(base, [ir.Constant(I64, off)], source_etype=I8) if off else base

    def pointer(v: Value) -> ir.Value:
        if dim_table and v.uid == dim_table["var"]:
            return dims
        if isinstance(v, Constant):
            return byte_ptr(weights, const_offsets[v.uid])
        kind, where = storage[v.uid]
        if kind == "input":
            return in_ptrs[where]
        if kind == "output":
            return out_ptrs[where]
        if kind == "const":
            return byte_ptr(weights, const_offsets[where])
        return byte_ptr(ws, where)

    kernels: list[str] = []
    for pos, node in enumerate(main.nodes):
        if node.op == "view":
            continue
        if node.op == "call_tensor":
            name = node.attrs["func"]
            callee = funcs[name]
            tf = mod.tensor_functions()[name]
        elif node.op == "call_extern":
            name = node.attrs["symbol"]
            callee = llmod.globals.get(name) or ir.Function(
                llmod, ir.FunctionType(ir.VoidType(), [PTR] * (len(node.inputs) + len(node.outputs))), name
            )
            tf = None
        else:
            raise ValueError(f"codegen: main still has graph operator {node.op!r}; run legalize first")
        if name not in kernels:
            kernels.append(name)
        kid = ir.Constant(I32, kernels.index(name))
        args = [pointer(v) for v in (*node.inputs, *node.outputs)]
        if tf is not None and workspace_bytes(tf):
            args.append(byte_ptr(ws, scratch[pos]))
        with b.if_then(profiling, likely=False):
            b.call(begin, [prof, kid])
        b.call(callee, args)
        with b.if_then(profiling, likely=False):
            b.call(end, [prof, kid])
    b.ret(ir.Constant(I32, 0))
    return kernels


def _fill_dims(b: ir.IRBuilder, dims: ir.Value, table: list[Sym], named: int) -> None:
    """Entries ``named..`` of the dimension table, computed from the named sizes the caller wrote first, with
    the floor division and modulo of :class:`~kiln.ir.Sym`."""

    def slot(k: int) -> ir.Value:
        return b.gep(dims, [ir.Constant(I64, k)], source_etype=I64)

    def value(d: Sym) -> ir.Value:
        total: ir.Value = ir.Constant(I64, 0)
        for mono, coeff in d.terms:
            term: ir.Value = ir.Constant(I64, coeff)
            for atom in mono:
                if isinstance(atom, str):
                    x = b.load(slot(table.index(Sym(atom))), typ=I64)
                else:  # floor division / modulo by k > 0 (C's truncate toward zero, then corrected)
                    op, inner, k = atom
                    v, kk = value(inner), ir.Constant(I64, k)
                    q, r = b.sdiv(v, kk), b.srem(v, kk)
                    negative = b.icmp_signed("<", r, ir.Constant(I64, 0))
                    if op == "//":
                        x = b.sub(q, b.zext(negative, I64))
                    else:
                        x = b.add(r, b.select(negative, kk, ir.Constant(I64, 0)))
                term = b.mul(term, x)
            total = b.add(total, term)
        return total

    for k in range(named, len(table)):
        b.store(value(table[k]), slot(k))
