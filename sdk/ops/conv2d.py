"""conv2d: NCHW input, OIHW weights, optional bias; strides, explicit pads, dilations and groups.

``attrs``: ``strides=(sh, sw)``, ``pads=(top, left, bottom, right)``, ``dilations=(dh, dw)``, ``groups``.
Lowered per image and group as a GEMM ``W[OCg, Cg*KH*KW] @ col[Cg*KH*KW, OH*OW]`` (1x1/stride-1/unpadded
convolutions use the input itself as ``col``; others build it in workspace scratch, zero-padded). The scratch
``col`` holds a block of output rows at a time, at most ``col_block_bytes`` (512 KiB), so that it is still in the
cache when the GEMM reads it back; each block is built and multiplied before the next.

8-bit integer convolutions (int8/uint8 input and weights) accumulate in int32 and give an int32 result,
like matmul (:func:`kiln.ops.matmul.acc_dtype`): the operands are widened as they are loaded, and ``col`` stays
8-bit. ``pad_value`` (default 0) is the value the padding reads: a quantized input's zero point, so padding
stands for a real 0.

On targets with an OS, a convolution of at least ``PARALLEL_MIN_BLOCKS`` (8) full blocks runs its blocks
in parallel, each chunk building its own ``col`` (on its stack) and multiplying it; one of fewer blocks runs
each block's im2col as a ``parallel`` loop over the rows of ``col`` and its GEMM splits its tiles over
threads (:mod:`kiln.ops.gemm_kernel`). A depthwise convolution runs its channels in parallel, each with its
own padded plane.

The block size, the K from which im2col panels are packed, and the GEMM's tiles come from the instance's
schedule record (sections ``conv2d`` and ``gemm`` of :class:`kiln.targets.schedule.Schedule`,
:func:`kiln.ops.schedule.schedule_for`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from ..targets.schedule import Conv2dSchedule
from .base import LowerContext, OpDef, int_tuple, positive_int, register, static_dims
from .gemm_kernel import gemm, gemm_dynamic, parallel_for
from .matmul import SMALL_INTS, acc_dtype
from .schedule import schedule_for

#: From this many full blocks of output rows, the blocks (im2col + GEMM) are the parallel loop.
PARALLEL_MIN_BLOCKS = 8
#: A convolution over a run-time image size builds its im2col in chunks of this many output columns.
DYNAMIC_COLUMNS = 64


def rows_per_block(
    kdim: int, oh: int, ow: int, itemsize: int = 4, schedule: Conv2dSchedule | None = None
) -> int:
    """Output rows per im2col block: as many as fit ``col_block_bytes``, but at least ``min_block_columns``
    columns' worth (and at most all ``oh`` rows); the schedule's values, or the defaults (512 KiB, 128)."""
    s = schedule if schedule is not None else Conv2dSchedule()
    fit = s.col_block_bytes // max(1, kdim * ow * itemsize)
    return max(1, min(oh, max(fit, -(-s.min_block_columns // ow))))


def conv_out_size(size: Any, k: int, stride: int, pad_total: int, dilation: int) -> Any:
    return (size + pad_total - dilation * (k - 1) - 1) // stride + 1


def _attrs(attrs: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int], int]:
    s = int_tuple(attrs, "strides", 2, 1, "conv2d", 1)
    p = int_tuple(attrs, "pads", 4, 0, "conv2d", 0)
    d = int_tuple(attrs, "dilations", 2, 1, "conv2d", 1)
    return (s[0], s[1]), (p[0], p[1], p[2], p[3]), (d[0], d[1]), positive_int(attrs, "groups", 1, "conv2d")


class Conv2D(OpDef):
    name = "conv2d"
    kind = "complex"
    dynamic_shapes = True

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x, w = inputs[0], inputs[1]
        if x.ndim != 4 or w.ndim != 4:
            raise self.error(f"expects 4-D input and weights (NCHW, OIHW), got {x} and {w}")
        (sh, sw), (pt, pl, pb, pr), (dh, dw), g = _attrs(attrs)
        n, c, h, wd = x.shape
        oc, cg, kh, kw = static_dims(w, self.name)
        if isinstance(c, int) and c != cg * g:
            raise self.error(f"input has {c} channels but weights expect {cg} x {g} groups")
        if oc % g:
            raise self.error(f"{oc} output channels do not divide into {g} groups")
        if len(inputs) > 2 and inputs[2].shape != (oc,):
            raise self.error(f"bias must have shape ({oc},), got {inputs[2]}")
        if x.dtype != w.dtype and not (x.dtype in SMALL_INTS and w.dtype in SMALL_INTS):
            raise self.error(f"input and weights have different dtypes: {x} and {w}")
        oh = conv_out_size(h, kh, sh, pt + pb, dh)  # an expression of a run-time size (kiln.ir.Sym)
        ow = conv_out_size(wd, kw, sw, pl + pr, dw)
        if isinstance(oh, int) and isinstance(ow, int) and (oh <= 0 or ow <= 0):
            raise self.error(f"kernel {kh}x{kw} does not fit input {h}x{wd} with pads {attrs.get('pads')}")
        return [TensorType((n, oc, oh, ow), acc_dtype(x.dtype, w.dtype))]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x, w = inputs[0], inputs[1]
        (sh, sw), (pt, pl, pb, pr), (dh, dw), g = _attrs(attrs)
        n, c, h, wd = x.shape
        oc, cg, kh, kw = w.shape
        pad = attrs.get("pad_value", 0)
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad)
        oh = conv_out_size(h, kh, sh, pt + pb, dh)
        ow = conv_out_size(wd, kw, sw, pl + pr, dw)
        out = np.zeros((n, oc, oh, ow), dtype=np.float64)
        ocg = oc // g
        for gi in range(g):
            xs = xp[:, gi * cg : (gi + 1) * cg]
            ws = w[gi * ocg : (gi + 1) * ocg].astype(np.float64)
            acc = out[:, gi * ocg : (gi + 1) * ocg]
            for i in range(kh):  # one BLAS product per kernel tap: (n, c, oh, ow) x (o, c) -> (n, o, oh, ow)
                for j in range(kw):
                    patch = xs[
                        :,
                        :,
                        i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                        j * dw : j * dw + sw * (ow - 1) + 1 : sw,
                    ]
                    acc += np.tensordot(patch, ws[:, :, i, j], axes=([1], [1])).transpose(0, 3, 1, 2)
        if len(inputs) > 2:
            out += inputs[2].reshape(1, -1, 1, 1)
        return [out.astype(acc_dtype(str(x.dtype), str(w.dtype)))]

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        _, cg, kh, kw = inputs[1].static_shape
        return 2 * outputs[0].numel * cg * kh * kw

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        out = outs[0]
        (sh, sw), (pt, pl, pb, pr), (dh, dw), g = _attrs(attrs)
        n, c, h, wd = x.shape
        oc, cg, kh, kw = w.shape
        _, _, oh, ow = out.shape
        ocg, kdim, ohw = oc // g, cg * kh * kw, oh * ow
        acc = acc_dtype(x.dtype, w.dtype)  # int32 for 8-bit operands, widened as they are loaded
        if any(b.is_dynamic for b in (x, out)):
            return _lower_dynamic(ctx, x, w, bias, out, attrs)
        if g > 1 and cg == 1 and ocg == 1:
            return self._depthwise(ctx, x, w, bias, out, attrs)
        sched = schedule_for(
            ctx,
            self.name,
            ins,
            {"strides": (sh, sw), "pads": (pt, pl, pb, pr), "dilations": (dh, dw), "groups": g},
        )
        wf = w.with_(shape=(oc, kdim))
        of = out.with_(shape=(n, oc, ohw))
        direct = kh == kw == sh == sw == 1 and pt == pl == pb == pr == 0
        rows = oh if direct else rows_per_block(kdim, oh, ow, schedule=sched.conv2d)
        col = (
            x.with_(shape=(n, c, h * wd))
            if direct
            else T.Buffer(f"{ctx.name}_col", (kdim, rows * ow), x.dtype, scope="workspace")
        )
        threads = parallel_for(ctx.target)
        by_block = threads and not direct and oh // rows >= PARALLEL_MIN_BLOCKS
        # a chunk's own col: a buffer of its own name (the shared col still serves the tail block)
        own_col = T.Buffer(f"{ctx.name}_colp", (kdim, rows * ow), x.dtype, scope="workspace")

        def per_image_group(ni: T.LoopVar, gi: T.LoopVar) -> T.Stmt:
            c0 = gi * cg if g > 1 else T.IntImm(0)
            oc0 = gi * ocg if g > 1 else T.IntImm(0)

            def block(y0: T.Expr, nrows: int, own: bool = False) -> T.Stmt:
                """Output rows ``y0 .. y0 + nrows``: im2col into ``col``, then the GEMM over its columns;
                ``own``: with its own ``col`` (a chunk of the parallel loop over blocks)."""
                cb = own_col if own else col

                def b_load(k: T.Expr, j: T.Expr) -> T.Expr:
                    return T.cast(acc, cb[ni, c0 + k, j] if direct else cb[k, j])

                def store(i: T.Expr, j: T.Expr, acc: T.Expr) -> T.Stmt:
                    ch = oc0 + i
                    p = y0 * ow + j  # the output pixel
                    v = acc + bias[ch] if bias is not None else acc
                    idx = (ni, ch, p // ow, p % ow) if ow > 1 else (ni, ch, p, T.IntImm(0))
                    flat = (ni * oc + ch) * ohw + p
                    return T.Store(of, (ni, ch, p), ctx.apply_epilogue(v, idx, flat))

                mm = gemm(
                    ctx.name,
                    ocg,
                    nrows * ow,
                    kdim,
                    lambda i, k: T.cast(acc, wf[oc0 + i, k]),
                    b_load,
                    store,
                    ctx.lanes,
                    acc,
                    # A block of col is compact and in cache; its column panels are worth packing only when
                    # they are long (conv2d.pack_min_k). The input of a direct 1x1 convolution always is.
                    pack_b=direct or kdim >= sched.conv2d.pack_min_k,
                    schedule=sched.gemm,
                    parallel=threads and not by_block,
                )
                if direct:
                    return mm
                rows_of = (y0, nrows, ow)
                both = T.seq(
                    self._im2col(ctx, x, cb, ni, c0, attrs, (kh, kw), rows_of, not own and threads), mm
                )
                return T.Allocate(cb, both) if own else both

            full, tail = divmod(oh, rows)
            blocks = (
                T.loop(
                    full,
                    lambda yb: block(yb * rows, rows, own=by_block),
                    name=f"{ctx.name}_yb",
                    kind="parallel" if by_block else "serial",
                )
                if full > 1
                else None
            )
            return T.seq(
                blocks if full > 1 else block(T.IntImm(0), rows),
                block(T.IntImm(full * rows), tail) if tail else None,
            )

        body = T.loop(
            n,
            lambda ni: T.loop(g, lambda gi: per_image_group(ni, gi), name=f"{ctx.name}_g"),
            name=f"{ctx.name}_n",
        )
        return body if direct else T.Allocate(col, body)

    @staticmethod
    def _depthwise(
        ctx: LowerContext,
        x: T.Buffer,
        w: T.Buffer,
        bias: T.Buffer | None,
        out: T.Buffer,
        attrs: dict[str, Any],
    ) -> T.Stmt:
        """One filter per channel (groups = channels = output channels): each channel plane is copied into a
        zero-padded plane in scratch, so the taps need no bounds checks, and every output pixel is the sum of
        ``KH x KW`` products, unit-stride vectors along the output row. With a column stride ``SW`` above 1 the
        padded plane is stored as ``SW`` planes of its columns ``p, p + SW, p + 2 SW, ...`` (``p < SW``), so
        tap ``j`` of neighbouring output pixels are neighbouring elements of plane ``(j * DW) % SW``."""
        (sh, sw), (pt, pl, pb, pr), (dh, dw), _ = _attrs(attrs)
        n, c, h, wd = x.shape
        _, _, kh, kw = w.shape
        _, _, oh, ow = out.shape
        hp, wp = h + pt + pb, wd + pl + pr
        wq = -(-wp // sw)  # columns per phase plane
        plane = T.Buffer(f"{ctx.name}_plane", (sw, hp, wq), x.dtype, scope="workspace")
        zero = T.const(attrs.get("pad_value", 0), x.dtype)  # IntImm for integer convolutions
        acc = acc_dtype(x.dtype, w.dtype)
        # padded column q * sw + p is x's column q * sw + p - pl; every phase is inside x for q in [q_lo, q_hi)
        q_lo, q_hi = -(-pl // sw), (wd + pl - sw) // sw + 1
        edges = [pc for pc in range(pl, pl + wd) if not q_lo * sw <= pc < q_hi * sw]

        def channel(ni: T.LoopVar, ch: T.LoopVar) -> T.Stmt:
            def pixel(y: T.LoopVar, z: T.LoopVar) -> T.Stmt:
                taps = [
                    T.cast(acc, plane[T.IntImm((j * dw) % sw), y * sh + i * dh, z + (j * dw) // sw])
                    * T.cast(acc, w[ch, 0, i, j])
                    for i in range(kh)
                    for j in range(kw)
                ]
                v = functools.reduce(operator.add, taps)
                v = v + bias[ch] if bias is not None else v
                flat = ((ni * c + ch) * oh + y) * ow + z
                return T.Store(out, (ni, ch, y, z), ctx.apply_epilogue(v, (ni, ch, y, z), flat))

            def copy_row(r: T.LoopVar) -> T.Stmt:
                inner = T.loop(  # all phases of columns q_lo..q_hi: x read once, in order
                    q_hi - q_lo,
                    lambda q: T.seq(
                        *(
                            T.Store(plane, (T.IntImm(p), r + pt, q), x[ni, ch, r, q * sw + p - pl])
                            for p in range(sw)
                        )
                    ),
                    name=f"{ctx.name}_p1",
                    kind="vectorized",
                    start=q_lo,
                )
                rest = [
                    T.Store(
                        plane,
                        (T.IntImm(pc % sw), r + pt, T.IntImm(pc // sw)),
                        x[ni, ch, r, T.IntImm(pc - pl)],
                    )
                    for pc in edges
                ]
                return T.seq(inner if q_hi > q_lo else None, *rest)

            return T.seq(
                T.loop(
                    sw * hp * wq,
                    lambda i: T.Store(plane.with_(shape=(sw * hp * wq,)), (i,), zero),
                    name=f"{ctx.name}_z",
                    kind="vectorized",
                )
                if pt or pl or pb or pr or sw * wq != wp
                else None,
                T.loop(h, copy_row, name=f"{ctx.name}_p0"),
                T.loop_nest((oh, ow), lambda i: pixel(*i), prefix=f"{ctx.name}_o", innermost="vectorized"),
            )

        if parallel_for(ctx.target):  # channels in parallel, each chunk with its own plane
            return T.loop(
                n,
                lambda ni: T.loop(
                    c, lambda ch: T.Allocate(plane, channel(ni, ch)), name=f"{ctx.name}_c", kind="parallel"
                ),
                name=f"{ctx.name}_n",
            )
        body = T.loop(
            n, lambda ni: T.loop(c, lambda ch: channel(ni, ch), name=f"{ctx.name}_c"), name=f"{ctx.name}_n"
        )
        return T.Allocate(plane, body)

    @staticmethod
    def _im2col(
        ctx: LowerContext,
        x: T.Buffer,
        col: T.Buffer,
        ni: T.Expr,
        c0: T.Expr,
        attrs: dict[str, Any],
        ksize: tuple[int, int],
        rows: tuple[T.Expr, int, int],
        parallel: bool,
    ) -> T.Stmt:
        """``col[(c*KH + i)*KW + j, y*OW + z] = x[c0 + c, (y0 + y)*SH + i*DH - PT, z*SW + j*DW - PL]`` (zero
        outside the input) for the ``nrows`` output rows from ``y0``; ``rows = (y0, nrows, OW)``; ``parallel``:
        the rows of ``col`` split over threads."""
        (sh, sw), (pt, pl, _, _), (dh, dw), _ = _attrs(attrs)
        _, _, h, wd = x.shape
        kh, kw = ksize
        y0, oh, ow = rows
        cg = col.shape[0] // (kh * kw)
        zero = T.const(attrs.get("pad_value", 0), x.dtype)  # IntImm for integer convolutions

        def row(c: T.Expr, i: T.Expr, j: T.Expr) -> T.Stmt:
            k = (c * kh + i) * kw + j

            def pixel(y: T.LoopVar, z: T.LoopVar) -> T.Stmt:
                iy = (y0 + y) * sh + (i * dh - pt)
                ix = z * sw + (j * dw - pl)
                inside = T.logical_and(iy >= 0, iy < h, ix >= 0, ix < wd)
                val = x[ni, c0 + c, T.minimum(T.maximum(iy, 0), h - 1), T.minimum(T.maximum(ix, 0), wd - 1)]
                return T.Store(col, (k, y * ow + z), T.select(inside, val, zero))

            return T.loop(
                oh,
                lambda y: T.loop(ow, lambda z: pixel(y, z), name=f"{ctx.name}_ox", kind="vectorized"),
                name=f"{ctx.name}_oy",
            )

        if parallel:  # one loop over the rows of col, split over threads
            taps = kh * kw
            return T.loop(
                cg * taps,
                lambda k: row(k // taps, k % taps // kw, k % kw),
                name=f"{ctx.name}_k",
                kind="parallel",
            )
        return T.loop(
            cg,
            lambda c: T.loop(
                kh, lambda i: T.loop(kw, lambda j: row(c, i, j), name=f"{ctx.name}_kx"), name=f"{ctx.name}_ky"
            ),
            name=f"{ctx.name}_c",
        )


register(Conv2D())


def _lower_dynamic(
    ctx: LowerContext, x: T.Buffer, w: T.Buffer, bias: T.Buffer | None, out: T.Buffer, attrs: dict[str, Any]
) -> T.Stmt:
    """A convolution over an image whose size is known only at run time: per output row and group, the GEMM
    ``W[OCg, Cg*KH*KW] @ col[Cg*KH*KW, OW]`` with run-time tile counts (:func:`gemm_dynamic`), ``col`` read
    from the input on the fly (no im2col buffer of a run-time size; padding reads ``pad_value``). Output rows
    run in parallel on targets with threads."""
    (sh, sw), (pt, pl, _, _), (dh, dw), g = _attrs(attrs)
    _, _, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    ocg, taps = oc // g, kh * kw
    acc = acc_dtype(x.dtype, w.dtype)
    pad = T.const(attrs.get("pad_value", 0), x.dtype)
    n, _, oh, ow = out.shape
    wf = w.with_(shape=(oc, cg * taps), strides=())
    sched = ctx.target.schedule_for() if ctx.target is not None else None

    kdim = cg * taps
    chunk = DYNAMIC_COLUMNS
    col = T.Buffer(f"{ctx.name}_col", (kdim, chunk), x.dtype, scope="workspace")  # a row's im2col, in chunks

    def row(ni: T.Expr, gi: T.Expr, y: T.Expr) -> T.Stmt:
        c0 = gi * cg if g > 1 else T.IntImm(0)
        o0 = gi * ocg if g > 1 else T.IntImm(0)

        def chunk_at(q: T.Expr) -> T.Stmt:
            x0 = q * chunk
            cnt = T.minimum(ow - x0, chunk)

            def fill(kk: T.LoopVar) -> T.Stmt:
                ci, r = kk // taps, kk % taps
                iy = y * sh + (r // kw) * dh - pt
                row_in = T.logical_and(iy >= 0, iy < h)
                yc = T.minimum(T.maximum(iy, 0), h - 1)

                def pixel(j: T.LoopVar) -> T.Stmt:
                    ix = (x0 + j) * sw + (r % kw) * dw - pl
                    inside = T.logical_and(row_in, ix >= 0, ix < wd)
                    v = x[ni, c0 + ci, yc, T.minimum(T.maximum(ix, 0), wd - 1)]
                    return T.Store(col, (kk, j), T.select(inside, v, pad))

                return T.loop(cnt, pixel, f"{ctx.name}_cj", "vectorized")

            def store(i: T.Expr, j: T.Expr, v: T.Expr) -> T.Stmt:
                idx = (ni, o0 + i, y, x0 + j)
                total = v + T.cast(acc, bias[o0 + i]) if bias is not None else v
                return T.Store(out, idx, ctx.apply_epilogue(total, idx, None))

            product = gemm_dynamic(
                ctx.name,
                ocg,
                cnt,
                kdim,
                lambda i, kk: T.cast(acc, wf[o0 + i, kk]),
                lambda kk, j: T.cast(acc, col[kk, j]),
                store,
                ctx.lanes,
                acc,
                schedule=sched.gemm if sched is not None else None,
            )
            return T.seq(T.loop(kdim, fill, f"{ctx.name}_ck"), product)

        return T.loop((ow + (chunk - 1)) // chunk, chunk_at, f"{ctx.name}_q")

    rows = n * g * oh

    def flat(f: T.LoopVar) -> T.Stmt:
        return row(f // (g * oh), (f // oh) % g if g > 1 else T.IntImm(0), f % oh)

    return T.Allocate(
        col, T.loop(rows, flat, f"{ctx.name}_r", "parallel" if parallel_for(ctx.target) else "serial")
    )
