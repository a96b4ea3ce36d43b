"""Operators that put values back into an image: col2im (ONNX Col2Im) and max_unpool (ONNX MaxUnpool).

col2im sums the columns of sliding blocks back into an N-d image: input ``[N, C * prod(block_shape), L]`` (one
column per block position, L = the number of positions), output ``[N, C, *image_shape]``; ``pads`` (begin
values, then end values), ``strides`` and ``dilations`` as for a convolution. Lowered as a gather: each output
pixel adds the column entries of the blocks that cover it (no two iterations write one element).

max_unpool puts each input value at the position its index names (a flat index into the unpooled tensor of
the inferred shape ``(in - 1) * stride - pads + kernel`` per spatial axis, as MaxPool's Indices output gives
it), zeros elsewhere; an ``output_shape`` larger than the inferred one pads at the end of each axis (as ONNX's
reference does). Indices outside the tensor are ignored.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, register, static_dims, unflatten


def _spatial(attrs: dict[str, Any], key: str, nd: int, default: int) -> tuple[int, ...]:
    v = attrs.get(key)
    return tuple(int(a) for a in v) if v is not None else (default,) * nd


def _nest(extents: Sequence[int], body: Callable[[tuple[T.Expr, ...]], T.Stmt], prefix: str) -> T.Stmt:
    if not extents:
        return body(())
    return T.loop_nest(list(extents), body, prefix=prefix)


# ---------------------------------------------------------------------------------------------------- col2im
class Col2Im(OpDef):
    name = "col2im"
    kind = "opaque"

    def _geometry(self, x: TensorType, attrs: dict[str, Any]) -> tuple[tuple[int, ...], ...]:
        image = tuple(int(d) for d in attrs["image_shape"])
        block = tuple(int(d) for d in attrs["block_shape"])
        nd = len(image)
        dil = _spatial(attrs, "dilations", nd, 1)
        strides = _spatial(attrs, "strides", nd, 1)
        pads = _spatial(attrs, "pads", 2 * nd, 0)
        if len(block) != nd or len(dil) != nd or len(strides) != nd or len(pads) != 2 * nd:
            raise self.error(
                f"image_shape {image}, block_shape {block}, dilations {dil}, strides {strides} and pads {pads} "
                "disagree on the number of spatial axes"
            )
        if min(*block, *dil, *strides, 1) < 1 or min(*image, 1) < 1:
            raise self.error(
                f"image_shape {image}, block_shape {block}, dilations {dil} and strides {strides} must be positive"
            )
        counts = tuple(
            (image[d] + pads[d] + pads[nd + d] - dil[d] * (block[d] - 1) - 1) // strides[d] + 1
            for d in range(nd)
        )
        n, cols, length = static_dims(x, self.name) if x.ndim == 3 else (0, 0, 0)
        if x.ndim != 3 or cols % int(np.prod(block)) or length != int(np.prod(counts)) or min(counts) < 1:
            raise self.error(
                f"expects input [N, C * {int(np.prod(block))}, {int(np.prod(counts))}] for image {image}, "
                f"blocks {block} (with these strides, pads and dilations), got {x}"
            )
        return image, block, dil, strides, pads, counts

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        image, block = self._geometry(x, attrs)[:2]
        return [TensorType((x.shape[0], int(x.shape[1]) // int(np.prod(block)), *image), x.dtype)]  # type: ignore[arg-type]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        image, block, dil, strides, pads, counts = self._geometry(TensorType(x.shape, "float32"), attrs)
        nd = len(image)
        n, c = x.shape[0], x.shape[1] // int(np.prod(block))
        cols = x.reshape(n, c, *block, *counts)
        out = np.zeros((n, c, *(image[d] + pads[d] + pads[nd + d] for d in range(nd))), x.dtype)
        for b in itertools.product(*(range(k) for k in block)):
            where = tuple(
                slice(b[d] * dil[d], b[d] * dil[d] + strides[d] * (counts[d] - 1) + 1, strides[d])
                for d in range(nd)
            )
            tap: tuple[Any, ...] = (slice(None), slice(None), *b)
            out[(slice(None), slice(None), *where)] += cols[tap]
        crop = tuple(slice(pads[d], pads[d] + image[d]) for d in range(nd))
        return [np.ascontiguousarray(out[(slice(None), slice(None), *crop)])]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        image, block, dil, strides, pads, counts = self._geometry(TensorType(x.shape, x.dtype), attrs)
        nd = len(image)
        nblock = int(np.prod(block))
        acc = T.Buffer(f"{ctx.name}_acc", (1,), x.dtype, scope="local")
        z = (T.IntImm(0),)

        def pixel(idx: tuple[T.Expr, ...]) -> T.Stmt:
            n, c, pix = idx[0], idx[1], idx[2:]

            def tap(b: tuple[T.Expr, ...]) -> T.Stmt:
                pos = [pix[d] + (pads[d] - b[d] * dil[d]) for d in range(nd)]
                ok = [p >= 0 for p in pos]
                ok += [(p % strides[d]).eq(0) for d, p in enumerate(pos) if strides[d] != 1]
                ok += [p // strides[d] < counts[d] for d, p in enumerate(pos)]
                col = c * nblock
                col_stride = 1
                length: T.Expr = T.IntImm(0)
                length_stride = 1
                for d in reversed(range(nd)):
                    col = col + b[d] * col_stride if col_stride != 1 else col + b[d]
                    length = length + (pos[d] // strides[d]) * length_stride
                    col_stride *= block[d]
                    length_stride *= counts[d]
                return T.IfThenElse(T.logical_and(*ok), T.Store(acc, z, acc[0] + x[n, col, length]))

            return T.seq(
                T.Store(acc, z, T.const(0.0, x.dtype)),
                _nest(block, tap, f"{ctx.name}_b"),
                T.Store(out, idx, ctx.apply_epilogue(acc[0], idx)),
            )

        return T.Allocate(acc, _nest(out.shape, pixel, f"{ctx.name}_o"))


# ------------------------------------------------------------------------------------------------ max_unpool
class MaxUnpool(OpDef):
    name = "max_unpool"
    kind = "opaque"
    flops_per_element = 0

    def _shapes(self, x: TensorType, attrs: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        xs = static_dims(x, self.name)
        nd = len(xs) - 2
        kernel = tuple(int(k) for k in attrs["kernel_shape"])
        strides = _spatial(attrs, "strides", nd, 1)
        pads = _spatial(attrs, "pads", 2 * nd, 0)
        if (
            nd < 1
            or len(kernel) != nd
            or len(strides) != nd
            or len(pads) != 2 * nd
            or min(*kernel, *strides) < 1
        ):
            raise self.error(f"kernel_shape {kernel}, strides {strides} and pads {pads} do not fit input {x}")
        inferred = (
            *xs[:2],
            *((xs[2 + d] - 1) * strides[d] - pads[d] - pads[nd + d] + kernel[d] for d in range(nd)),
        )
        given = attrs.get("output_shape")
        shape = tuple(int(d) for d in given) if given is not None else inferred
        if len(shape) != len(xs) or any(s < i for s, i in zip(shape, inferred, strict=True)):
            raise self.error(f"output_shape {shape} is smaller than the unpooled shape {inferred}")
        return inferred, shape

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x, idx = inputs[0], inputs[1]
        if idx.shape != x.shape or idx.dtype != "int64":
            raise self.error(f"expects int64 indices of the input's shape {x.shape}, got {idx}")
        return [TensorType(self._shapes(x, attrs)[1], x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x, idx = inputs[0], inputs[1].reshape(-1)
        inferred, shape = self._shapes(TensorType(x.shape, "float32"), attrs)
        flat = np.zeros(int(np.prod(inferred)), x.dtype)
        ok = (idx >= 0) & (idx < flat.size)
        flat[idx[ok]] = x.reshape(-1)[ok]
        out = np.zeros(shape, x.dtype)
        out[tuple(slice(0, d) for d in inferred)] = flat.reshape(inferred)
        return [out]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, ind, out = ins[0], ins[1], outs[0]
        inferred, _ = self._shapes(TensorType(x.shape, x.dtype), attrs)
        total = int(np.prod(inferred))
        xf = x.with_(shape=(x.numel,), strides=())
        indf = ind.with_(shape=(ind.numel,), strides=())

        def zero(i: tuple[T.Expr, ...]) -> T.Stmt:
            return T.Store(out, i, ctx.apply_epilogue(T.const(0.0, out.dtype), i))

        def put(i: T.LoopVar) -> T.Stmt:
            at = unflatten(indf[i], inferred)
            inside = T.logical_and(indf[i] >= 0, indf[i] < total)
            return T.IfThenElse(inside, T.Store(out, at, ctx.apply_epilogue(xf[i], at)))

        return T.seq(_nest(out.shape, zero, f"{ctx.name}_z"), T.loop(x.numel, put, name=f"{ctx.name}_i"))


register(Col2Im())
register(MaxUnpool())
