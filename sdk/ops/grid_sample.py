"""grid_sample: ONNX GridSample (opset 16/20) on 2-D images and 3-D volumes: ``out[n, c, y, x] = X[n, c]``
sampled at the normalized location ``grid[n, y, x] = (gx, gy)`` in ``[-1, 1]`` (``(gx, gy, gz)`` for volumes).

``attrs``: ``mode`` (``linear``, ``nearest`` with halves to even, ``cubic`` with Keys' a = -0.75),
``padding_mode`` (``zeros``: taps outside read 0; ``border``: locations clamp to the image; ``reflection``:
locations reflect at the borders) and ``align_corners`` (whether -1 and 1 are the centers or the outer edges
of the corner pixels). Lowered as one loop nest over the output with the taps (1, 2 or 4 per axis) unrolled.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, register

_MODES = {
    "linear": "linear",
    "bilinear": "linear",
    "nearest": "nearest",
    "cubic": "cubic",
    "bicubic": "cubic",
}
_PADDING = ("zeros", "border", "reflection")
_A = -0.75  # the cubic convolution kernel's parameter


def _params(op: OpDef, attrs: dict[str, Any]) -> tuple[str, str, bool]:
    mode = _MODES.get(str(attrs.get("mode", "linear")))
    pad = str(attrs.get("padding_mode", "zeros"))
    if mode is None or pad not in _PADDING:
        raise op.error(f"mode {attrs.get('mode')!r} / padding_mode {pad!r} is not supported")
    return mode, pad, bool(int(attrs.get("align_corners", 0)))


def _cubic_weights(t: Any) -> list[Any]:
    """Keys' cubic convolution weights of the taps at -1, 0, 1, 2 for a fraction ``t`` in [0, 1)."""

    def near(d: Any) -> Any:  # |d| <= 1
        return ((_A + 2) * d - (_A + 3)) * d * d + 1

    def far(d: Any) -> Any:  # 1 < |d| < 2
        return ((_A * d - 5 * _A) * d + 8 * _A) * d - 4 * _A

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


