"""2-D pooling on NCHW: max_pool2d, avg_pool2d, global_avg_pool2d.

``attrs``: ``kernel=(kh, kw)``, ``strides``, ``pads=(top, left, bottom, right)``, ``ceil_mode`` (0/1),
``dilations``, ``count_include_pad`` (avg only; ONNX default 0: padding is not counted).

max_pool2d and float avg_pool2d work a row at a time in unit-stride SIMD loops with no bounds check per tap
(:func:`_pool_rows`). For an integer avg_pool2d, the schedule record's ``pool`` section
(:func:`kiln.ops.schedule.schedule_for`) can mark the loop over an output row ``vectorized`` and the loops over a
window's taps ``unrolled``; by default both are serial.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType, is_float
from .base import LowerContext, OpDef, OpError, int_tuple, limit_value, nan_max, register
from .reduce import vector_reduce
from .schedule import schedule_for


def _params(
    attrs: dict[str, Any],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
    if "kernel" not in attrs:
        raise OpError("pooling: needs a kernel (its height and width)")
    k = int_tuple(attrs, "kernel", 2, 1, "pooling", 1)
    s = int_tuple(attrs, "strides", 2, 1, "pooling", 1)
    p = int_tuple(attrs, "pads", 4, 0, "pooling", 0)
    d = int_tuple(attrs, "dilations", 2, 1, "pooling", 1)
    return (k[0], k[1]), (s[0], s[1]), (p[0], p[1], p[2], p[3]), (d[0], d[1])


def pool_out(size: Any, k: int, s: int, pad_begin: int, pad_end: int, d: int, ceil_mode: bool) -> Any:
    """Output length of one axis (ONNX/PyTorch rule: with ``ceil_mode`` the last window must start inside the
    input or its leading padding)."""
    span = size + pad_begin + pad_end - (d * (k - 1) + 1)
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + pad_begin:
        out -= 1
    return out


class Pool2D(OpDef):
    """Max or average over ``kernel`` windows (with ``strides``, ``pads``, ``dilations``) of each channel.

    The average divides by the taps inside the input, or with ``count_include_pad`` by the taps inside the
    padded input (a window that runs past the trailing padding in ceil mode counts only up to it)."""

    kind = "reduce"
    is_max = True
    dynamic_shapes = True

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return (
            outputs[0].numel * attrs["kernel"][0] * attrs["kernel"][1] if outputs[0].is_static else 0
        )  # one per tap

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        if x.ndim != 4:
            raise self.error(f"expects an NCHW input, got {x}")
        (kh, kw), (sh, sw), p, (dh, dw) = _params(attrs)
        n, c, h, w = x.shape
        ceil = bool(attrs.get("ceil_mode", 0))
        if ceil and not (isinstance(h, int) and isinstance(w, int)):
            raise self.error(f"ceil_mode with a run-time image size ({x}) is not supported; use fixed sizes")
        oh = pool_out(h, kh, sh, p[0], p[2], dh, ceil)  # an expression of a run-time size (kiln.ir.Sym)
        ow = pool_out(w, kw, sw, p[1], p[3], dw, ceil)
        if (isinstance(oh, int) and oh < 1) or (isinstance(ow, int) and ow < 1):
            raise self.error(f"window {(kh, kw)} with pads {p} does not fit {x}")
        return [TensorType((n, c, oh, ow), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        (kh, kw), (sh, sw), p, (dh, dw) = _params(attrs)
        oh, ow = self.infer([TensorType(x.shape, "float32")], attrs)[0].static_shape[2:]
        h, w = x.shape[2:]
        # taps of every window, per axis, in input coordinates: (out, k)
        ys = np.arange(oh)[:, None] * sh - p[0] + np.arange(kh)[None, :] * dh
        xs = np.arange(ow)[:, None] * sw - p[1] + np.arange(kw)[None, :] * dw
        win = x.astype(np.float64)[:, :, np.clip(ys, 0, h - 1)][:, :, :, :, np.clip(xs, 0, w - 1)]
        win = win.transpose(0, 1, 2, 4, 3, 5)  # (n, c, oh, ow, kh, kw)
        inside = ((ys >= 0) & (ys < h))[:, None, :, None] & ((xs >= 0) & (xs < w))[None, :, None, :]
        if self.is_max:
            out = np.where(inside, win, -np.inf).max(axis=(4, 5))
        else:
            if attrs.get("count_include_pad", 0):
                counted = ((ys >= -p[0]) & (ys < h + p[2]))[:, None, :, None] & (
                    (xs >= -p[1]) & (xs < w + p[3])
                )[None, :, None, :]
            else:
                counted = inside
            out = np.where(inside, win, 0.0).sum(axis=(4, 5)) / counted.sum(axis=(2, 3))
        return [out.astype(x.dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        (kh, kw), (sh, sw), p, (dh, dw) = _params(attrs)
        _, _, h, w = x.shape
        acc = T.Buffer(f"{ctx.name}_acc", (1,), x.dtype, scope="local")
        cnt = T.Buffer(f"{ctx.name}_cnt", (1,), x.dtype, scope="local")
        zero = (T.IntImm(0),)
        include_pad = bool(attrs.get("count_include_pad", 0))
        canonical: dict[str, Any] = {
            "kernel": (kh, kw),
            "strides": (sh, sw),
            "pads": p,
            "dilations": (dh, dw),
        }
        canonical["ceil_mode"] = int(bool(attrs.get("ceil_mode", 0)))
        if not self.is_max:
            canonical["count_include_pad"] = int(include_pad)
        vector = False
        if x.is_dynamic:  # a run-time image size: every tap bounds-checked
            taps_kind = "serial"
        elif self.is_max or is_float(x.dtype):  # no schedule choices: not a tunable instance
            return _pool_rows(ctx, x, out, (kh, kw), (sh, sw), p, (dh, dw), self.is_max, include_pad)
        else:
            sched = schedule_for(ctx, self.name, ins, canonical).pool
            taps_kind = "unrolled" if sched.unroll_taps else "serial"
            vector = sched.vectorize

        lowest = T.const(limit_value(-float("inf"), x.dtype), x.dtype)

        def pixel(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            n, c, oy, ox = idx
            y0, x0 = oy * sh - p[0], ox * sw - p[1]

            def tap(a: T.LoopVar, b: T.LoopVar) -> T.Stmt:
                iy, ix = y0 + a * dh, x0 + b * dw
                inside = T.logical_and(iy >= 0, iy < h, ix >= 0, ix < w)
                v = x[n, c, T.minimum(T.maximum(iy, 0), h - 1), T.minimum(T.maximum(ix, 0), w - 1)]
                counted = (
                    T.logical_and(iy >= -p[0], iy < h + p[2], ix >= -p[1], ix < w + p[3])
                    if include_pad
                    else inside
                )
                if self.is_max:  # a run-time image size (the fixed-size max pools go to _pool_rows)
                    return T.Store(acc, zero, nan_max(acc[0], T.select(inside, v, lowest)))
                return T.seq(
                    T.Store(acc, zero, acc[0] + T.select(inside, v, T.const(0, x.dtype))),
                    T.Store(cnt, zero, cnt[0] + T.select(counted, T.const(1, x.dtype), T.const(0, x.dtype))),
                )

            taps = T.loop(
                kh,
                lambda a: T.loop(kw, lambda b: tap(a, b), name=f"{ctx.name}_kx", kind=taps_kind),
                name=f"{ctx.name}_ky",
                kind=taps_kind,
            )
            body = T.seq(
                T.Store(acc, zero, lowest if self.is_max else T.const(0, x.dtype)),
                T.Store(cnt, zero, T.const(0, x.dtype)),
                taps,
                T.Store(out, idx, ctx.apply_epilogue(acc[0] if self.is_max else acc[0] / cnt[0], idx, None)),
            )
            return T.Allocate(acc, T.Allocate(cnt, body))

        return T.loop_nest(
            out.shape, pixel, prefix=f"{ctx.name}_i", innermost="vectorized" if vector else "serial"
        )


def _pool_rows(
    ctx: LowerContext,
    x: T.Buffer,
    out: T.Buffer,
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int, int, int],
    d: tuple[int, int],
    is_max: bool,
    include_pad: bool,
) -> T.Stmt:
    """Max or average pooling one output row at a time, in unit-stride (SIMD) loops without bounds checks per
    tap:

    1. ``row[p_left + ix] = reduce over the window's kh input rows of x[.., iy, ix]`` for every input column (a
       row outside the input contributes -inf or 0; whether it is outside depends on the output row only);
    2. ``win[i] = reduce over b < kw of row[i + b * dw]`` at every padded column, read from ``row`` whose left
       and right padding hold -inf or 0 (written once);
    3. ``out[ox] = win[ox * sw]`` (an average divided by the taps counted: rows counted for this output row
       times columns counted for this column); straight from step 2 when ``sw == 1``, else a strided loop.

    Padding never wins a max (-inf, as in the reference); NaN wins (``nan_max``)."""
    (kh, kw), (sh, sw), (dh, dw) = k, s, d
    _, _, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    dt = x.dtype
    low = T.const(limit_value(-float("inf"), dt), dt) if is_max else T.const(0.0, dt)
    one = T.const(1.0, dt)
    span = (ow - 1) * sw + 1  # padded columns where a window starts
    wp = max(p[1] + w, span + (kw - 1) * dw)
    row = T.Buffer(f"{ctx.name}_row", (wp,), dt, scope="workspace")
    win = T.Buffer(f"{ctx.name}_win", (span,), dt, scope="workspace")

    def fill(start: int, count: int) -> T.Stmt | None:
        if count <= 0:
            return None
        return T.loop(
            count, lambda i: T.Store(row, (start + i,), low), name=f"{ctx.name}_pad", kind="vectorized"
        )

    def fold(values: list[T.Expr]) -> T.Expr:
        acc = values[0]
        for v in values[1:]:
            acc = nan_max(acc, v) if is_max else acc + v
        return acc

    def counted(i: T.Expr, size: int, before: int, after: int) -> T.Expr:
        """1 if input coordinate ``i`` counts towards an average, else 0."""
        lo, hi = (-before, size + after) if include_pad else (0, size)
        return T.select(T.logical_and(i >= lo, i < hi), one, T.const(0.0, dt))

    def out_row(n: T.LoopVar, c: T.LoopVar, oy: T.LoopVar) -> T.Stmt:
        y0 = oy * sh - p[0]
        rows_counted = fold([counted(y0 + a * dh, h, p[0], p[2]) for a in range(kh)]) if not is_max else one

        def result(ox: T.Expr, value: T.Expr) -> T.Stmt:
            if not is_max:
                x0 = ox * sw - p[1]
                cols = counted(x0, w, p[1], p[3])
                for b in range(1, kw):
                    cols = cols + counted(x0 + b * dw, w, p[1], p[3])
                value = value / (rows_counted * cols)
            return T.Store(out, (n, c, oy, ox), ctx.apply_epilogue(value, (n, c, oy, ox), None))

        def vertical(ix: T.LoopVar) -> T.Stmt:
            taps = []
            for a in range(kh):
                iy = y0 + a * dh
                inside = T.logical_and(iy >= 0, iy < h)
                taps.append(T.select(inside, x[n, c, T.minimum(T.maximum(iy, 0), h - 1), ix], low))
            return T.Store(row, (p[1] + ix,), fold(taps))

        def horizontal(i: T.Expr) -> T.Expr:
            return fold([row[i + b * dw] for b in range(kw)])

        rows = T.loop(w, vertical, name=f"{ctx.name}_v", kind="vectorized")
        if sw == 1:
            write = T.loop(ow, lambda ox: result(ox, horizontal(ox)), name=f"{ctx.name}_o", kind="vectorized")
            return T.seq(rows, write)
        cols = T.loop(
            span, lambda i: T.Store(win, (i,), horizontal(i)), name=f"{ctx.name}_h", kind="vectorized"
        )
        write = T.loop(ow, lambda ox: result(ox, win[ox * sw]), name=f"{ctx.name}_o")
        return T.seq(rows, cols, write)

    nest = T.loop(
        out.shape[0],
        lambda n: T.loop(
            out.shape[1],
            lambda c: T.loop(oh, lambda oy: out_row(n, c, oy), name=f"{ctx.name}_oy"),
            name=f"{ctx.name}_c",
        ),
        name=f"{ctx.name}_n",
    )
    body = T.seq(fill(0, p[1]), fill(p[1] + w, wp - p[1] - w), nest)
    return T.Allocate(row, T.Allocate(win, body) if sw != 1 else body)


class MaxPool2D(Pool2D):
    """Maximum over each window (padding never wins: it is ignored, not -inf)."""

    name = "max_pool2d"
    is_max = True


class AvgPool2D(Pool2D):
    """Mean over each window (see :class:`Pool2D` for how padding is counted)."""

    name = "avg_pool2d"
    is_max = False


class GlobalAvgPool2D(OpDef):
    """Mean over every axis after the first two (N, C), kept as size 1."""

    name = "global_avg_pool2d"
    kind = "reduce"
    dynamic_shapes = True

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return inputs[0].numel if inputs[0].is_static else 0

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        if x.ndim < 3 or any(d == 0 for d in x.shape[2:]):
            raise self.error(f"expects an input with non-empty spatial axes (N, C, ...), got {x}")
        return [TensorType((*x.shape[:2], *([1] * (x.ndim - 2))), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        return [x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        n, c = x.shape[:2]
        hw: Any = 1
        for d in x.shape[2:]:
            hw = hw * d
        xf = x.with_(shape=(n, c, hw), strides=())
        of = out.with_(shape=(n, c), strides=())
        acc = T.Buffer(f"{ctx.name}_acc", (1,), x.dtype, scope="local")
        zero = (T.IntImm(0),)

        def chan(i: T.LoopVar, j: T.LoopVar) -> T.Stmt:
            idx = (i, j, *([T.IntImm(0)] * (x.ndim - 2)))
            if isinstance(hw, int) and hw >= 2 * ctx.lanes and is_float(x.dtype):  # vector partial sums
                return vector_reduce(
                    ctx.name,
                    hw,
                    x.dtype,
                    ctx.lanes,
                    0.0,
                    lambda a, b: a + b,
                    lambda k: xf[i, j, k],
                    lambda s: T.Store(of, (i, j), ctx.apply_epilogue(s[0] * (1.0 / hw), idx, i * c + j)),
                )
            return T.Allocate(
                acc,
                T.seq(
                    T.Store(acc, zero, T.const(0.0, x.dtype)),
                    T.loop(hw, lambda k: T.Store(acc, zero, acc[0] + xf[i, j, k]), name=f"{ctx.name}_k"),
                    T.Store(of, (i, j), ctx.apply_epilogue(acc[0] * _inverse(hw, x.dtype), idx, i * c + j)),
                ),
            )

        return T.loop(
            n, lambda i: T.loop(c, lambda j: chan(i, j), name=f"{ctx.name}_c"), name=f"{ctx.name}_n"
        )


def _inverse(count: Any, dtype: str) -> T.ExprLike:
    """``1 / count``: a constant, or computed at run time for a run-time size."""
    return 1.0 / count if isinstance(count, int) else T.const(1.0, dtype) / T.cast(dtype, count)


for _op in (MaxPool2D(), AvgPool2D(), GlobalAvgPool2D()):
    register(_op)
