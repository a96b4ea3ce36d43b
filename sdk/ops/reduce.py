"""Reductions and the normalizations built on them: reduce_sum/mean/max, softmax, log_softmax, layer_norm.

All share one loop structure (:func:`reduce_nest`): an outer nest over the kept dimensions and, per kept
index, inner loops over the reduced ones accumulating into a local scalar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType, is_float
from .base import LowerContext, OpDef, limit_value, nan_max, normalize_axis, register, unflatten

Index = tuple[T.Expr, ...]


def _axes(attrs: dict[str, Any], ndim: int, op: str) -> list[int]:
    axes = attrs.get("axes")
    if axes is None or len(axes) == 0:
        return list(range(ndim))
    return sorted({normalize_axis(int(a), ndim, op) for a in axes})


def reduce_nest(
    name: str,
    shape: Sequence[int],
    axes: Sequence[int],
    dtype: str,
    init: float,
    update: Callable[[T.Expr, Index], T.Expr],
    finish: Callable[[Index, T.Buffer], T.Stmt],
) -> T.Stmt:
    """For every kept index: ``acc = init; for reduced: acc = update(acc, full_index); finish(kept, acc)``.

    ``finish`` receives the full-rank index with the reduced positions set to 0 and the accumulator buffer
    (read it as ``acc[0]``)."""
    kept = [d for d in range(len(shape)) if d not in axes]
    acc = T.Buffer(f"{name}_acc", (1,), dtype, scope="local")

    def outer(kidx: tuple[T.LoopVar, ...]) -> T.Stmt:
        def full(ridx: Sequence[T.Expr]) -> Index:
            it_k, it_r = iter(kidx), iter(ridx)
            return tuple(next(it_r) if d in axes else next(it_k) for d in range(len(shape)))

        def inner(ridx: tuple[T.LoopVar, ...]) -> T.Stmt:
            return T.Store(acc, (T.IntImm(0),), update(acc[0], full(ridx)))

        zero_idx = full([T.IntImm(0)] * len(axes))
        return T.Allocate(
            acc,
            T.seq(
                T.Store(acc, (T.IntImm(0),), T.const(init, dtype)),
                T.loop_nest([shape[d] for d in axes], inner, prefix=f"{name}_r"),
                finish(zero_idx, acc),
            ),
        )

    if not kept:
        return outer(())
    return T.loop_nest([shape[d] for d in kept], outer, prefix=f"{name}_k")


class Reduce(OpDef):
    """Reduce ``axes`` (all when absent or empty) of ``x``; ``keepdims`` (default 1) keeps them as size 1."""

    kind = "reduce"
    init = 0.0

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return acc + x

    def merge(self, a: T.Expr, b: T.Expr) -> T.Expr:
        """Two partial results combined (the vector path's partial accumulators): a sum unless overridden."""
        return a + b

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        raise NotImplementedError

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        axes = _axes(attrs, x.ndim, self.name)
        keep = bool(attrs.get("keepdims", 1))
        shape = tuple((1 if d in axes else x.shape[d]) for d in range(x.ndim) if keep or d not in axes)
        return [TensorType(shape, x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        axes = tuple(_axes(attrs, x.ndim, self.name))
        r = self.np_reduce(
            x.astype(np.float64) if x.dtype.kind == "f" else x, axes, bool(attrs.get("keepdims", 1))
        )
        return [np.asarray(r).astype(x.dtype)]

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

        tail = axes == list(range(x.ndim - len(axes), x.ndim))
        if tail and is_float(x.dtype) and count >= 2 * ctx.lanes:  # one contiguous run per output: SIMD
            kept = x.shape[: x.ndim - len(axes)]
            xf = x.with_(shape=(int(np.prod(kept)), count), strides=())

            def run(r: T.Expr) -> T.Stmt:
                idx = (*unflatten(r, kept), *[T.IntImm(0)] * len(axes))
                return vector_reduce(
                    ctx.name,
                    count,
                    x.dtype,
                    ctx.lanes,
                    limit_value(self.init, x.dtype),
                    self.combine,
                    lambda j: xf[r, j],
                    lambda acc: finish(idx, acc),
                    merge=self.merge,
                )

            return T.loop_or_once(xf.shape[0], run, name=f"{ctx.name}_k")

        return reduce_nest(
            ctx.name,
            x.shape,
            axes,
            x.dtype,
            limit_value(self.init, x.dtype),
            lambda acc, idx: self.combine(acc, x[idx]),
            finish,
        )

    def final(self, acc: T.Expr, count: int) -> T.Expr:
        return acc

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return inputs[0].numel if inputs[0].is_static else 0  # one combine per input element


class ReduceSum(Reduce):
    """Sum over ``axes``."""

    name = "reduce_sum"

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.sum(x, axis=axes, keepdims=keepdims)


class ReduceMean(Reduce):
    """Arithmetic mean over ``axes``."""

    name = "reduce_mean"

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.mean(x, axis=axes, keepdims=keepdims)

    def final(self, acc: T.Expr, count: int) -> T.Expr:
        return acc * (1.0 / count)


class ReduceMax(Reduce):
    """Maximum over ``axes``."""

    name = "reduce_max"
    init = -float("inf")

    def combine(self, acc: T.Expr, x: T.Expr) -> T.Expr:
        return nan_max(acc, x)

    def merge(self, a: T.Expr, b: T.Expr) -> T.Expr:
        return nan_max(a, b)

    def np_reduce(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return np.max(x, axis=axes, keepdims=keepdims)


class Softmax(OpDef):
    """Softmax along ``axis`` (default -1), computed as exp(x - max) / sum; ``log`` variant below."""

    name = "softmax"
    kind = "opaque"
    log = False
    dynamic_shapes = True

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return 5 * inputs[0].numel if inputs[0].is_static else 0  # max, subtract, exp, sum, scale

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        normalize_axis(int(attrs.get("axis", -1)), inputs[0].ndim, self.name)
        return [inputs[0]]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0].astype(np.float64)
        axis = int(attrs.get("axis", -1))
        z = x - x.max(axis=axis, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=axis, keepdims=True))
        r = z - lse if self.log else np.exp(z - lse)
        return [r.astype(inputs[0].dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        n = x.shape[axis]
        dt = x.dtype
        lanes = ctx.lanes

        def at(idx: Index, j: T.Expr) -> Index:
            return tuple(j if d == axis else i for d, i in enumerate(idx))

        if x.elem_strides[axis] != 1 or (isinstance(n, int) and n < 2 * lanes):  # strided or short: scalar
            return self._lower_scalar(ctx, x, out, axis)
        # one row's exp(x - max): a scratch row; with a run-time length, the output row itself
        dynamic = not isinstance(n, int)
        if dynamic and (out.elem_strides[axis] != 1 or out.dtype != dt or self.log):
            return self._lower_scalar(ctx, x, out, axis)
        e = T.Buffer(f"{ctx.name}_exp", (n if not dynamic else 1,), dt, scope="workspace")

        def row(idx: Index) -> T.Stmt:
            def ej(j: T.Expr) -> T.Load:
                return out[at(idx, j)] if dynamic else e[j]

            def with_max(mx: T.Buffer) -> T.Stmt:
                exps = T.loop(
                    n,
                    lambda j: T.Store(
                        *((out, at(idx, j)) if dynamic else (e, (j,))), T.call("exp", x[at(idx, j)] - mx[0])
                    ),
                    name=f"{ctx.name}_e",
                    kind="vectorized",
                )

                def with_sum(s: T.Buffer) -> T.Stmt:
                    def write(j: T.LoopVar) -> T.Stmt:
                        v = x[at(idx, j)] - mx[0] - T.call("log", s[0]) if self.log else ej(j) * (1.0 / s[0])
                        return T.Store(out, at(idx, j), ctx.apply_epilogue(v, at(idx, j), None))

                    return T.loop(n, write, name=f"{ctx.name}_w", kind="vectorized")

                return T.seq(
                    exps,
                    vector_reduce(
                        f"{ctx.name}_s",
                        n,
                        dt,
                        lanes,
                        0.0,
                        lambda a, b: a + b,
                        ej,
                        with_sum,
                    ),
                )

            return vector_reduce(
                f"{ctx.name}_m", n, dt, lanes, -float("inf"), T.maximum, lambda j: x[at(idx, j)], with_max
            )

        kept = [x.shape[d] for d in range(x.ndim) if d != axis]

        def outer(kidx: tuple[T.LoopVar, ...]) -> T.Stmt:
            it = iter(kidx)
            return row(tuple(T.IntImm(0) if d == axis else next(it) for d in range(x.ndim)))

        nest = T.loop_nest(kept, outer, prefix=f"{ctx.name}_k") if kept else outer(())
        return nest if dynamic else T.Allocate(e, nest)

    def _lower_scalar(self, ctx: LowerContext, x: T.Buffer, out: T.Buffer, axis: int) -> T.Stmt:
        n = x.shape[axis]
        dt = x.dtype

        def at(idx: Index, j: T.Expr) -> Index:
            return tuple(j if d == axis else i for d, i in enumerate(idx))

        def finish_max(idx: Index, mx: T.Buffer) -> T.Stmt:
            def normalize(s: T.Buffer) -> T.Stmt:
                def write(j: T.LoopVar) -> T.Stmt:
                    z = x[at(idx, j)] - mx[0]
                    v = z - T.call("log", s[0]) if self.log else T.call("exp", z) * (1.0 / s[0])
                    return T.Store(out, at(idx, j), ctx.apply_epilogue(v, at(idx, j), None))

                return T.loop(n, write, name=f"{ctx.name}_w", kind="vectorized")

            return _sum_then(ctx.name, n, dt, lambda j: T.call("exp", x[at(idx, j)] - mx[0]), normalize)

        return reduce_nest(
            f"{ctx.name}_m",
            x.shape,
            [axis],
            dt,
            -float("inf"),
            lambda acc, full: T.maximum(acc, x[full]),
            finish_max,
        )


MAX_PARTIAL_VECTORS = 4  # vector accumulators of a reduction: hide the add latency, and no more than a row


def vector_reduce(
    name: str,
    n: int,
    dtype: str,
    lanes: int,
    init: float,
    combine: Callable[[T.Expr, T.Expr], T.Expr],
    term: Callable[[T.Expr], T.Expr],
    then: Callable[[T.Buffer], T.Stmt],
    merge: Callable[[T.Expr, T.Expr], T.Expr] | None = None,
) -> T.Stmt:
    """``s = init; for j < n: s = combine(s, term(j))``, then ``then(s)`` (read the result as ``s[0]``), in
    vector registers: ``combine`` must be associative and commutative, and ``term(j)`` should read at unit
    stride in ``j`` (codegen then emits SIMD code; otherwise the same loops run scalar).

    Partial results of 1, 2 or 4 vectors of ``lanes`` (a small local scratch of ``width`` elements) take
    ``width`` consecutive terms per step; the last ``n % width`` terms go into the first partials; then the
    partials are combined pairwise with ``merge`` (default ``combine``; a sum of squares accumulates
    ``acc + x * x`` but merges ``a + b``), halving the width each time (log2(width) steps, not ``width``)."""
    merge = merge or combine
    k = 1
    while k < MAX_PARTIAL_VECTORS and (not isinstance(n, int) or 2 * k * lanes <= n):
        k *= 2
    width = k * lanes
    # a run-time length (dynamic shapes): as many chunks as it holds and the rest, computed at run time
    chunks, rest = divmod(n, width) if isinstance(n, int) else (T.const(n) // width, T.const(n) % width)
    part = T.Buffer(f"{name}_part", (width,), dtype, scope="local")
    half = T.Buffer(f"{name}_half", (max(width // 2, 1),), dtype, scope="local")

    def accumulate(base: T.Expr, count: T.ExprLike) -> T.Stmt:
        return T.loop(
            count,
            lambda i: T.Store(part, (i,), combine(part[i], term(base + i))),
            name=f"{name}_v",
            kind="vectorized",
        )

    steps: list[T.Stmt] = [
        T.loop(
            width, lambda i: T.Store(part, (i,), T.const(init, dtype)), name=f"{name}_0", kind="vectorized"
        ),
        T.loop(chunks, lambda c: accumulate(c * width, width), name=f"{name}_c"),
    ]
    if not isinstance(rest, int) or rest:
        steps.append(
            accumulate(chunks * width if not isinstance(chunks, int) else T.IntImm(chunks * width), rest)
        )

    def fold(src: T.Buffer, dst: T.Buffer, h: int) -> T.Stmt:
        return T.loop(
            h, lambda i: T.Store(dst, (i,), merge(src[i], src[i + h])), name=f"{name}_h", kind="vectorized"
        )

    src, dst, m = part, half, width
    while m > 1:
        steps.append(fold(src, dst, m // 2))
        src, dst, m = dst, src, m // 2
    return T.Allocate(part, T.Allocate(half, T.seq(*steps, then(src))))


def _sum_then(
    name: str, n: int, dtype: str, term: Callable[[T.Expr], T.Expr], then: Callable[[T.Buffer], T.Stmt]
) -> T.Stmt:
    """``s = sum_j term(j)`` over j < n into a local scalar, then ``then(s)``."""
    s = T.Buffer(f"{name}_sum", (1,), dtype, scope="local")
    zero = (T.IntImm(0),)
    return T.Allocate(
        s,
        T.seq(
            T.Store(s, zero, T.const(0.0, dtype)),
            T.loop(n, lambda j: T.Store(s, zero, s[0] + term(j)), name=f"{name}_j"),
            then(s),
        ),
    )


class LogSoftmax(Softmax):
    """``log(softmax(x))`` along ``axis``, computed as ``x - max - log(sum(exp(x - max)))``."""

    name = "log_softmax"
    log = True


class LayerNorm(OpDef):
    """``(x - mean) / sqrt(var + epsilon) * scale (+ bias)`` over the axes from ``axis`` to the last."""

    name = "layer_norm"
    kind = "opaque"
    dynamic_shapes = True  # over rows whose count is known at run time; the normalized axes have fixed sizes

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return 8 * inputs[0].numel if inputs[0].is_static else 0  # mean, variance, normalize, scale, shift

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        if any(d == 0 for d in x.shape[axis:]):
            raise self.error(f"cannot normalize over an empty axis of {x}")
        return [x]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0].astype(np.float64)
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        axes = tuple(range(axis, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + float(attrs.get("epsilon", 1e-5))) * inputs[1]
        if len(inputs) > 2:
            y = y + inputs[2]
        return [y.astype(inputs[0].dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, scale = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        out = outs[0]
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, self.name)
        inner = x.shape[axis:]
        if not all(isinstance(d, int) for d in inner):
            raise self.error(f"the normalized axes of {x} must have fixed sizes")
        n = int(np.prod(inner))
        eps = float(attrs.get("epsilon", 1e-5))
        rows: T.ExprLike = 1
        for d in x.shape[:axis]:
            rows = rows * d
        xf = x.with_(shape=(rows, n), strides=())
        of = out.with_(shape=(rows, n), strides=())
        sf = scale.with_(shape=(scale.numel,), strides=())
        bf = bias.with_(shape=(bias.numel,), strides=()) if bias is not None else None
        width = scale.numel

        def row(r: T.LoopVar) -> T.Stmt:
            def with_mean(mean: T.Buffer) -> T.Stmt:
                m = mean[0] * (1.0 / n)

                def with_var(var: T.Buffer) -> T.Stmt:
                    inv = 1.0 / T.call("sqrt", var[0] * (1.0 / n) + eps)

                    def write(j: T.LoopVar) -> T.Stmt:
                        k = j % width if width != n else j
                        v = (xf[r, j] - m) * inv * sf[k]
                        if bf is not None:
                            v = v + bf[k]
                        idx = _unflat(r, j, x.shape, axis)
                        return T.Store(of, (r, j), ctx.apply_epilogue(v, idx, r * n + j))

                    return T.loop(n, write, name=f"{ctx.name}_w", kind="vectorized")

                return sum_of(f"{ctx.name}_v", lambda j: (xf[r, j] - m) * (xf[r, j] - m), with_var)

            return sum_of(f"{ctx.name}_m", lambda j: xf[r, j], with_mean)

        def sum_of(name: str, term: Callable[[T.Expr], T.Expr], then: Callable[[T.Buffer], T.Stmt]) -> T.Stmt:
            if n < 2 * ctx.lanes:
                return _sum_then(name, n, x.dtype, term, then)
            return vector_reduce(name, n, x.dtype, ctx.lanes, 0.0, lambda a, b: a + b, term, then)

        return T.loop(rows, row, name=f"{ctx.name}_r")


def _unflat(r: T.Expr, j: T.Expr, shape: Sequence[int], axis: int) -> Index:
    return (*unflatten(r, shape[:axis]), *unflatten(j, shape[axis:]))


for _op in (ReduceSum(), ReduceMean(), ReduceMax(), Softmax(), LogSoftmax(), LayerNorm()):
    register(_op)
