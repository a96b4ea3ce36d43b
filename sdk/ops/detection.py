"""Object-detection operators: non_max_suppression (ONNX NonMaxSuppression) and roi_align (ONNX RoiAlign).

non_max_suppression has a **bounded output**: ONNX gives one ``[batch, class, box]`` row per selected box, a
count known only at run time; kiln's output has the most rows the selection can give,
``batches * classes * min(max_output_boxes_per_class, boxes)``, the selected rows first (in ONNX's order:
by batch, by class, then by falling score, the lower box index first among equal scores) and every row after
them ``-1, -1, -1``. The number of selected boxes is the number of rows whose first entry is not -1
(:func:`bounded_count`). When the inputs are constants the importer folds the operator to ONNX's exact
result. ``max_output_boxes_per_class``, ``iou_threshold`` and ``score_threshold`` are attributes (constant
ONNX inputs); boxes scoring at most ``score_threshold`` are not candidates.

roi_align pools each region of interest (``rois[r] = x1, y1, x2, y2`` in input pixels times
``spatial_scale``, of image ``batch_indices[r]``) into an ``output_height x output_width`` grid; each bin
averages (``mode="avg"``) or takes the maximum (``"max"``, of the bilinear taps each weighted, as ONNX's
reference and onnxruntime do) of ``sampling_ratio`` x ``sampling_ratio`` bilinear samples (0: ceil(roi size /
bins) per axis, known at run time). ``half_pixel`` (ONNX ``coordinate_transformation_mode="half_pixel"``,
the default since opset 16) shifts the corners by half a pixel; without it rois are at least 1 x 1.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir.types import TensorType
from . import script
from .base import OpError

# ------------------------------------------------------------------------------------------ bounded outputs


def bounded_count(result: np.ndarray) -> int:
    """How many leading rows (axis 0; for NonZero's ``[rank, bound]`` result: columns, axis 1) of a bounded
    result are real: the rest are -1."""
    a = np.asarray(result)
    if a.ndim != 2:
        raise ValueError(f"a bounded result is 2-D, got shape {a.shape}")
    return int(np.count_nonzero(a[:, 0] != -1)) if a.shape[1] == 3 else int(np.count_nonzero(a[0] != -1))


# --------------------------------------------------------------------------------------- non_max_suppression
def _nms_rows(boxes: TensorType, scores: TensorType, max_output: int) -> int:
    b, n, c = boxes.shape[0], boxes.shape[1], scores.shape[1]
    if not all(isinstance(d, int) for d in (b, n, c)):
        raise OpError(f"non_max_suppression: needs static shapes, got boxes {boxes} and scores {scores}")
    return int(b) * int(c) * min(max_output, int(n))  # type: ignore[arg-type]


def _nms_infer(
    boxes: TensorType,
    scores: TensorType,
    *,
    max_output: int,
    iou_threshold: float = 0.0,
    score_threshold: float = -math.inf,
    center_point_box: int = 0,
) -> TensorType:
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3:
        raise OpError(
            f"non_max_suppression: expects boxes [B, N, 4] and scores [B, C, N], got {boxes}, {scores}"
        )
    if scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise OpError(f"non_max_suppression: boxes {boxes} and scores {scores} disagree on batches or boxes")
    if max_output <= 0:
        raise OpError(
            "non_max_suppression: max_output_boxes_per_class is 0, so nothing is selected (an empty result); "
            "give the most boxes to keep per class"
        )
    return TensorType((_nms_rows(boxes, scores, max_output), 3), "int64")


def _corners(b: np.ndarray, center: int) -> tuple[np.ndarray, ...]:
    """x_min, x_max, y_min, y_max of boxes ``b`` [..., 4]."""
    if center:
        return (
            b[..., 0] - b[..., 2] / 2,
            b[..., 0] + b[..., 2] / 2,
            b[..., 1] - b[..., 3] / 2,
            b[..., 1] + b[..., 3] / 2,
        )
    return (
        np.minimum(b[..., 1], b[..., 3]),
        np.maximum(b[..., 1], b[..., 3]),
        np.minimum(b[..., 0], b[..., 2]),
        np.maximum(b[..., 0], b[..., 2]),
    )


def _nms_reference(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    max_output: int,
    iou_threshold: float = 0.0,
    score_threshold: float = -math.inf,
    center_point_box: int = 0,
) -> np.ndarray:
    nb, n, _ = boxes.shape
    rows = []
    thr = np.float32(iou_threshold)
    for b in range(nb):
        x0, x1, y0, y1 = _corners(boxes[b], center_point_box)
        area = (x1 - x0) * (y1 - y0)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            order = sorted((i for i in range(n) if s[i] > score_threshold), key=lambda i: (-s[i], i))
            kept: list[int] = []
            for i in order:
                if len(kept) >= max_output:
                    break
                iw = np.minimum(x1[i], x1[kept]) - np.maximum(x0[i], x0[kept])
                ih = np.minimum(y1[i], y1[kept]) - np.maximum(y0[i], y0[kept])
                inter = iw * ih
                union = area[i] + area[kept] - inter
                with np.errstate(divide="ignore", invalid="ignore"):
                    hit = (
                        (iw > 0)
                        & (ih > 0)
                        & (area[i] > 0)
                        & (area[kept] > 0)
                        & (union > 0)
                        & (inter / union > thr)
                    )
                if not hit.any():
                    kept.append(i)
                    rows.append((b, c, i))
    out = np.full(
        (_nms_rows(TensorType(boxes.shape, "float32"), TensorType(scores.shape, "float32"), max_output), 3),
        -1,
        np.int64,
    )
    if rows:
        out[: len(rows)] = rows
    return out


@script.operator("non_max_suppression", infer=_nms_infer, reference=_nms_reference, flops_per_element=0)
def non_max_suppression(  # type: ignore[no-untyped-def]
    boxes, scores, out, *, max_output, iou_threshold=0.0, score_threshold=-math.inf, center_point_box=0
):
    nb = boxes.shape[0]
    n = boxes.shape[1]
    nc = scores.shape[1]
    k = min(max_output, n)
    order = script.alloc(n, "int64")
    kept = script.alloc(k, "int64")
    total = 0
    for b in range(nb):
        for c in range(nc):
            for i in range(n):  # the position of box i in falling score order (the lower index first on ties)
                pos = 0
                for j in range(n):
                    if scores[b, c, j] > scores[b, c, i] or (scores[b, c, j] == scores[b, c, i] and j < i):
                        pos = pos + 1
                order[pos] = i
            sel = 0
            for r in range(n):
                bi = order[r]
                if sel < k and scores[b, c, bi] > score_threshold:
                    keep = 1
                    for q in range(sel):
                        bj = kept[q]
                        if center_point_box:
                            ax0 = boxes[b, bi, 0] - boxes[b, bi, 2] / 2
                            ax1 = boxes[b, bi, 0] + boxes[b, bi, 2] / 2
                            ay0 = boxes[b, bi, 1] - boxes[b, bi, 3] / 2
                            ay1 = boxes[b, bi, 1] + boxes[b, bi, 3] / 2
                            bx0 = boxes[b, bj, 0] - boxes[b, bj, 2] / 2
                            bx1 = boxes[b, bj, 0] + boxes[b, bj, 2] / 2
                            by0 = boxes[b, bj, 1] - boxes[b, bj, 3] / 2
                            by1 = boxes[b, bj, 1] + boxes[b, bj, 3] / 2
                        else:
                            ax0 = min(boxes[b, bi, 1], boxes[b, bi, 3])
                            ax1 = max(boxes[b, bi, 1], boxes[b, bi, 3])
                            ay0 = min(boxes[b, bi, 0], boxes[b, bi, 2])
                            ay1 = max(boxes[b, bi, 0], boxes[b, bi, 2])
                            bx0 = min(boxes[b, bj, 1], boxes[b, bj, 3])
                            bx1 = max(boxes[b, bj, 1], boxes[b, bj, 3])
                            by0 = min(boxes[b, bj, 0], boxes[b, bj, 2])
                            by1 = max(boxes[b, bj, 0], boxes[b, bj, 2])
                        iw = min(ax1, bx1) - max(ax0, bx0)
                        ih = min(ay1, by1) - max(ay0, by0)
                        inter = iw * ih
                        area_a = (ax1 - ax0) * (ay1 - ay0)
                        area_b = (bx1 - bx0) * (by1 - by0)
                        union = area_a + area_b - inter
                        positive = iw > 0.0 and ih > 0.0 and area_a > 0.0 and area_b > 0.0 and union > 0.0
                        if positive and inter / union > iou_threshold:  # (a float division by 0 is harmless)
                            keep = 0
                    if keep == 1:
                        kept[sel] = bi
                        out[total, 0] = b
                        out[total, 1] = c
                        out[total, 2] = bi
                        total = total + 1
                        sel = sel + 1
    for t in range(total, out.shape[0]):
        out[t, 0] = -1
        out[t, 1] = -1
        out[t, 2] = -1


# ------------------------------------------------------------------------------------------------- roi_align
_ROI_MODES = ("avg", "max")


def _roi_infer(
    x: TensorType,
    rois: TensorType,
    batch_indices: TensorType,
    *,
    mode: str = "avg",
    output_height: int = 1,
    output_width: int = 1,
    sampling_ratio: int = 0,
    spatial_scale: float = 1.0,
    half_pixel: int = 1,
) -> TensorType:
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or batch_indices.ndim != 1:
        raise OpError(
            f"roi_align: expects X [N, C, H, W], rois [R, 4] and batch_indices [R], got {x}, {rois}, {batch_indices}"
        )
    if mode not in _ROI_MODES:
        raise OpError(f"roi_align: mode {mode!r} is not one of {_ROI_MODES}")
    if not x.dtype.startswith("float"):
        raise OpError(f"roi_align: expects a float input, got {x.dtype}")
    if int(output_height) < 1 or int(output_width) < 1:
        raise OpError(f"roi_align: the output size {output_height} x {output_width} must be positive")
    return TensorType((rois.shape[0], x.shape[1], int(output_height), int(output_width)), x.dtype)


def _roi_reference(
    x: np.ndarray,
    rois: np.ndarray,
    batch_indices: np.ndarray,
    *,
    mode: str = "avg",
    output_height: int = 1,
    output_width: int = 1,
    sampling_ratio: int = 0,
    spatial_scale: float = 1.0,
    half_pixel: int = 1,
) -> np.ndarray:
    _, c, h, w = x.shape
    oh, ow = int(output_height), int(output_width)
    out = np.zeros((rois.shape[0], c, oh, ow), np.float32)
    off = 0.5 if half_pixel else 0.0
    for r in range(rois.shape[0]):
        img = x[int(batch_indices[r])].astype(np.float32)
        x0, y0, x1, y1 = (np.float32(v) * np.float32(spatial_scale) - np.float32(off) for v in rois[r])
        rw, rh = x1 - x0, y1 - y0
        if not half_pixel:
            rw, rh = max(rw, np.float32(1)), max(rh, np.float32(1))
        bh, bw = rh / np.float32(oh), rw / np.float32(ow)
        gh = int(sampling_ratio) if sampling_ratio > 0 else int(np.ceil(rh / oh))
        gw = int(sampling_ratio) if sampling_ratio > 0 else int(np.ceil(rw / ow))
        count = max(gh * gw, 1)
        for ph in range(oh):
            for pw in range(ow):
                vals = []
                for iy in range(gh):
                    yy = y0 + ph * bh + (iy + np.float32(0.5)) * bh / np.float32(gh)
                    for ix in range(gw):
                        xx = x0 + pw * bw + (ix + np.float32(0.5)) * bw / np.float32(gw)
                        if yy < -1.0 or yy > h or xx < -1.0 or xx > w:
                            vals.append(np.zeros(c, np.float32))
                            continue
                        yc, xc = max(yy, np.float32(0)), max(xx, np.float32(0))
                        ylo, xlo = int(yc), int(xc)
                        yhi, xhi = min(ylo + 1, h - 1), min(xlo + 1, w - 1)
                        if ylo >= h - 1:
                            ylo, yc = h - 1, np.float32(h - 1)
                        if xlo >= w - 1:
                            xlo, xc = w - 1, np.float32(w - 1)
                        ly, lx = yc - ylo, xc - xlo
                        hy, hx = 1 - ly, 1 - lx
                        taps = (
                            hy * hx * img[:, ylo, xlo],
                            hy * lx * img[:, ylo, xhi],
                            ly * hx * img[:, yhi, xlo],
                            ly * lx * img[:, yhi, xhi],
                        )
                        vals.append(sum(taps) if mode == "avg" else np.maximum.reduce(taps))
                if vals:
                    out[r, :, ph, pw] = sum(vals) / count if mode == "avg" else np.maximum.reduce(vals)
    return out.astype(x.dtype)


@script.operator("roi_align", infer=_roi_infer, reference=_roi_reference, flops_per_element=0)
def roi_align(  # type: ignore[no-untyped-def]
    x,
    rois,
    batch_indices,
    out,
    *,
    mode="avg",
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scale=1.0,
    half_pixel=1,
):
    h = x.shape[2]
    w = x.shape[3]
    off = 0.5 if half_pixel else 0.0
    for r in range(rois.shape[0]):
        x0 = script.cast("float32", rois[r, 0]) * spatial_scale - off
        y0 = script.cast("float32", rois[r, 1]) * spatial_scale - off
        x1 = script.cast("float32", rois[r, 2]) * spatial_scale - off
        y1 = script.cast("float32", rois[r, 3]) * spatial_scale - off
        rw = (x1 - x0) if half_pixel else max(x1 - x0, 1.0)
        rh = (y1 - y0) if half_pixel else max(y1 - y0, 1.0)
        bh = rh / output_height
        bw = rw / output_width
        gh = sampling_ratio if sampling_ratio > 0 else int(script.ceil(rh / output_height))
        gw = sampling_ratio if sampling_ratio > 0 else int(script.ceil(rw / output_width))
        count = max(gh * gw, 1)
        img = batch_indices[r]
        for c in range(x.shape[1]):
            for ph in range(output_height):
                for pw in range(output_width):
                    acc = 0.0
                    first = 1
                    for iy in range(gh):
                        yy = y0 + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            xx = x0 + pw * bw + (ix + 0.5) * bw / gw
                            inside = not (yy < -1.0 or yy > h or xx < -1.0 or xx > w)
                            yc = max(yy, 0.0)
                            xc = max(xx, 0.0)
                            ylo0 = int(yc)
                            xlo0 = int(xc)
                            ytop = ylo0 >= h - 1
                            xtop = xlo0 >= w - 1
                            ylo = script.select(ytop, h - 1, ylo0)
                            xlo = script.select(xtop, w - 1, xlo0)
                            yhi = script.select(ytop, h - 1, ylo0 + 1)
                            xhi = script.select(xtop, w - 1, xlo0 + 1)
                            ly = script.select(ytop, 0.0, yc - ylo0)
                            lx = script.select(xtop, 0.0, xc - xlo0)
                            t1 = (1.0 - ly) * (1.0 - lx) * script.cast("float32", x[img, c, ylo, xlo])
                            t2 = (1.0 - ly) * lx * script.cast("float32", x[img, c, ylo, xhi])
                            t3 = ly * (1.0 - lx) * script.cast("float32", x[img, c, yhi, xlo])
                            t4 = ly * lx * script.cast("float32", x[img, c, yhi, xhi])
                            if mode == "avg":
                                acc = acc + script.select(inside, t1 + t2 + t3 + t4, 0.0)
                            else:
                                v = script.select(inside, max(max(t1, t2), max(t3, t4)), 0.0)
                                acc = script.select(first == 1, v, max(acc, v))
                                first = 0
                    if mode == "avg":
                        out[r, c, ph, pw] = script.cast(out.dtype, acc / count)
                    else:
                        out[r, c, ph, pw] = script.cast(out.dtype, acc)


# ---------------------------------------------------------------------------------------------- max_roi_pool
def _roi_pool_infer(
    x: TensorType, rois: TensorType, *, pooled_shape: tuple[int, int], spatial_scale: float = 1.0
) -> TensorType:
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 5 or len(pooled_shape) != 2:
        raise OpError(
            f"max_roi_pool: expects X [N, C, H, W], rois [R, 5] (batch, x1, y1, x2, y2) and a 2-D pooled_shape, "
            f"got {x}, {rois}, {pooled_shape}"
        )
    return TensorType((rois.shape[0], x.shape[1], int(pooled_shape[0]), int(pooled_shape[1])), x.dtype)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _roi_pool_reference(
    x: np.ndarray, rois: np.ndarray, *, pooled_shape: tuple[int, int], spatial_scale: float = 1.0
) -> np.ndarray:
    _, c, h, w = x.shape
    ph_n, pw_n = (int(d) for d in pooled_shape)
    out = np.zeros((rois.shape[0], c, ph_n, pw_n), x.dtype)
    for r in range(rois.shape[0]):
        b = int(rois[r, 0])
        x0, y0, x1, y1 = (
            int(v) for v in _round_half_away(rois[r, 1:].astype(np.float32) * np.float32(spatial_scale))
        )
        bh = np.float32(max(y1 - y0 + 1, 1)) / np.float32(ph_n)
        bw = np.float32(max(x1 - x0 + 1, 1)) / np.float32(pw_n)
        for ph in range(ph_n):
            hs = min(max(int(np.floor(np.float32(ph) * bh)) + y0, 0), h)
            he = min(max(int(np.ceil(np.float32(ph + 1) * bh)) + y0, 0), h)
            for pw in range(pw_n):
                ws = min(max(int(np.floor(np.float32(pw) * bw)) + x0, 0), w)
                we = min(max(int(np.ceil(np.float32(pw + 1) * bw)) + x0, 0), w)
                if he > hs and we > ws:
                    out[r, :, ph, pw] = x[b, :, hs:he, ws:we].max(axis=(1, 2))
    return out


@script.operator("max_roi_pool", infer=_roi_pool_infer, reference=_roi_pool_reference, flops_per_element=0)
def max_roi_pool(x, rois, out, *, pooled_shape, spatial_scale=1.0):  # type: ignore[no-untyped-def]
    """ONNX MaxRoiPool (Fast R-CNN's ROI pooling): each region (``rois[r] = batch, x1, y1, x2, y2`` in
    input pixels times ``spatial_scale``, rounded half away from zero) split into ``pooled_shape`` bins, each
    the maximum of the pixels it covers (0 for an empty bin)."""
    h = x.shape[2]
    w = x.shape[3]
    ph_n = out.shape[2]
    pw_n = out.shape[3]
    for r in range(rois.shape[0]):
        b = int(rois[r, 0])
        vx0 = script.cast("float32", rois[r, 1]) * spatial_scale
        vy0 = script.cast("float32", rois[r, 2]) * spatial_scale
        vx1 = script.cast("float32", rois[r, 3]) * spatial_scale
        vy1 = script.cast("float32", rois[r, 4]) * spatial_scale
        x0 = int(script.select(vx0 >= 0.0, script.floor(vx0 + 0.5), -script.floor(0.5 - vx0)))
        y0 = int(script.select(vy0 >= 0.0, script.floor(vy0 + 0.5), -script.floor(0.5 - vy0)))
        x1 = int(script.select(vx1 >= 0.0, script.floor(vx1 + 0.5), -script.floor(0.5 - vx1)))
        y1 = int(script.select(vy1 >= 0.0, script.floor(vy1 + 0.5), -script.floor(0.5 - vy1)))
        bh = float(max(y1 - y0 + 1, 1)) / ph_n
        bw = float(max(x1 - x0 + 1, 1)) / pw_n
        for c, ph, pw in script.grid(x.shape[1], ph_n, pw_n):
            hs = min(max(int(script.floor(ph * bh)) + y0, 0), h)
            he = min(max(int(script.ceil((ph + 1) * bh)) + y0, 0), h)
            ws = min(max(int(script.floor(pw * bw)) + x0, 0), w)
            we = min(max(int(script.ceil((pw + 1) * bw)) + x0, 0), w)
            best = 0.0
            found = 0
            for yy in range(hs, he):
                for xx in range(ws, we):
                    v = script.cast("float32", x[b, c, yy, xx])
                    best = script.select(found == 0 or v > best, v, best)
                    found = 1
            out[r, c, ph, pw] = script.cast(out.dtype, best)
