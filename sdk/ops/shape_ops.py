"""Data-movement operators: reshape (a view), transpose, concat, slice, split, gather, pad, expand.

Shapes, axes, permutations, offsets and pads are static attributes (the ONNX frontend turns constant inputs
into attributes). Each lowering is a loop nest over the output that computes the source index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from ..ir import tensor as T
from ..ir.types import Dim, Sym, TensorType, dtype_of, is_float
from .base import (
    LowerContext,
    OpDef,
    OpError,
    broadcast_index,
    broadcast_shapes,
    elementwise_copy,
    flat_index,
    normalize_axis,
    register,
)


def _store(ctx: LowerContext, out: T.Buffer, idx: tuple[T.Expr, ...], value: T.Expr) -> T.Stmt:
    return T.Store(out, idx, ctx.apply_epilogue(value, idx, None))


class Reshape(OpDef):
    """``x.reshape(shape)``; ``shape`` is fully resolved (no -1 or 0) by the frontend and may hold one symbolic
    dimension (the one size the others leave, like NumPy's -1). No data moves."""

    name = "reshape"
    kind = "view"
    flops_per_element = 0  # moves data only

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        shape = tuple(attrs["shape"])
        x = inputs[0]
        if x.is_static and all(isinstance(d, int) for d in shape):
            n = int(np.prod(shape, dtype=np.int64))
            if n != x.numel:
                raise self.error(f"cannot reshape {x} ({x.numel} elements) to {shape} ({n} elements)")
        return [TensorType(shape, x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        shape = tuple(-1 if isinstance(d, Sym) else int(d) for d in attrs["shape"])
        if shape.count(-1) > 1:
            raise self.error(f"shape {attrs['shape']} has several symbolic dimensions; bind them first")
        return [inputs[0].reshape(shape)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        return elementwise_copy(ctx, ins[0], outs[0])


class Transpose(OpDef):
    """``np.transpose(x, perm)``; without ``perm`` the axes are reversed."""

    name = "transpose"
    kind = "injective"
    flops_per_element = 0  # moves data only
    dynamic_shapes = True

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        given = attrs.get("perm")  # absent: reverse the axes; given (even empty): a permutation of them
        perm = list(reversed(range(x.ndim))) if given is None else list(given)
        if sorted(perm) != list(range(x.ndim)):
            raise self.error(f"perm {perm} is not a permutation of the {x.ndim} axes of {x}")
        return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        perm = attrs.get("perm") or list(reversed(range(inputs[0].ndim)))
        return [np.transpose(inputs[0], perm).copy()]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        perm = list(attrs.get("perm") or reversed(range(x.ndim)))
        inv = [perm.index(d) for d in range(x.ndim)]

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            return _store(ctx, out, idx, x[tuple(idx[inv[d]] for d in range(x.ndim))])

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i", innermost="vectorized")


class Concat(OpDef):
    """``np.concatenate(inputs, axis)``: all inputs agree on every other dimension."""

    name = "concat"
    kind = "injective"
    flops_per_element = 0  # moves data only

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        first = inputs[0]
        axis = normalize_axis(int(attrs["axis"]), first.ndim, self.name)
        total: Dim = 0
        for t in inputs:
            if t.ndim != first.ndim or any(t.shape[d] != first.shape[d] for d in range(t.ndim) if d != axis):
                raise self.error(f"inputs {[str(i) for i in inputs]} differ outside axis {axis}")
            d = t.shape[axis]
            total = total + d if isinstance(total, int) and isinstance(d, int) else d
        shape = list(first.shape)
        shape[axis] = total
        return [TensorType(tuple(shape), first.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        return [np.concatenate(list(inputs), axis=int(attrs["axis"]))]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        out = outs[0]
        axis = normalize_axis(int(attrs["axis"]), out.ndim, self.name)
        parts, off = [], 0
        for k, x in enumerate(ins):

            def body(idx: tuple[T.LoopVar, ...], x: T.Buffer = x, off: int = off) -> T.Stmt:
                dst = tuple(i + off if d == axis else i for d, i in enumerate(idx))
                return _store(ctx, out, dst, x[idx])

            parts.append(T.loop_nest(x.shape, body, prefix=f"{ctx.name}_p{k}_", innermost="vectorized"))
            off += x.shape[axis]
        return T.seq(*parts)


def _slice_params(shape: Sequence[Dim], attrs: dict[str, Any]) -> list[tuple[int, int, Dim]]:
    """(start, step, count) per dimension, with ONNX clamping rules (negative steps included). Dimensions
    that are not sliced may be symbolic."""
    nd = len(shape)
    if not nd:
        raise OpError("slice: cannot slice a scalar")
    starts, ends = list(attrs["starts"]), list(attrs["ends"])
    axes = list(attrs.get("axes") or range(len(starts)))
    steps = list(attrs.get("steps") or [1] * len(starts))
    out: list[tuple[int, int, Dim]] = [(0, 1, d) for d in shape]
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = normalize_axis(int(a), nd, "slice")
        dim = shape[a]
        if not (isinstance(dim, int) and isinstance(s, int) and isinstance(e, int)):
            out[a] = _symbolic_slice(dim, s, e, st, shape)
            continue
        if st == 0:
            raise OpError("slice: steps must not be 0")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            count = max(0, (e - s + st - 1) // st)
        else:
            s, e = min(max(s, -1), dim - 1), min(max(e, -1), dim - 1)
            count = max(0, (s - e + (-st) - 1) // (-st))
        out[a] = (s, st, count)
    return out


def _symbolic_slice(dim: Dim, s: Dim, e: Dim, st: int, shape: Sequence[Dim]) -> tuple[int, int, Dim]:
    """A slice whose dimension or end is a run-time size: step 1 from a fixed start, up to an end that is at
    most the dimension (``x[:, :seq]`` of a table of ``maxlen >= seq`` rows; ``x[1:]``; ``x[:-1]``)."""
    big = 2**31
    if st != 1 or not isinstance(s, int):
        raise OpError(f"slice: slicing {tuple(shape)} from {s} to {e} by {st} needs a fixed start and step 1")
    s = dim + s if s < 0 else s
    if isinstance(e, int):
        e = dim if e >= big else dim + e if e < 0 else e
        if isinstance(e, int) and isinstance(dim, Sym):
            raise OpError(f"slice: cannot end a slice of run-time dimension {dim} at the fixed index {e}")
    return (int(s) if isinstance(s, int) else 0, 1, e - s)  # type: ignore[return-value]


def _static_slice_params(shape: Sequence[int], attrs: dict[str, Any]) -> list[tuple[int, int, int]]:
    return cast(list[tuple[int, int, int]], _slice_params(shape, attrs))


class Slice(OpDef):
    """ONNX Slice with static ``starts``, ``ends``, optional ``axes`` and ``steps``."""

    name = "slice"
    kind = "injective"
    flops_per_element = 0  # moves data only
    dynamic_shapes = True

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        params = _slice_params(x.shape, attrs)
        return [TensorType(tuple(c for _, _, c in params), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        params = _static_slice_params(x.shape, attrs)
        sl = tuple(
            slice(s, s + st * c if s + st * c >= 0 else None, st) if c else slice(0, 0) for s, st, c in params
        )
        return [x[sl].copy()]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        params = _slice_params(x.shape, attrs)

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            src = tuple(i * st + s for i, (s, st, _) in zip(idx, params, strict=True))
            return _store(ctx, out, idx, x[src])

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i", innermost="vectorized")


class Split(OpDef):
    """Split ``x`` along ``axis`` into pieces of ``sizes``."""

    name = "split"
    kind = "injective"
    flops_per_element = 0  # moves data only
    dynamic_shapes = True

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        axis = normalize_axis(int(attrs["axis"]), x.ndim, self.name)
        sizes = list(attrs["sizes"])
        if isinstance(x.shape[axis], int) and sum(sizes) != x.shape[axis]:
            raise self.error(f"sizes {sizes} do not add up to dimension {x.shape[axis]} of {x}")
        return [
            TensorType(tuple(s if d == axis else x.shape[d] for d in range(x.ndim)), x.dtype) for s in sizes
        ]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        cuts = np.cumsum(list(attrs["sizes"]))[:-1]
        return [p.copy() for p in np.split(inputs[0], cuts, axis=int(attrs["axis"]))]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x = ins[0]
        axis = normalize_axis(int(attrs["axis"]), x.ndim, self.name)
        parts, off = [], 0
        for k, out in enumerate(outs):

            def body(idx: tuple[T.LoopVar, ...], out: T.Buffer = out, off: int = off, k: int = k) -> T.Stmt:
                src = tuple(i + off if d == axis else i for d, i in enumerate(idx))
                # the epilogue contract covers the first output only
                return _store(ctx, out, idx, x[src]) if k == 0 else T.Store(out, idx, x[src])

            parts.append(T.loop_nest(out.shape, body, prefix=f"{ctx.name}_p{k}_", innermost="vectorized"))
            off += out.shape[axis]
        return T.seq(*parts)


class Gather(OpDef):
    """``np.take(x, indices, axis)`` with negative indices wrapped (indices may be a runtime tensor)."""

    name = "gather"
    kind = "injective"
    flops_per_element = 0  # moves data only
    dynamic_shapes = True

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x, ind = inputs
        if not x.ndim:
            raise self.error(f"cannot gather from a scalar ({x})")
        if ind.dtype not in ("int64", "int32", "int16", "int8", "uint8"):
            raise self.error(f"indices must be integers, got {ind}")
        axis = normalize_axis(int(attrs.get("axis", 0)), x.ndim, self.name)
        return [TensorType((*x.shape[:axis], *ind.shape, *x.shape[axis + 1 :]), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x, ind = inputs
        self.infer([TensorType(x.shape, dtype_of(x)), TensorType(ind.shape, dtype_of(ind))], attrs)
        axis = int(attrs.get("axis", 0))
        dim = x.shape[axis]
        return [np.take(x, np.where(ind < 0, ind + dim, ind).astype(np.int64), axis=axis)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, ind = ins
        out = outs[0]
        axis = normalize_axis(int(attrs.get("axis", 0)), x.ndim, self.name)
        dim = x.shape[axis]
        k = ind.ndim

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            raw = T.cast("int64", ind[idx[axis : axis + k]] if k else ind[()])
            i = T.select(raw < 0, raw + dim, raw)
            i = T.minimum(T.maximum(i, 0), dim - 1)  # out-of-range indices are clamped, never read outside
            src = (*idx[:axis], i, *idx[axis + k :])
            return _store(ctx, out, idx, x[src])

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


class Pad(OpDef):
    """ONNX Pad: ``pads`` = begins then ends per axis (negative ones crop); ``mode`` ``constant`` (fill with
    ``value``), ``reflect`` (mirror without repeating the edge), ``edge`` (repeat the edge) or ``wrap``
    (continue periodically)."""

    name = "pad"
    kind = "injective"
    flops_per_element = 0  # moves data only

    modes = ("constant", "reflect", "edge", "wrap")

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        if attrs.get("mode", "constant") not in self.modes:
            raise self.error(f"mode {attrs['mode']!r} is not supported; modes: {', '.join(self.modes)}")
        p = list(attrs["pads"])
        nd = x.ndim
        if len(p) != 2 * nd:
            raise self.error(f"pads {p} must have 2 x {nd} entries for {x}")
        if attrs.get("mode") == "reflect":
            for d, size in enumerate(x.shape):
                if isinstance(size, int) and max(p[d], p[d + nd]) >= size:
                    raise self.error(f"reflect pads {p} must be smaller than the dimensions of {x}")
        shape = tuple(d + p[i] + p[i + nd] if isinstance(d, int) else d for i, d in enumerate(x.shape))
        if any(isinstance(d, int) and d < 0 for d in shape):
            raise self.error(f"pads {p} remove more than the dimensions of {x}")
        return [TensorType(shape, x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        p = list(attrs["pads"])
        nd = x.ndim
        mode = attrs.get("mode", "constant")
        # negative pads crop
        crop = tuple(slice(max(0, -p[i]), x.shape[i] - max(0, -p[i + nd])) for i in range(nd))
        x = x[crop]
        width = [(max(0, p[i]), max(0, p[i + nd])) for i in range(nd)]
        if mode == "constant":
            return [np.pad(x, width, mode="constant", constant_values=attrs.get("value", 0))]
        return [np.pad(x, width, mode=mode)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        p = list(attrs["pads"])
        nd = x.ndim
        mode = attrs.get("mode", "constant")

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            src, inside = [], []
            for d in range(nd):
                i = idx[d] - p[d]
                n = x.shape[d]
                if mode == "reflect":
                    i = T.select(i < 0, -i, i)
                    i = T.select(i >= n, 2 * (n - 1) - i, i)
                elif mode == "wrap":
                    i = (i % n + n) % n  # % truncates toward zero in tensor code
                elif mode == "constant":
                    inside += [i >= 0, i < n]
                i = T.minimum(T.maximum(i, 0), n - 1)
                src.append(i)
            val: T.Expr = x[tuple(src)]
            if mode == "constant" and inside:
                fill = float(attrs.get("value", 0))
                val = T.select(
                    T.logical_and(*inside), val, T.const(fill if is_float(x.dtype) else int(fill), x.dtype)
                )
            return _store(ctx, out, idx, val)

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i", innermost="vectorized")


class Expand(OpDef):
    """``np.broadcast_to(x, broadcast(x.shape, shape))`` (ONNX Expand)."""

    name = "expand"
    kind = "injective"
    flops_per_element = 0  # moves data only

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        if any(int(d) < 0 for d in attrs["shape"]):
            raise self.error(f"shape {list(attrs['shape'])} has a negative dimension")
        return [TensorType(broadcast_shapes(inputs[0].shape, tuple(attrs["shape"])), inputs[0].dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        shape = broadcast_shapes(inputs[0].shape, tuple(attrs["shape"]))
        return [np.broadcast_to(inputs[0], shape).copy()]  # type: ignore[arg-type]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            return T.Store(
                out,
                idx,
                ctx.apply_epilogue(x[broadcast_index(x, idx, out.ndim)], idx, flat_index(idx, out.shape)),
            )

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i", innermost="vectorized")


for _op in (Reshape(), Transpose(), Concat(), Slice(), Split(), Gather(), Pad(), Expand()):
    register(_op)
