"""The one IR verifier, run after every pass in tests (``verify_each``).

Graph functions: every value is defined before use (params, constants, earlier node results), each var is
defined once, ``call_tensor`` targets exist with matching parameter counts and shapes. Tensor functions: every
loop variable is bound by an enclosing loop, every buffer used is a parameter or allocated, index counts match
buffer ranks, constant indices are in bounds.

Operators' types are checked when the caller passes their type rules (``infer``): the IR does not know the
operators, the operator layer does (``verify(mod, infer=kiln.ops.type_rule)``); without them, graph nodes
are checked for structure only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .graph import Constant, GraphFunction, Var
from .module import Module
from .tensor import (
    Allocate,
    Buffer,
    For,
    IfThenElse,
    IntImm,
    Load,
    LoopVar,
    Seq,
    Stmt,
    Store,
    TensorFunction,
    stmt_exprs,
    walk_exprs,
)
from .types import TensorType

#: An operator's type inference: input types and attributes -> output types (raises on invalid inputs).
InferFn = Callable[[Sequence[TensorType], dict[str, Any]], Sequence[TensorType]]
#: Operator name -> its type inference, or None for an operator the caller does not know.
TypeRules = Callable[[str], InferFn | None]

#: Graph operators the IR itself defines (see :mod:`kiln.ir.graph`); they have no type rule.
SPECIAL_OPS = ("call_tensor", "call_extern", "view", "fused")


class VerifyError(ValueError):
    pass


def verify(mod: Module, infer: TypeRules | None = None) -> None:
    """Raise :class:`VerifyError` listing every problem found in ``mod``. ``infer`` looks up an operator's
    type inference (``kiln.ops.type_rule``); with it, every node's recorded result types must equal the
    inferred ones and unknown operators are errors."""
    errors: list[str] = []
    for f in mod.functions.values():
        if isinstance(f, GraphFunction):
            errors += _verify_graph(f, mod, infer)
        else:
            errors += _verify_tensor(f)
    if errors:
        raise VerifyError("IR verification failed:\n  " + "\n  ".join(errors[:20]))


def _verify_graph(f: GraphFunction, mod: Module, infer: TypeRules | None) -> list[str]:
    errs: list[str] = []
    defined: set[int] = {p.uid for p in f.params}
    if f.name == "main" and mod.attrs.get("dims"):  # the run-time dimension table: defined by the caller
        defined.add(mod.attrs["dims"]["var"])
    for n in f.nodes:
        where = f"{f.name}: node {n.name or n.op}"
        for v in n.inputs:
            if isinstance(v, Var) and v.uid not in defined:
                errs.append(f"{where}: input %{v.name} used before definition")
        for o in n.outputs:
            if o.uid in defined:
                errs.append(f"{where}: %{o.name} defined twice")
            defined.add(o.uid)
        if n.op == "call_tensor":
            errs += _verify_call_tensor(where, n.attrs.get("func", ""), [*n.inputs, *n.outputs], mod)
        elif n.op in SPECIAL_OPS or infer is None:
            continue
        elif (rule := infer(n.op)) is None:
            errs.append(f"{where}: unknown operator {n.op!r}")
        else:
            try:
                types = rule([v.type for v in n.inputs], n.attrs)
            except Exception as e:  # noqa: BLE001 - report, don't crash the verifier
                errs.append(f"{where}: {n.op} type inference failed: {e}")
                continue
            got = [o.type for o in n.outputs]
            if list(types) != got:
                errs.append(
                    f"{where}: recorded types {[str(t) for t in got]} != inferred {[str(t) for t in types]}"
                )
    for v in f.outputs:
        if isinstance(v, Var) and v.uid not in defined:
            errs.append(f"{f.name}: output %{v.name} is never defined")
        elif not isinstance(v, Var | Constant):
            errs.append(f"{f.name}: output {v!r} is not a value")
    return errs


def _verify_call_tensor(where: str, func: str, vals: list[Var | Constant], mod: Module) -> list[str]:
    tf = mod.functions.get(func)
    if not isinstance(tf, TensorFunction):
        return [f"{where}: call_tensor target {func!r} is not a tensor function"]
    if len(vals) != len(tf.params):
        return [f"{where}: {tf.name} takes {len(tf.params)} buffers, called with {len(vals)}"]
    errs = []
    for v, b in zip(vals, tf.params, strict=True):
        t = v.type
        if t.is_static and (t.numel != b.numel or t.dtype != b.dtype):
            errs.append(f"{where}: {v.name} {t} does not fit buffer {b!r} of {tf.name}")
    return errs


def _verify_tensor(f: TensorFunction) -> list[str]:
    errs: list[str] = []
    bufs: set[int] = {b.uid for b in f.params}

    def check_access(b: Buffer, idx: tuple, what: str) -> None:
        if b.uid not in bufs:
            errs.append(f"{f.name}: {what} of unknown buffer {b.name}")
        if len(idx) != b.ndim:
            errs.append(f"{f.name}: {what} of {b.name} with {len(idx)} indices, rank {b.ndim}")
        for d, i in enumerate(idx):
            if isinstance(i, IntImm) and d < b.ndim and not 0 <= i.value < b.shape[d]:
                errs.append(f"{f.name}: {what} of {b.name} index {i.value} out of bounds in dim {d}")

    def visit(s: Stmt, bound: set[int]) -> None:
        for e in stmt_exprs(s):
            for x in walk_exprs(e):
                if isinstance(x, LoopVar) and x.uid not in bound:
                    errs.append(f"{f.name}: loop variable {x.name} used outside its loop")
                elif isinstance(x, Load):
                    check_access(x.buffer, x.indices, "load")
        if isinstance(s, Store):
            check_access(s.buffer, s.indices, "store")
        if isinstance(s, For):
            visit(s.body, bound | {s.var.uid})
        elif isinstance(s, Seq):
            for st in s.stmts:
                visit(st, bound)
        elif isinstance(s, IfThenElse):
            visit(s.then, bound)
            if s.else_ is not None:
                visit(s.else_, bound)
        elif isinstance(s, Allocate):
            bufs.add(s.buffer.uid)
            visit(s.body, bound)

    visit(f.body, set())
    return errs
