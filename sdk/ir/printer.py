"""A readable text form of functions, for humans and for tests (not a parseable format). A module's text
is its functions' in order, blank-line separated (:func:`kiln.ir.module.print_module`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .graph import Constant, GraphFunction, Value
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
)


def _attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array{list(v.shape)}"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v)


def _val(v: Value) -> str:
    return f"@{v.name}" if isinstance(v, Constant) else f"%{v.name}"


def print_graph(f: GraphFunction) -> str:
    lines = [f"graph {f.name}({', '.join(f'%{p.name}: {p.type}' for p in f.params)}) {{"]
    for n in f.nodes:
        outs = ", ".join(f"%{o.name}: {o.type}" for o in n.outputs)
        attrs = ", ".join(f"{k}={_attr(v)}" for k, v in sorted(n.attrs.items()))
        args = ", ".join(_val(v) for v in n.inputs)
        lines.append(f"  {outs} = {n.op}({args}{'; ' + attrs if attrs else ''})")
    lines.append(f"  return {', '.join(_val(v) for v in f.outputs)}")
    lines.append("}")
    return "\n".join(lines)


def print_expr(e: Expr) -> str:
    if isinstance(e, IntImm):
        return str(e.value) if e.dtype == "int64" else f"{e.dtype}({e.value})"
    if isinstance(e, FloatImm):
        return f"{e.value:g}f" if e.dtype == "float32" else f"{e.dtype}({e.value:g})"
    if isinstance(e, LoopVar):
        return e.name
    if isinstance(e, BinOp):
        if e.op in ("min", "max"):
            return f"{e.op}({print_expr(e.a)}, {print_expr(e.b)})"
        return f"({print_expr(e.a)} {e.op} {print_expr(e.b)})"
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(print_expr(a) for a in e.args)})"
    if isinstance(e, Select):
        return f"select({print_expr(e.cond)}, {print_expr(e.t)}, {print_expr(e.f)})"
    if isinstance(e, Cast):
        return f"{e.dtype}({print_expr(e.value)})"
    if isinstance(e, Load):
        return f"{e.buffer.name}[{', '.join(print_expr(i) for i in e.indices)}]"
    return repr(e)


def _stmt(s: Stmt, ind: str, out: list[str]) -> None:
    if isinstance(s, Seq):
        for x in s.stmts:
            _stmt(x, ind, out)
    elif isinstance(s, For):
        bounds = print_expr(s.extent)
        if not (isinstance(s.start, IntImm) and s.start.value == 0):
            bounds = f"{print_expr(s.start)}, {print_expr(s.start + s.extent)}"  # range(start, stop)
        kind = "" if s.kind == "serial" else f"  # {s.kind}"
        out.append(f"{ind}for {s.var.name} in range({bounds}):{kind}")
        _stmt(s.body, ind + "  ", out)
    elif isinstance(s, Store):
        idx = ", ".join(print_expr(i) for i in s.indices)
        out.append(f"{ind}{s.buffer.name}[{idx}] = {print_expr(s.value)}")
    elif isinstance(s, IfThenElse):
        out.append(f"{ind}if {print_expr(s.cond)}:")
        _stmt(s.then, ind + "  ", out)
        if s.else_ is not None:
            out.append(f"{ind}else:")
            _stmt(s.else_, ind + "  ", out)
    elif isinstance(s, Allocate):
        out.append(f"{ind}{_buf(s.buffer)} = alloc({s.buffer.scope})")
        _stmt(s.body, ind, out)
    else:
        out.append(f"{ind}{s!r}")


def _buf(b: Buffer) -> str:
    strides = f", strides={list(b.strides)}" if b.strides else ""
    return f"{b.name}: {b.dtype}{list(b.shape)}{strides}"


def print_tensor(f: TensorFunction) -> str:
    ins = ", ".join(_buf(b) for b in f.inputs)
    outs = ", ".join(_buf(b) for b in f.outputs)
    ops = f"  # ops: {', '.join(f.attrs['ops'])}" if f.attrs.get("ops") else ""
    out = [f"tensor {f.name}({ins}) -> ({outs}):{ops}"]
    _stmt(f.body, "  ", out)
    return "\n".join(out)


def print_function(f: GraphFunction | TensorFunction) -> str:
    return print_graph(f) if isinstance(f, GraphFunction) else print_tensor(f)
