"""2-D pooling on NCHW: max_pool2d, avg_pool2d, global_avg_pool2d.

``attrs``: ``kernel=(kh, kw)``, ``strides``, ``pads=(top, left, bottom, right)``, ``ceil_mode`` (0/1),
``dilations`` (max only), ``count_include_pad`` (avg only; ONNX default 0: padding is not counted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, register


def _params(
    attrs: dict[str, Any],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, ...], tuple[int, int]]:
    k = tuple(attrs["kernel"])
    s = tuple(attrs.get("strides", (1, 1)))
    p = tuple(attrs.get("pads", (0, 0, 0, 0)))
    d = tuple(attrs.get("dilations", (1, 1)))
    return (k[0], k[1]), (s[0], s[1]), p, (d[0], d[1])


def pool_out(size: int, k: int, s: int, pad_total: int, d: int, ceil_mode: bool) -> int:
    eff = d * (k - 1) + 1
    n = (size + pad_total - eff) / s + 1
    out = math.ceil(n) if ceil_mode else math.floor(n)
    if ceil_mode and (out - 1) * s >= size + pad_total // 2:  # last window must start inside the input
        out -= 1
    return int(out)


class Pool2D(OpDef):
    kind = "reduce"
    is_max = True

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        if x.ndim != 4:
            raise self.error(f"expects an NCHW input, got {x}")
        (kh, kw), (sh, sw), p, (dh, dw) = _params(attrs)
        n, c, h, w = x.shape
        ceil = bool(attrs.get("ceil_mode", 0))
        oh = pool_out(h, kh, sh, p[0] + p[2], dh, ceil) if isinstance(h, int) else h
        ow = pool_out(w, kw, sw, p[1] + p[3], dw, ceil) if isinstance(w, int) else w
        return [TensorType((n, c, oh, ow), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        (kh, kw), (sh, sw), p, (dh, dw) = _params(attrs)
        oh, ow = self.infer([TensorType(x.shape, "float32")], attrs)[0].static_shape[2:]
        n, c, h, w = x.shape
        out = np.zeros((n, c, oh, ow), dtype=np.float64)
        for i in range(oh):
            for j in range(ow):
                ys = [i * sh - p[0] + a * dh for a in range(kh)]
                xs = [j * sw - p[1] + b * dw for b in range(kw)]
                ys = [y for y in ys if 0 <= y < h]
                xs = [z for z in xs if 0 <= z < w]
                win = x[:, :, ys][:, :, :, xs].astype(np.float64)
                if self.is_max:
                    out[:, :, i, j] = win.max(axis=(2, 3))
                else:
                    cnt = kh * kw if attrs.get("count_include_pad", 0) else len(ys) * len(xs)
                    if attrs.get("count_include_pad", 0):  # windows past the padded edge count only the pad
                        y_end = min(i * sh - p[0] + kh, h + p[2])
                        x_end = min(j * sw - p[1] + kw, w + p[3])
                        cnt = (y_end - (i * sh - p[0])) * (x_end - (j * sw - p[1]))
                    out[:, :, i, j] = win.sum(axis=(2, 3)) / cnt
        return [out.astype(x.dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        (kh, kw), (sh, sw), p, (dh, dw) = _params(attrs)
        _, _, h, w = x.shape
        acc = T.Buffer(f"{ctx.name}_acc", (1,), x.dtype, scope="local")
        zero = (T.IntImm(0),)
        include_pad = bool(attrs.get("count_include_pad", 0))

        def pixel(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            n, c, oy, ox = idx
            y0, x0 = oy * sh - p[0], ox * sw - p[1]

            def tap(a: T.LoopVar, b: T.LoopVar) -> T.Stmt:
                iy, ix = y0 + a * dh, x0 + b * dw
                inside = T.logical_and(iy >= 0, iy < h, ix >= 0, ix < w)
                v = x[n, c, T.minimum(T.maximum(iy, 0), h - 1), T.minimum(T.maximum(ix, 0), w - 1)]
                if self.is_max:
                    return T.Store(acc, zero, T.select(inside, T.maximum(acc[0], v), acc[0]))
                return T.Store(acc, zero, acc[0] + T.select(inside, v, T.const(0.0, x.dtype)))

            if self.is_max:
                value: T.Expr = acc[0]
            else:
                if include_pad:
                    ys = T.minimum(y0 + kh, h + p[2]) - y0
                    xs = T.minimum(x0 + kw, w + p[3]) - x0
                else:
                    ys = T.minimum(y0 + kh, h) - T.maximum(y0, 0)
                    xs = T.minimum(x0 + kw, w) - T.maximum(x0, 0)
                value = acc[0] / T.cast(x.dtype, ys * xs)
            return T.Allocate(
                acc,
                T.seq(
                    T.Store(acc, zero, T.const(-float("inf") if self.is_max else 0.0, x.dtype)),
                    T.loop(
                        kh,
                        lambda a: T.loop(kw, lambda b: tap(a, b), name=f"{ctx.name}_kx"),
                        name=f"{ctx.name}_ky",
                    ),
                    T.Store(out, idx, ctx.apply_epilogue(value, idx, None)),
                ),
            )

        return T.loop_nest(out.shape, pixel, prefix=f"{ctx.name}_i")


class MaxPool2D(Pool2D):
    name = "max_pool2d"
    is_max = True


class AvgPool2D(Pool2D):
    name = "avg_pool2d"
    is_max = False


class GlobalAvgPool2D(OpDef):
    name = "global_avg_pool2d"
    kind = "reduce"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        return [TensorType((*x.shape[:2], *([1] * (x.ndim - 2))), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        return [x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        n, c = x.shape[:2]
        hw = int(np.prod(x.shape[2:]))
        xf = x.with_(shape=(n, c, hw), strides=())
        of = out.with_(shape=(n, c), strides=())
        acc = T.Buffer(f"{ctx.name}_acc", (1,), x.dtype, scope="local")
        zero = (T.IntImm(0),)

        def chan(i: T.LoopVar, j: T.LoopVar) -> T.Stmt:
            idx = (i, j, *([T.IntImm(0)] * (x.ndim - 2)))
            return T.Allocate(
                acc,
                T.seq(
                    T.Store(acc, zero, T.const(0.0, x.dtype)),
                    T.loop(hw, lambda k: T.Store(acc, zero, acc[0] + xf[i, j, k]), name=f"{ctx.name}_k"),
                    T.Store(of, (i, j), ctx.apply_epilogue(acc[0] * (1.0 / hw), idx, i * c + j)),
                ),
            )

        return T.loop(
            n, lambda i: T.loop(c, lambda j: chan(i, j), name=f"{ctx.name}_c"), name=f"{ctx.name}_n"
        )


for _op in (MaxPool2D(), AvgPool2D(), GlobalAvgPool2D()):
    register(_op)
