"""resize: nearest or bilinear resampling of the two spatial axes of an NCHW tensor (ONNX Resize / Upsample).

``attrs``:

* ``scales=(sh, sw)``: the scale factors of H and W (the ONNX ``scales``, or ``sizes / input`` when the model
  gives sizes), float32 values; they define the coordinate mapping;
* ``sizes=(oh, ow)`` (optional): the output size; default ``floor(input * scale)``, as ONNX computes it;
* ``mode``: ``"nearest"`` (default) or ``"linear"``;
* ``coordinate_transformation_mode``: how output index ``x`` maps to a source coordinate ``c`` (``L`` input
  length, ``l`` output length, ``s`` scale): ``half_pixel`` (default) ``(x + 0.5) / s - 0.5``;
  ``pytorch_half_pixel`` the same, but ``0`` when ``l == 1``; ``asymmetric`` ``x / s``; ``align_corners``
  ``x * (L - 1) / (l - 1)`` (``0`` when ``l == 1``);
* ``nearest_mode`` (nearest only): how ``c`` rounds to an index: ``round_prefer_floor`` (default; halves go
  down), ``round_prefer_ceil`` (halves go up), ``floor`` or ``ceil``.

Source indices are clamped into the input (ONNX's edge padding). An output as large as the input is the input
(onnxruntime's rule; a scale such as 1.1 on a length of 9 gives 9 again). Linear mode weighs the neighbours
``floor(c)`` and ``floor(c) + 1`` by ``1 - frac(c)`` and ``frac(c)``, separably in H and W.

Coordinates are computed in float32 in exactly the operation order of the formulas above, as onnxruntime and
PyTorch do (the ONNX Python reference uses float64 and can round differently where a coordinate lands within
an ulp of a half for scales such as 0.6 that float32 cannot represent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, elementwise_copy, flat_index, register

COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
MODES = ("nearest", "linear")


def source_coord(x: Any, in_len: int, out_len: int, scale: float, mode: str) -> Any:
    """Source coordinate of output index ``x``: ``x`` is a float32 NumPy array or a float32 tensor-IR
    expression, and the same arithmetic runs on both (one definition for the reference and the lowering)."""
    if mode == "align_corners":
        return x * 0.0 if out_len == 1 else x * float(in_len - 1) / float(out_len - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel" and out_len == 1:
        return x * 0.0
    return (x + 0.5) / scale - 0.5


def nearest_index(f: Any, frac: Any, mode: str, step: Callable[[Any], Any]) -> Any:
    """The index coordinate ``f + frac`` (``f`` = floor, an integer) rounds to. ``step(cond)`` turns a
    comparison into 0/1 of ``f``'s kind."""
    if mode == "floor":
        return f
    if mode == "ceil":
        return f + step(frac > 0.0)
    if mode == "round_prefer_ceil":
        return f + step(frac >= 0.5)
    return f + step(frac > 0.5)  # round_prefer_floor