# --------------------------------------------------------------------------------------------- NumPy meaning
def _np_reflect(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    rng = hi - lo
    below, above = v < lo, v > hi
    dx = np.where(below, lo - v, v - hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.floor(dx / rng)
    r = dx - n * rng
    even = np.mod(n, 2) == 0
    return np.where(below, np.where(even, lo + r, hi - r), np.where(above, np.where(even, hi - r, lo + r), v))


class GridSample(OpDef):
    name = "grid_sample"
    kind = "injective"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x, grid = inputs
        _params(self, attrs)
        nd = x.ndim - 2
        if nd not in (2, 3) or grid.ndim != x.ndim or grid.shape[-1] != nd:
            raise self.error(
                f"expects an N x C x spatial input and an N x spatial' x {nd} grid, got {x} and {grid}"
            )
        return [TensorType((x.shape[0], x.shape[1], *grid.shape[1:-1]), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x, grid = inputs[0].astype(np.float64), inputs[1].astype(np.float64)
        mode, pad, corners = _params(self, attrs)
        n, c = x.shape[:2]
        nd = x.ndim - 2
        out = np.zeros((n, c, *grid.shape[1:-1]))
        loc = []
        for k in range(nd):  # grid holds (x, y[, z]): the last axis first
            size = x.shape[-1 - k]
            g = grid[..., k]
            v = (g + 1) / 2 * (size - 1) if corners else ((g + 1) * size - 1) / 2
            if mode == "nearest":
                v = np.rint(v)
            lo, hi = (0.0, size - 1.0) if corners else (-0.5, size - 0.5)
            if pad == "border":
                v = np.where((v < lo) | (v > hi), np.clip(v, 0, size - 1), v)
            elif pad == "reflection":
                v = _np_reflect(v, lo, hi)
            loc.append((v, size, lo, hi))

        def taps(v: np.ndarray, size: int, lo: float, hi: float) -> list[tuple[np.ndarray, np.ndarray]]:
            """(index, weight) per tap along one axis."""
            if mode == "nearest":
                return [(np.trunc(v).astype(np.int64), np.ones_like(v))]
            base = np.floor(v)
            t = v - base
            if mode == "linear":
                pairs = [(base, 1 - t), (base + 1, t)]
            else:
                pairs = list(zip((base - 1, base, base + 1, base + 2), _cubic_weights(t), strict=True))
            return [(i.astype(np.int64), wt) for i, wt in pairs]

        def fix(i: np.ndarray, size: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
            """In-range index and whether the tap reads the image (zeros padding reads 0 outside)."""
            if pad == "zeros":
                return np.clip(i, 0, size - 1), (i >= 0) & (i < size)
            if pad == "border":
                return np.clip(i, 0, size - 1), np.ones(i.shape, bool)
            return np.trunc(_np_reflect(i.astype(np.float64), lo, hi)).astype(np.int64), np.ones(
                i.shape, bool
            )

        per_axis = [
            [(*fix(i, size, lo, hi), wt) for i, wt in taps(v, size, lo, hi)] for v, size, lo, hi in loc
        ]
        for combo in itertools.product(*per_axis):  # one tap per axis, in x, y[, z] order
            ok = np.logical_and.reduce([t[1] for t in combo])
            wt = np.prod([t[2] for t in combo], axis=0)
            for b in range(n):
                pix = x[b][(slice(None), *(t[0][b] for t in reversed(combo)))]  # (c, *spatial')
                out[b] += np.where(ok[b], pix, 0.0) * wt[b]
        return [out.astype(inputs[0].dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, grid = ins
        out = outs[0]
        mode, pad, corners = _params(self, attrs)
        nd = x.ndim - 2
        f32 = "float32"

        def c(v: float) -> T.Expr:
            return T.const(v, f32)

        def reflect(v: T.Expr, lo: float, hi: float) -> T.Expr:
            rng = hi - lo
            below, above = v < lo, v > hi
            dx = T.select(below, c(lo) - v, v - hi)
            n = T.call("floor", dx * (1.0 / rng))
            r = dx - n * rng
            even = (n - T.call("floor", n * 0.5) * 2.0).eq(c(0.0))
            return T.select(
                below,
                T.select(even, r + lo, c(hi) - r),
                T.select(above, T.select(even, c(hi) - r, r + lo), v),
            )

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            nb, ch, pos = idx[0], idx[1], idx[2:]
            axes = []
            for k in range(nd):  # x, y[, z]
                size = x.shape[-1 - k]
                g = T.cast(f32, grid[(nb, *pos, T.IntImm(k))])
                v = (g + 1.0) * (0.5 * (size - 1)) if corners else ((g + 1.0) * size - 1.0) * 0.5
                if mode == "nearest":
                    v = T.call("round", v)
                lo, hi = (0.0, size - 1.0) if corners else (-0.5, size - 0.5)
                if pad == "border":
                    out_of = T.BinOp("or", v < lo, v > hi)
                    v = T.select(out_of, T.minimum(T.maximum(v, c(0.0)), c(size - 1.0)), v)
                elif pad == "reflection":
                    v = reflect(v, lo, hi)
                if mode == "nearest":
                    tap_list = [(T.cast("int64", v), c(1.0))]
                else:
                    base = T.call("floor", v)
                    t = v - base
                    bi = T.cast("int64", base)
                    if mode == "linear":
                        tap_list = [(bi, c(1.0) - t), (bi + 1, t)]
                    else:
                        tap_list = list(zip((bi - 1, bi, bi + 1, bi + 2), _cubic_weights(t), strict=True))
                fixed = []
                for i, wt in tap_list:
                    if pad == "zeros":
                        ok: T.Expr | None = T.logical_and(i >= 0, i < size)
                        j = T.minimum(T.maximum(i, 0), size - 1)
                    elif pad == "border":
                        ok, j = None, T.minimum(T.maximum(i, 0), size - 1)
                    else:
                        ok, j = None, T.cast("int64", reflect(T.cast(f32, i), lo, hi))
                        j = T.minimum(T.maximum(j, 0), size - 1)
                    fixed.append((j, wt, ok))
                axes.append(fixed)
            acc: T.Expr | None = None
            for combo in itertools.product(*axes):  # one tap per axis, in x, y[, z] order
                v = T.cast(f32, x[(nb, ch, *(j for j, _, _ in reversed(combo)))])
                oks = [o for _, _, o in combo if o is not None]
                if oks:
                    v = T.select(T.logical_and(*oks), v, c(0.0))
                if mode != "nearest":
                    wt = combo[0][1]
                    for _, w_k, _ in combo[1:]:
                        wt = wt * w_k
                    v = v * wt
                acc = v if acc is None else acc + v
            assert acc is not None
            return T.Store(out, idx, ctx.apply_epilogue(T.cast(out.dtype, acc), idx))

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


register(GridSample())
