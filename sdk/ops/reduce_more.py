"""The remaining ONNX reductions: reduce_min, reduce_prod, reduce_l1, reduce_l2, reduce_sum_square,
reduce_log_sum, reduce_log_sum_exp.

They share :class:`kiln.ops.reduce.Reduce` (``axes``, ``keepdims``, one accumulator per kept index; a
minimum over integers starts at the dtype's largest value). A NaN in the input gives a NaN result.
``reduce_log_sum_exp`` takes the maximum first and sums ``exp(x - max)``, so large inputs do not overflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import is_float
from .base import LowerContext, nan_max, nan_min, register
from .reduce import Index, Reduce, _axes, reduce_nest


class ReduceMin(Reduce):
    """Minimum over ``axes``."""

    name = "reduce_min"
    init = float("inf")

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return nan_min(acc, x)

    def merge(self, a: T.Expr, b: T.Expr) -> T.Expr:
        return nan_min(a, b)

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.min(x, axis=axes, keepdims=keepdims)


class ReduceProd(Reduce):
    """Product over ``axes``."""

    name = "reduce_prod"
    init = 1.0

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return acc * x

    def merge(self, a: T.Expr, b: T.Expr) -> T.Expr:
        return a * b

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.prod(x, axis=axes, keepdims=keepdims)


class ReduceL1(Reduce):
    """Sum of absolute values over ``axes``."""

    name = "reduce_l1"

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return acc + T.Call("abs", (x,), x.dtype)

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.sum(np.abs(x), axis=axes, keepdims=keepdims)


class ReduceSumSquare(Reduce):
    """Sum of squares over ``axes``."""

    name = "reduce_sum_square"

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return acc + x * x

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.sum(x * x, axis=axes, keepdims=keepdims)


class ReduceL2(ReduceSumSquare):
    """Euclidean norm over ``axes`` (integer results are the truncated norm, as ONNX computes)."""

    name = "reduce_l2"

    def final(self, acc: T.Expr, count: int) -> T.Expr:
        return T.call("sqrt", T.cast("float32", acc) if not is_float(acc.dtype) else acc)

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.sqrt(np.sum(x * x, axis=axes, keepdims=keepdims))


class ReduceLogSum(Reduce):
    """``log(sum(x))`` over ``axes``."""

    name = "reduce_log_sum"

    def final(self, acc: T.Expr, count: int) -> T.Expr:
        return T.call("log", acc)

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(np.sum(x, axis=axes, keepdims=keepdims))


class ReduceLogSumExp(Reduce):
    """``log(sum(exp(x)))`` over ``axes``, as ``max + log(sum(exp(x - max)))``."""

    name = "reduce_log_sum_exp"

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        m = np.max(x, axis=axes, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        r = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
        return r if keepdims else np.squeeze(r, axis=axes)

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        axes = _axes(attrs, x.ndim, self.name)
        keep = bool(attrs.get("keepdims", 1))
        rshape = [x.shape[d] for d in axes]
        dt = x.dtype

        def finish_max(idx: Index, mx: T.Buffer) -> T.Stmt:
            s = T.Buffer(f"{ctx.name}_s", (1,), dt, scope="local")
            z = (T.IntImm(0),)

            def full(r: tuple[T.LoopVar, ...]) -> Index:
                it = iter(r)
                return tuple(next(it) if d in axes else idx[d] for d in range(x.ndim))

            oidx = tuple(idx[d] for d in range(x.ndim) if keep or d not in axes)
            return T.Allocate(
                s,
                T.seq(
                    T.Store(s, z, T.const(0.0, dt)),
                    T.loop_nest(
                        rshape,
                        lambda r: T.Store(s, z, s[0] + T.call("exp", x[full(r)] - mx[0])),
                        prefix=f"{ctx.name}_e",
                    ),
                    T.Store(out, oidx, ctx.apply_epilogue(T.call("log", s[0]) + mx[0], oidx, None)),
                ),
            )

        return reduce_nest(
            f"{ctx.name}_m", x.shape, axes, dt, -float("inf"), lambda acc, i: nan_max(acc, x[i]), finish_max
        )


for _op in (
    ReduceMin(),
    ReduceProd(),
    ReduceL1(),
    ReduceSumSquare(),
    ReduceL2(),
    ReduceLogSum(),
    ReduceLogSumExp(),
):
    register(_op)
