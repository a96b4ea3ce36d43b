"""conv_transpose2d: the transposed (fractionally strided) 2-D convolution of ONNX ConvTranspose.

NCHW input, weights ``(C, M / groups, KH, KW)``, optional bias ``(M,)``. ``attrs``: ``strides``,
``pads=(top, left, bottom, right)`` (negative values extend the output), ``dilations``, ``groups`` and
``output_padding=(oh_extra, ow_extra)`` (added at the bottom and right). The output size per axis is
``stride * (in - 1) + output_padding + (k - 1) * dilation + 1 - pad_begin - pad_end``; the ONNX frontend
turns ``output_shape`` and ``auto_pad`` into these pads. 1-D transposed convolutions are imported as 2-D
ones with a unit height.

Lowered as a gather per output element: ``out[n, m, oy, ox] = bias[m] + sum x[n, c, iy, ix] * w[c, m', ky,
kx]`` over the taps whose ``oy + pad_top - ky * dh`` is a non-negative multiple of the stride below
``stride * H`` (the same for x). Each output element is stored once, through the epilogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, int_tuple, positive_int, register, static_dims


def _attrs(
    attrs: dict[str, Any],
) -> tuple[tuple[int, int], tuple[int, ...], tuple[int, int], int, tuple[int, int]]:
    name = "conv_transpose2d"
    s = int_tuple(attrs, "strides", 2, 1, name, 1)
    p = int_tuple(attrs, "pads", 4, 0, name, -(2**62))  # negative: output_shape asks for more
    d = int_tuple(attrs, "dilations", 2, 1, name, 1)
    op = int_tuple(attrs, "output_padding", 2, 0, name, 0)
    return (s[0], s[1]), p, (d[0], d[1]), positive_int(attrs, "groups", 1, name), (op[0], op[1])


def out_size(size: int, k: int, stride: int, pad_b: int, pad_e: int, dilation: int, extra: int) -> int:
    return stride * (size - 1) + extra + (k - 1) * dilation + 1 - pad_b - pad_e


class ConvTranspose2D(OpDef):
    name = "conv_transpose2d"
    kind = "complex"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x, w = inputs[0], inputs[1]
        if x.ndim != 4 or w.ndim != 4:
            raise self.error(f"expects 4-D input and weights (NCHW, C x M/groups x KH x KW), got {x} and {w}")
        (sh, sw), (pt, pl, pb, pr), (dh, dw), g, (eh, ew) = _attrs(attrs)
        n, c, h, wd = x.shape
        cw, mg, kh, kw = static_dims(w, self.name)
        if isinstance(c, int) and c != cw:
            raise self.error(f"input has {c} channels but the weights have {cw}")
        if cw % g:
            raise self.error(f"{cw} input channels do not divide into {g} groups")
        m = mg * g
        if len(inputs) > 2 and inputs[2].shape != (m,):
            raise self.error(f"bias must have shape ({m},), got {inputs[2]}")
        oh = out_size(h, kh, sh, pt, pb, dh, eh) if isinstance(h, int) else h
        ow = out_size(wd, kw, sw, pl, pr, dw, ew) if isinstance(wd, int) else wd
        if isinstance(oh, int) and isinstance(ow, int) and (oh <= 0 or ow <= 0):
            raise self.error(f"output size {oh}x{ow} is empty (pads {attrs.get('pads')})")
        return [TensorType((n, m, oh, ow), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x, w = inputs[0].astype(np.float64), inputs[1].astype(np.float64)
        (sh, sw), (pt, pl, pb, pr), (dh, dw), g, (eh, ew) = _attrs(attrs)
        n, c, h, wd = x.shape
        _, mg, kh, kw = w.shape
        cg = c // g
        # scatter form on an unpadded canvas, then crop (or extend) by the pads
        full_h = sh * (h - 1) + (kh - 1) * dh + 1 + eh
        full_w = sw * (wd - 1) + (kw - 1) * dw + 1 + ew
        off_h, off_w = max(0, -pt), max(0, -pl)
        canvas = np.zeros((n, mg * g, full_h + off_h + max(0, -pb), full_w + off_w + max(0, -pr)))
        for gi in range(g):
            xs = x[:, gi * cg : (gi + 1) * cg]
            ws = w[gi * cg : (gi + 1) * cg]
            contrib = np.einsum("nchw,cmij->nmijhw", xs, ws)
            for i in range(kh):
                for j in range(kw):
                    y0, x0 = off_h + i * dh, off_w + j * dw
                    canvas[
                        :,
                        gi * mg : (gi + 1) * mg,
                        y0 : y0 + sh * (h - 1) + 1 : sh,
                        x0 : x0 + sw * (wd - 1) + 1 : sw,
                    ] += contrib[:, :, i, j]
        oh = out_size(h, kh, sh, pt, pb, dh, eh)
        ow = out_size(wd, kw, sw, pl, pr, dw, ew)
        top, left = off_h + pt, off_w + pl
        out = canvas[:, :, top : top + oh, left : left + ow]
        if len(inputs) > 2:
            out = out + inputs[2].astype(np.float64).reshape(1, -1, 1, 1)
        return [np.ascontiguousarray(out).astype(inputs[0].dtype)]

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        x, w = inputs[0], inputs[1]
        return 2 * x.numel * w.numel // max(1, int(w.static_shape[0]))

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        out = outs[0]
        (sh, sw), (pt, pl, _, _), (dh, dw), g, _ = _attrs(attrs)
        _, c, h, wd = x.shape
        _, mg, kh, kw = w.shape
        cg = c // g
        acc = T.Buffer(f"{ctx.name}_acc", (1,), x.dtype, scope="local")
        z = (T.IntImm(0),)

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            n, m, oy, ox = idx
            gi = m // mg if g > 1 else T.IntImm(0)
            ml = m % mg if g > 1 else m

            def tap_y(ky: T.LoopVar) -> T.Stmt:
                ty = oy + pt - ky * dh
                iy = ty // sh if sh > 1 else ty
                ok_y = T.logical_and(ty >= 0, ty < sh * (h - 1) + 1)
                if sh > 1:
                    ok_y = T.logical_and(ok_y, (ty % sh).eq(0))

                def tap_x(kx: T.LoopVar) -> T.Stmt:
                    tx = ox + pl - kx * dw
                    ix = tx // sw if sw > 1 else tx
                    ok_x = T.logical_and(tx >= 0, tx < sw * (wd - 1) + 1)
                    if sw > 1:
                        ok_x = T.logical_and(ok_x, (tx % sw).eq(0))

                    def chan(ci: T.LoopVar) -> T.Stmt:
                        cc = gi * cg + ci
                        return T.Store(acc, z, acc[0] + x[n, cc, iy, ix] * w[cc, ml, ky, kx])

                    return T.IfThenElse(ok_x, T.loop(cg, chan, name=f"{ctx.name}_c"))

                return T.IfThenElse(ok_y, T.loop(kw, tap_x, name=f"{ctx.name}_kx"))

            init = bias[m] if bias is not None else T.const(0.0, x.dtype)
            return T.Allocate(
                acc,
                T.seq(
                    T.Store(acc, z, init),
                    T.loop(kh, tap_y, name=f"{ctx.name}_ky"),
                    T.Store(out, idx, ctx.apply_epilogue(acc[0], idx)),
                ),
            )

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


register(ConvTranspose2D())
