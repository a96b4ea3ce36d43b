"""The remaining ONNX reductions: reduce_min, reduce_prod, reduce_l1, reduce_l2, reduce_sum_square,
reduce_log_sum, reduce_log_sum_exp.

They share :class:`kiln.ops.reduce.Reduce` (``axes``, ``keepdims``, one accumulator per kept index); the
accumulator starts at a value of the input's dtype (the dtype's largest value for a minimum over integers).
``reduce_log_sum_exp`` takes the maximum first and sums ``exp(x - max)``, so large inputs do not overflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import is_float, np_dtype
from .base import LowerContext, register
from .reduce import Index, Reduce, _axes, reduce_nest


class _Reduce(Reduce):
    """A :class:`Reduce` whose ``init`` is converted to the input's dtype (infinities to its limits)."""

    def start(self, dtype: str) -> float | int:
        if is_float(dtype):
            return self.init
        if dtype == "bool":
            return int(self.init > 0)
        info = np.iinfo(np_dtype(dtype))
        if self.init == float("inf"):
            return int(info.max)
        if self.init == -float("inf"):
            return int(info.min)
        return int(self.init)

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        axes = _axes(attrs, x.ndim, self.name)
        count = int(np.prod([x.shape[d] for d in axes])) if axes else 1
        keep = bool(attrs.get("keepdims", 1))

        def finish(idx: Index, acc: T.Buffer) -> T.Stmt:
            oidx = tuple(idx[d] for d in range(x.ndim) if keep or d not in axes)
            return T.Store(out, oidx, ctx.apply_epilogue(self.final(acc[0], count), oidx, None))

        return reduce_nest(
            ctx.name,
            x.shape,
            axes,
            x.dtype,
            self.start(x.dtype),
            lambda acc, idx: self.combine(acc, x[idx]),
            finish,
        )


class ReduceMin(_Reduce):
    """Minimum over ``axes``."""

    name = "reduce_min"
    init = float("inf")

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return T.minimum(acc, x)

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.min(x, axis=axes, keepdims=keepdims)


class ReduceProd(_Reduce):
    """Product over ``axes``."""

    name = "reduce_prod"
    init = 1.0

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return acc * x

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.prod(x, axis=axes, keepdims=keepdims)


class ReduceL1(_Reduce):
    """Sum of absolute values over ``axes``."""

    name = "reduce_l1"

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return acc + T.Call("abs", (x,), x.dtype)

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.sum(np.abs(x), axis=axes, keepdims=keepdims)


class ReduceSumSquare(_Reduce):
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


class ReduceLogSum(_Reduce):
    """``log(sum(x))`` over ``axes``."""

    name = "reduce_log_sum"

    def final(self, acc: T.Expr, count: int) -> T.Expr:
        return T.call("log", acc)

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(np.sum(x, axis=axes, keepdims=keepdims))


class ReduceLogSumExp(_Reduce):
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
            f"{ctx.name}_m", x.shape, axes, dt, -float("inf"), lambda acc, i: T.maximum(acc, x[i]), finish_max
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
