"""loop: ONNX Loop run as a real loop (the importer unrolls loops whose trip count and condition are known at
import; this operator is for the others: a trip count or a condition computed at run time).

Inputs: the trip count (int64, 0-d), the initial condition (bool, 0-d), the ``num_carried`` initial values of
the loop-carried state, then the values the body reads from outside (captured). ``attrs["body"]`` is a graph
function with parameters ``(iteration, condition, *carried, *captured)`` and outputs ``(condition,
*carried, *scanned)``, every output produced by one of its nodes. Outputs: the final carried values, then
the ``num_scanned`` scan outputs stacked along a new first axis of ``max_trip`` rows (the trip count must be a
compile-time constant for them); a loop that stops early (its condition turns false) leaves the remaining rows
zero (a bounded output, like kiln.ops.selection's).

Lowered into one tensor function: the body's nodes are lowered in order (their intermediate values in
workspace buffers), followed by the state update, under ``if (condition and iteration < trip count)``. With
a known trip count that is a counted loop; otherwise the guard sits in a nest of ``WHILE_LEVELS`` loops of two
iterations each, so the loop runs while the condition holds (up to 2^62 iterations) and finishes within a
few dozen tests of the guard once it is false.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import Constant, GraphFunction, Var
from ..ir import tensor as T
from ..ir.types import TensorType, np_dtype
from .base import LowerContext, OpDef, elementwise_copy, get_op, register

WHILE_LEVELS = 62


class Loop(OpDef):
    name = "loop"
    kind = "opaque"
    flops_per_element = 0

    def _parts(self, attrs: dict[str, Any]) -> tuple[GraphFunction, int, int, int | None]:
        body: GraphFunction = attrs["body"]
        carried, scanned = int(attrs["num_carried"]), int(attrs.get("num_scanned", 0))
        max_trip = attrs.get("max_trip")
        if scanned and max_trip is None:
            raise self.error("scan outputs need a trip count known at compile time (max_trip)")
        return body, carried, scanned, None if max_trip is None else int(max_trip)

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        body, carried, scanned, max_trip = self._parts(attrs)
        if len(inputs) != len(body.params) or len(body.outputs) != 1 + carried + scanned:
            raise self.error(
                f"the body takes {len(body.params)} values and gives {len(body.outputs)}; the node has "
                f"{len(inputs)} inputs, {carried} carried and {scanned} scanned values"
            )
        for k in range(carried):
            have, give = inputs[2 + k], body.outputs[1 + k].type
            if have.shape != give.shape or have.dtype != give.dtype:
                raise self.error(
                    f"loop-carried value {k} starts as {have} and the body makes it {give}; kiln needs the "
                    "same shape and type in every iteration"
                )
        scans = [
            TensorType((max_trip or 0, *v.type.shape), v.type.dtype) for v in body.outputs[1 + carried :]
        ]
        return [*inputs[2 : 2 + carried], *scans]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        from .interpreter import interpret

        body, carried, scanned, max_trip = self._parts(attrs)
        trip, going = int(np.asarray(inputs[0]).reshape(())), bool(np.asarray(inputs[1]).reshape(()))
        state = list(inputs[2 : 2 + carried])
        captured = list(inputs[2 + carried :])
        outs = body.outputs
        scans = [
            np.zeros((max_trip or 0, *v.type.static_shape), np_dtype(v.type.dtype))
            for v in outs[1 + carried :]
        ]
        i = 0
        while going and i < trip:
            args = [np.array(i, np.int64), np.array(going), *state, *captured]
            res = interpret(body, {p.name: a for p, a in zip(body.params, args, strict=True)})
            going = bool(res[outs[0].name])
            state = [res[v.name] for v in outs[1 : 1 + carried]]
            for s, v in zip(scans, outs[1 + carried :], strict=True):
                s[i] = res[v.name]
            i += 1
        return [*(np.asarray(s) for s in state), *scans]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        body, carried, scanned, max_trip = self._parts(attrs)
        plain = LowerContext(ctx.target, None, ctx.name)
        it = T.Buffer(f"{ctx.name}_it", (), "int64", scope="local")
        cond = T.Buffer(f"{ctx.name}_cond", (), "bool", scope="local")
        state = [
            T.Buffer(f"{ctx.name}_s{k}", b.shape, b.dtype, scope="workspace")
            for k, b in enumerate(ins[2 : 2 + carried])
        ]
        scans = [
            T.Buffer(f"{ctx.name}_y{k}", b.shape, b.dtype, scope="workspace")
            for k, b in enumerate(outs[carried:])
        ]
        bufs: dict[Var, T.Buffer] = dict(
            zip(body.params, [it, cond, *state, *ins[2 + carried :]], strict=True)
        )
        temps: list[T.Buffer] = []
        stmts: list[T.Stmt] = []
        for j, n in enumerate(body.nodes):
            for v in n.inputs:
                if isinstance(v, Constant):
                    raise self.error(f"the body's constant {v.name!r} must be a parameter (captured)")
            out_bufs = []
            for o in n.outputs:
                b = T.Buffer(
                    f"{ctx.name}_v{len(temps)}", o.type.static_shape, o.type.dtype, scope="workspace"
                )
                temps.append(b)
                bufs[o] = b
                out_bufs.append(b)
            sub = LowerContext(ctx.target, None, f"{ctx.name}_n{j}")
            stmts.append(get_op(n.op).lower(sub, [bufs[v] for v in n.inputs], out_bufs, n.attrs))  # type: ignore[index]
        results = [bufs[v] for v in body.outputs]  # type: ignore[index]
        z: tuple[T.Expr, ...] = ()
        stmts += [elementwise_copy(plain, r, s) for r, s in zip(results[1 : 1 + carried], state, strict=True)]
        stmts += [
            _store_row(y, it[z], r, f"{ctx.name}_c")
            for r, y in zip(results[1 + carried :], scans, strict=True)
        ]
        stmts += [T.Store(cond, z, results[0][z]), T.Store(it, z, it[z] + 1)]
        going = T.logical_and(cond[z], it[z] < ins[0][z])
        loop: T.Stmt = T.IfThenElse(going, T.seq(*stmts))
        if max_trip is not None:
            loop = _repeat(max_trip, loop, f"{ctx.name}_t")
        else:
            for level in range(WHILE_LEVELS):
                loop = _repeat(2, T.IfThenElse(going, loop), f"{ctx.name}_w{level}")
        init: list[T.Stmt] = [T.Store(it, z, T.IntImm(0)), T.Store(cond, z, ins[1][z])]
        init += [elementwise_copy(plain, b, s) for b, s in zip(ins[2 : 2 + carried], state, strict=True)]
        init += [_zero(y, f"{ctx.name}_z") for y in scans]
        finish = [
            elementwise_copy(ctx if k == 0 else plain, src, dst)
            for k, (src, dst) in enumerate(zip([*state, *scans], outs, strict=True))
        ]
        stmt: T.Stmt = T.seq(*init, loop, *finish)
        for b in [*temps, *state, *scans, it, cond]:
            stmt = T.Allocate(b, stmt)
        return stmt


def _repeat(n: int, body: T.Stmt, name: str) -> T.Stmt:
    return T.For(T.LoopVar(name), T.IntImm(n), body)


def _store_row(y: T.Buffer, row: T.Expr, r: T.Buffer, name: str) -> T.Stmt:
    """``y[row] = r`` (``y`` has one more, leading, axis than ``r``)."""
    rows = y.with_(shape=(y.shape[0], r.numel), strides=())
    flat = r.with_(shape=(r.numel,), strides=())
    return T.loop(r.numel, lambda e: T.Store(rows, (row, e), flat[e]), name=name)


def _zero(y: T.Buffer, name: str) -> T.Stmt:
    flat = y.with_(shape=(y.numel,), strides=())
    return T.loop(y.numel, lambda e: T.Store(flat, (e,), T.const(0, y.dtype)), name=name)


register(Loop())