class Resize(OpDef):
    """Nearest or bilinear resize of H and W of an NCHW tensor (attributes: see the module docstring)."""

    name = "resize"
    kind = "injective"

    def params(
        self, x: TensorType, attrs: dict[str, Any]
    ) -> tuple[str, str, str, tuple[float, float], tuple[int, int]]:
        """(mode, coordinate mode, nearest mode, float32 scales, output sizes), validated."""
        mode = str(attrs.get("mode", "nearest"))
        ctm = str(attrs.get("coordinate_transformation_mode", "half_pixel"))
        nearest = str(attrs.get("nearest_mode", "round_prefer_floor"))
        for value, allowed, what in (
            (mode, MODES, "mode"),
            (ctm, COORDINATE_MODES, "coordinate_transformation_mode"),
            (nearest, NEAREST_MODES, "nearest_mode"),
        ):
            if value not in allowed:
                raise self.error(f"{what} {value!r} is not supported; supported: {', '.join(allowed)}")
        sh, sw = (float(np.float32(s)) for s in attrs["scales"])
        if not (sh > 0 and sw > 0):
            raise self.error(f"scales must be positive, got {(sh, sw)}")
        if attrs.get("sizes") is not None:
            oh, ow = (int(s) for s in attrs["sizes"])
        else:
            h, w = x.shape[2:]
            if not isinstance(h, int) or not isinstance(w, int):
                raise self.error(f"needs static H and W (or explicit sizes), got {x}")
            oh, ow = (math.floor(np.float32(s) * np.float32(d)) for s, d in ((sh, h), (sw, w)))
        if oh < 1 or ow < 1:
            raise self.error(f"output size {(oh, ow)} of {x} with scales {(sh, sw)} is empty")
        return mode, ctm, nearest, (sh, sw), (oh, ow)

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        if x.ndim != 4:
            raise self.error(f"expects an NCHW input, got {x}")
        *_, (oh, ow) = self.params(x, attrs)
        return [TensorType((x.shape[0], x.shape[1], oh, ow), x.dtype)]

    def _table(
        self, in_len: int, out_len: int, scale: float, mode: str, ctm: str, nearest: str
    ) -> tuple[np.ndarray, ...]:
        """Per output position of one axis: ``(index,)`` (nearest) or ``(i0, i1, w1)`` (linear)."""
        c = source_coord(np.arange(out_len, dtype=np.float32), in_len, out_len, scale, ctm)
        f = np.floor(c)
        frac = c - f
        fi = f.astype(np.int64)
        if mode == "nearest":
            return (np.clip(nearest_index(fi, frac, nearest, lambda b: b.astype(np.int64)), 0, in_len - 1),)
        return np.clip(fi, 0, in_len - 1), np.clip(fi + 1, 0, in_len - 1), frac

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        mode, ctm, nearest, (sh, sw), (oh, ow) = self.params(TensorType(x.shape, "float32"), attrs)
        if (oh, ow) == x.shape[2:]:
            return [x.copy()]
        ty = self._table(x.shape[2], oh, sh, mode, ctm, nearest)
        tx = self._table(x.shape[3], ow, sw, mode, ctm, nearest)
        if mode == "nearest":
            return [x[:, :, ty[0]][:, :, :, tx[0]].copy()]
        xf = x.astype(np.float64)
        (y0, y1, wy), (x0, x1, wx) = ty, tx
        wy, wx = wy.astype(np.float64), wx.astype(np.float64)
        rows = xf[:, :, y0] * (1 - wy)[:, None] + xf[:, :, y1] * wy[:, None]
        out = rows[:, :, :, x0] * (1 - wx) + rows[:, :, :, x1] * wx
        return [out.astype(x.dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        _, _, h, w = x.shape
        mode, ctm, nearest, (sh, sw), (oh, ow) = self.params(TensorType(x.shape, x.dtype), attrs)
        if (oh, ow) == (h, w):
            return elementwise_copy(ctx, x, out)

        def axis(i: T.Expr, in_len: int, out_len: int, scale: float) -> tuple[T.Expr, T.Expr]:
            """(floor, frac) of the source coordinate of output index ``i``, exactly (no float floor)."""
            c = source_coord(T.cast("float32", i), in_len, out_len, scale, ctm)
            t = T.cast("int64", c)  # truncates toward zero; one less where c is negative and fractional
            f = T.select(T.cast("float32", t) > c, t - 1, t)
            return f, c - T.cast("float32", f)

        def clamp(i: T.Expr, n: int) -> T.Expr:
            return T.minimum(T.maximum(i, 0), n - 1)

        def step(cond: T.Expr) -> T.Expr:
            return T.select(cond, T.IntImm(1), T.IntImm(0))

        def pixel(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            n, c, oy, ox = idx
            (fy, ry), (fx, rx) = axis(oy, h, oh, sh), axis(ox, w, ow, sw)
            if mode == "nearest":
                iy = clamp(nearest_index(fy, ry, nearest, step), h)
                ix = clamp(nearest_index(fx, rx, nearest, step), w)
                value: T.Expr = x[n, c, iy, ix]
            else:
                wy, wx = T.cast(x.dtype, ry), T.cast(x.dtype, rx)
                y0, y1, x0, x1 = clamp(fy, h), clamp(fy + 1, h), clamp(fx, w), clamp(fx + 1, w)
                top = x[n, c, y0, x0] * (1.0 - wx) + x[n, c, y0, x1] * wx
                bottom = x[n, c, y1, x0] * (1.0 - wx) + x[n, c, y1, x1] * wx
                value = top * (1.0 - wy) + bottom * wy
            return T.Store(out, idx, ctx.apply_epilogue(value, idx, flat_index(idx, out.shape)))

        return T.loop_nest(out.shape, pixel, prefix=f"{ctx.name}_i")

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        if attrs.get("mode", "nearest") != "linear" or not outputs[0].is_static:
            return 0
        return 9 * outputs[0].numel  # 6 multiplies and 3 adds per output element


register(Resize())
