"""deform_conv: ONNX DeformConv (opsets 19 and 22) on 2-D images: a grouped convolution whose taps are moved by
learned offsets and scaled by a mask.

Inputs ``x [N, C, H, W]``, ``w [oC, C / group, kH, kW]``, ``offset [N, offset_group * kH * kW * 2, oH, oW]``
(per tap: the row, then the column offset), ``bias [oC]`` and ``mask [N, offset_group * kH * kW, oH, oW]``
(the importer gives zeros and ones when the ONNX node omits them). Each tap samples its input channel
bilinearly at ``(oh * stride - pad + kh * dilation + offset_row, ...)``; samples outside the image read 0 (as
ONNX's reference, GridSample with align_corners and zero padding). ``attrs``: ``strides``, ``pads`` (top,
left, bottom, right), ``dilations``, ``group``, ``offset_group``. Lowered (kiln script) as a direct loop nest
over the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir.types import TensorType
from . import script
from .base import OpError, static_dims


def _infer(
    x: TensorType,
    w: TensorType,
    offset: TensorType,
    bias: TensorType,
    mask: TensorType,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
) -> TensorType:
    if x.ndim != 4 or w.ndim != 4 or offset.ndim != 4:
        raise OpError(
            f"deform_conv: kiln supports 2-D images (x [N, C, H, W]), got x {x}, w {w}, offset {offset}"
        )
    n, c, h, wd = static_dims(x, "deform_conv")
    oc, icg, kh, kw = static_dims(w, "deform_conv")
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    if group < 1 or offset_group < 1 or icg * group != c or oc % group or c % offset_group:
        raise OpError(
            f"deform_conv: x {x} and w {w} do not fit group {group} and offset_group {offset_group}"
        )
    taps = offset_group * kh * kw
    if tuple(offset.shape) != (n, 2 * taps, oh, ow) or tuple(mask.shape) != (n, taps, oh, ow):
        raise OpError(
            f"deform_conv: expects offset [{n}, {2 * taps}, {oh}, {ow}] and mask [{n}, {taps}, {oh}, {ow}], "
            f"got {offset} and {mask}"
        )
    if tuple(bias.shape) != (oc,):
        raise OpError(f"deform_conv: expects bias [{oc}], got {bias}")
    return TensorType((n, oc, oh, ow), x.dtype)


def _reference(
    x: np.ndarray,
    w: np.ndarray,
    offset: np.ndarray,
    bias: np.ndarray,
    mask: np.ndarray,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
) -> np.ndarray:
    n, ic, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    oh, ow = offset.shape[2:]
    og, ico, ocg = offset_group, ic // offset_group, oc // group
    off = offset.reshape(n, og, kh, kw, 2, oh, ow).astype(np.float64)
    m = mask.reshape(n, og, kh, kw, oh, ow)
    cols = np.zeros((n, ic, kh, kw, oh, ow))
    base_h = (np.arange(oh) * strides[0] - pads[0])[:, None]
    base_w = (np.arange(ow) * strides[1] - pads[1])[None, :]
    for b in range(n):
        for g in range(og):
            chans = x[b, g * ico : (g + 1) * ico].astype(np.float64)
            for ki in range(kh):
                for kj in range(kw):
                    ph = base_h + ki * dilations[0] + off[b, g, ki, kj, 0]
                    pw = base_w + kj * dilations[1] + off[b, g, ki, kj, 1]
                    h0, w0 = np.floor(ph), np.floor(pw)
                    lh, lw = ph - h0, pw - w0
                    val = np.zeros((ico, oh, ow))
                    for dy, dx, wt in (
                        (0, 0, (1 - lh) * (1 - lw)),
                        (0, 1, (1 - lh) * lw),
                        (1, 0, lh * (1 - lw)),
                        (1, 1, lh * lw),
                    ):
                        hh, ww = (h0 + dy).astype(np.int64), (w0 + dx).astype(np.int64)
                        ok = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < wd)
                        val += chans[:, np.clip(hh, 0, h - 1), np.clip(ww, 0, wd - 1)] * (ok * wt)
                    cols[b, g * ico : (g + 1) * ico, ki, kj] = val * m[b, g, ki, kj]
    out = np.zeros((n, oc, oh, ow))
    for gg in range(group):
        wg = w[gg * ocg : (gg + 1) * ocg].astype(np.float64)
        out[:, gg * ocg : (gg + 1) * ocg] = np.einsum(
            "ocij,ncijhw->nohw", wg, cols[:, gg * icg : (gg + 1) * icg]
        )
    return (out + bias.reshape(1, -1, 1, 1)).astype(x.dtype)


@script.operator("deform_conv", infer=_infer, reference=_reference, flops_per_element=0)
def deform_conv(  # type: ignore[no-untyped-def]
    x,
    w,
    offset,
    bias,
    mask,
    out,
    *,
    strides=(1, 1),
    pads=(0, 0, 0, 0),
    dilations=(1, 1),
    group=1,
    offset_group=1,
):
    h = x.shape[2]
    wd = x.shape[3]
    kh = w.shape[2]
    kw = w.shape[3]
    icg = w.shape[1]
    ocg = out.shape[1] // group
    ico = x.shape[1] // offset_group
    for b, o, i, j in script.grid(out.shape[0], out.shape[1], out.shape[2], out.shape[3]):
        acc = script.cast("float32", bias[o])
        for ci in range(icg):
            c = (o // ocg) * icg + ci
            og = c // ico
            for ki, kj in script.grid(kh, kw):
                k = og * kh * kw + ki * kw + kj
                ph = script.cast("float32", offset[b, 2 * k, i, j]) + (
                    i * strides[0] - pads[0] + ki * dilations[0]
                )
                pw = script.cast("float32", offset[b, 2 * k + 1, i, j]) + (
                    j * strides[1] - pads[1] + kj * dilations[1]
                )
                fh = script.floor(ph)
                fw = script.floor(pw)
                lh = ph - fh
                lw = pw - fw
                h0 = int(fh)
                w0 = int(fw)
                v00 = script.select(
                    h0 >= 0 and h0 < h and w0 >= 0 and w0 < wd,
                    x[b, c, min(max(h0, 0), h - 1), min(max(w0, 0), wd - 1)],
                    0.0,
                )
                v01 = script.select(
                    h0 >= 0 and h0 < h and w0 + 1 >= 0 and w0 + 1 < wd,
                    x[b, c, min(max(h0, 0), h - 1), min(max(w0 + 1, 0), wd - 1)],
                    0.0,
                )
                v10 = script.select(
                    h0 + 1 >= 0 and h0 + 1 < h and w0 >= 0 and w0 < wd,
                    x[b, c, min(max(h0 + 1, 0), h - 1), min(max(w0, 0), wd - 1)],
                    0.0,
                )
                v11 = script.select(
                    h0 + 1 >= 0 and h0 + 1 < h and w0 + 1 >= 0 and w0 + 1 < wd,
                    x[b, c, min(max(h0 + 1, 0), h - 1), min(max(w0 + 1, 0), wd - 1)],
                    0.0,
                )
                sample = (1.0 - lh) * ((1.0 - lw) * v00 + lw * v01) + lh * ((1.0 - lw) * v10 + lw * v11)
                acc = (
                    acc
                    + script.cast("float32", w[o, ci, ki, kj])
                    * script.cast("float32", mask[b, og * kh * kw + ki * kw + kj, i, j])
                    * sample
                )
        out[b, o, i, j] = script.cast(out.dtype, acc)
