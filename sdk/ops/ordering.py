"""Operators that walk one axis in order: arg_max/arg_min, top_k, cumsum/cumprod, hardmax.

Each computes, per index of the other axes, a result along ``axis``: the position of the extreme value
(first or last of equal ones), the ``k`` largest or smallest values with their positions (ties: the lower
position first, as ONNX TopK specifies), the running sum, or the one-hot of the first maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, normalize_axis, register

Index = tuple[T.Expr, ...]


def _at(idx: Index, axis: int, j: T.Expr) -> Index:
    return tuple(j if d == axis else i for d, i in enumerate(idx))


def _outer(name: str, shape: Sequence[int], axis: int, body: Callable[[Index], T.Stmt]) -> T.Stmt:
    """A loop nest over every dimension but ``axis``; ``body`` gets a full index with 0 at ``axis``."""
    others = [shape[d] for d in range(len(shape)) if d != axis]

    def inner(oidx: tuple[T.LoopVar, ...]) -> T.Stmt:
        it = iter(oidx)
        return body(tuple(T.IntImm(0) if d == axis else next(it) for d in range(len(shape))))

    if not others:
        return inner(())
    return T.loop_nest(others, inner, prefix=f"{name}_o")


class ArgExtreme(OpDef):
    """ONNX ArgMax/ArgMin along ``axis`` (default 0), ``keepdims`` (default 1), ``select_last_index``
    (default 0: the first of equal extremes); int64 result."""

    kind = "reduce"
    largest = True

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        axis = normalize_axis(int(attrs.get("axis", 0)), x.ndim, self.name)
        keep = bool(attrs.get("keepdims", 1))
        shape = tuple(1 if d == axis else x.shape[d] for d in range(x.ndim) if keep or d != axis)
        return [TensorType(shape, "int64")]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        axis = normalize_axis(int(attrs.get("axis", 0)), x.ndim, self.name)
        fn = np.argmax if self.largest else np.argmin
        if int(attrs.get("select_last_index", 0)):
            r = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            r = fn(x, axis=axis)
        if bool(attrs.get("keepdims", 1)):
            r = np.expand_dims(r, axis)
        return [np.asarray(r, dtype=np.int64)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        axis = normalize_axis(int(attrs.get("axis", 0)), x.ndim, self.name)
        keep = bool(attrs.get("keepdims", 1))
        last = bool(int(attrs.get("select_last_index", 0)))
        best = T.Buffer(f"{ctx.name}_best", (1,), x.dtype, scope="local")
        pos = T.Buffer(f"{ctx.name}_pos", (1,), "int64", scope="local")
        z = (T.IntImm(0),)

        def body(idx: Index) -> T.Stmt:
            def step(j: T.LoopVar) -> T.Stmt:
                v = x[_at(idx, axis, j)]
                better = v > best[0] if self.largest else v < best[0]
                if last:
                    better = T.BinOp("or", better, v.eq(best[0]))
                return T.IfThenElse(better, T.seq(T.Store(best, z, v), T.Store(pos, z, j)))

            oidx = tuple(i for d, i in enumerate(idx) if keep or d != axis)
            return T.seq(
                T.Store(best, z, x[idx]),
                T.Store(pos, z, T.IntImm(0)),
                T.loop(x.shape[axis] - 1, step, name=f"{ctx.name}_j", start=1),
                T.Store(out, oidx, ctx.apply_epilogue(pos[0], oidx)),
            )

        return T.Allocate(best, T.Allocate(pos, _outer(ctx.name, x.shape, axis, body)))


class ArgMax(ArgExtreme):
    name = "arg_max"


class ArgMin(ArgExtreme):
    name = "arg_min"
    largest = False


class TopK(OpDef):
    """ONNX TopK with a static ``k``: the ``k`` largest (``largest=1``, default) or smallest values along
    ``axis`` (default -1), sorted, and their int64 positions; equal values keep their order.

    Lowered without sorting: each element's rank is the number of elements that precede it in the result
    order (O(n^2) comparisons per row, fine for the class and detection counts models use); elements of
    rank below ``k`` are stored at their rank."""

    name = "top_k"
    kind = "opaque"
    num_outputs = 2

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        k = int(attrs["k"])
        n = x.shape[axis]
        if isinstance(n, int) and not 0 <= k <= n:
            raise self.error(f"k = {k} is out of range for axis {axis} of {x}")
        shape = tuple(k if d == axis else x.shape[d] for d in range(x.ndim))
        return [TensorType(shape, x.dtype), TensorType(shape, "int64")]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        k = int(attrs["k"])
        key = -x if int(attrs.get("largest", 1)) else x
        if x.dtype.kind == "u" and int(attrs.get("largest", 1)):
            key = np.iinfo(x.dtype).max - x
        order = np.argsort(key, axis=axis, kind="stable")
        idx = np.take(order, np.arange(k), axis=axis)
        return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x = ins[0]
        vals, inds = outs
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        k = int(attrs["k"])
        n = x.shape[axis]
        largest = bool(int(attrs.get("largest", 1)))
        rank = T.Buffer(f"{ctx.name}_rank", (1,), "int64", scope="local")
        z = (T.IntImm(0),)

        def body(idx: Index) -> T.Stmt:
            def element(i: T.LoopVar) -> T.Stmt:
                xi = x[_at(idx, axis, i)]

                def other(j: T.LoopVar) -> T.Stmt:
                    xj = x[_at(idx, axis, j)]
                    ahead = xj > xi if largest else xj < xi
                    ahead = T.BinOp("or", ahead, T.logical_and(xj.eq(xi), j < i))
                    return T.Store(rank, z, rank[0] + T.cast("int64", ahead))

                dst = _at(idx, axis, rank[0])
                return T.seq(
                    T.Store(rank, z, T.IntImm(0)),
                    T.loop(n, other, name=f"{ctx.name}_j"),
                    T.IfThenElse(
                        rank[0] < k,
                        T.seq(T.Store(vals, dst, ctx.apply_epilogue(xi, dst)), T.Store(inds, dst, i)),
                    ),
                )

            return T.loop(n, element, name=f"{ctx.name}_i")

        return T.Allocate(rank, _outer(ctx.name, x.shape, axis, body))


class CumSum(OpDef):
    """ONNX CumSum along a static ``axis``: ``exclusive`` (the sum before each element), ``reverse`` (from
    the end)."""

    name = "cumsum"
    kind = "opaque"
    unit = 0

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return acc + x

    def np_scan(self, x: np.ndarray, axis: int) -> np.ndarray:
        return np.cumsum(x, axis=axis, dtype=x.dtype)

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        normalize_axis(int(attrs["axis"]), inputs[0].ndim, self.name)
        return [inputs[0]]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        axis = normalize_axis(int(attrs["axis"]), x.ndim, self.name)
        rev = int(attrs.get("reverse", 0))
        y = np.flip(x, axis) if rev else x
        c = self.np_scan(y, axis)
        if int(attrs.get("exclusive", 0)):
            shifted = np.concatenate([np.full_like(np.take(c, [0], axis=axis), self.unit), c], axis=axis)
            c = np.take(shifted, np.arange(y.shape[axis]), axis=axis)
        return [np.ascontiguousarray(np.flip(c, axis) if rev else c)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        axis = normalize_axis(int(attrs["axis"]), x.ndim, self.name)
        n = x.shape[axis]
        rev = bool(int(attrs.get("reverse", 0)))
        excl = bool(int(attrs.get("exclusive", 0)))
        acc = T.Buffer(f"{ctx.name}_acc", (1,), x.dtype, scope="local")
        z = (T.IntImm(0),)

        def body(idx: Index) -> T.Stmt:
            def step(j: T.LoopVar) -> T.Stmt:
                p = _at(idx, axis, (n - 1 - j) if rev else j)
                v = x[p]
                if excl:
                    return T.seq(
                        T.Store(out, p, ctx.apply_epilogue(acc[0], p)),
                        T.Store(acc, z, self.combine(acc[0], v)),
                    )
                return T.seq(
                    T.Store(acc, z, self.combine(acc[0], v)), T.Store(out, p, ctx.apply_epilogue(acc[0], p))
                )

            return T.seq(T.Store(acc, z, T.const(self.unit, x.dtype)), T.loop(n, step, name=f"{ctx.name}_j"))

        return T.Allocate(acc, _outer(ctx.name, x.shape, axis, body))


class CumProd(CumSum):
    """ONNX CumProd: the running product (``exclusive``: the product before each element, 1 first)."""

    name = "cumprod"
    unit = 1

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return acc * x

    def np_scan(self, x: np.ndarray, axis: int) -> np.ndarray:
        return np.cumprod(x, axis=axis, dtype=x.dtype)


class Hardmax(OpDef):
    """ONNX Hardmax (opset 13): 1 at the first maximum along ``axis`` (default -1), 0 elsewhere."""

    name = "hardmax"
    kind = "opaque"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        normalize_axis(int(attrs.get("axis", -1)), inputs[0].ndim, self.name)
        return [inputs[0]]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        am = np.expand_dims(np.argmax(x, axis=axis), axis)
        pos = np.arange(x.shape[axis]).reshape((-1,) + (1,) * (x.ndim - axis - 1))
        return [(pos == am).astype(x.dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        best = T.Buffer(f"{ctx.name}_best", (1,), x.dtype, scope="local")
        pos = T.Buffer(f"{ctx.name}_pos", (1,), "int64", scope="local")
        z = (T.IntImm(0),)

        def body(idx: Index) -> T.Stmt:
            def step(j: T.LoopVar) -> T.Stmt:
                v = x[_at(idx, axis, j)]
                return T.IfThenElse(v > best[0], T.seq(T.Store(best, z, v), T.Store(pos, z, j)))

            def write(j: T.LoopVar) -> T.Stmt:
                p = _at(idx, axis, j)
                v = T.select(j.eq(pos[0]), T.const(1, x.dtype), T.const(0, x.dtype))
                return T.Store(out, p, ctx.apply_epilogue(v, p))

            return T.seq(
                T.Store(best, z, x[idx]),
                T.Store(pos, z, T.IntImm(0)),
                T.loop(x.shape[axis] - 1, step, name=f"{ctx.name}_j", start=1),
                T.loop(x.shape[axis], write, name=f"{ctx.name}_w"),
            )

        return T.Allocate(best, T.Allocate(pos, _outer(ctx.name, x.shape, axis, body)))


for _op in (ArgMax(), ArgMin(), TopK(), CumSum(), CumProd(), Hardmax()):
    register(_op)
