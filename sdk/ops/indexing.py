"""Indexed reads and writes: gather_elements, gather_nd, scatter_elements, scatter_nd, one_hot,
reverse_sequence.

Index tensors may be run-time values (int32 or int64). Negative indices count from the end, as in ONNX; an
index still out of range after that is clamped to the valid range in tensor code, so generated code never
reads or writes outside a buffer (ONNX leaves such inputs undefined; the NumPy references raise).

The scatters start from a copy of ``data`` and then update elements in index order (later updates of one
element win, or combine with ``reduction`` = add, mul, max, min). They read back what they wrote, so when an
epilogue is fused into them they work in workspace scratch and store through the epilogue at the end
(:func:`staged`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, flat_index, normalize_axis, register

Index = tuple[T.Expr, ...]


def wrap_index(raw: T.Expr, dim: int) -> T.Expr:
    """An index expression (any integer dtype) as int64, negative ones counted from the end, clamped to
    ``[0, dim)``."""
    i = T.cast("int64", raw)
    i = T.select(i < 0, i + dim, i)
    return T.minimum(T.maximum(i, 0), max(dim - 1, 0))


def np_wrap(ind: np.ndarray, dim: int) -> np.ndarray:
    ind = np.asarray(ind).astype(np.int64)
    return np.where(ind < 0, ind + dim, ind)


def staged(ctx: LowerContext, out: T.Buffer, build: Callable[[T.Buffer], T.Stmt]) -> T.Stmt:
    """``build(buf)`` computes the result into ``buf``, reading back its own stores. Without an epilogue
    ``buf`` is the output itself; with one it is workspace scratch, copied to the output through the
    epilogue afterwards (every value stored into the output passes the epilogue exactly once)."""
    if ctx.epilogue is None:
        return build(out)
    tmp = T.Buffer(f"{ctx.name}_stage", out.shape, out.dtype, scope="workspace")
    flat_tmp = tmp.with_(shape=(tmp.numel,), strides=())

    def copy(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
        flat = flat_index(idx, out.shape)
        return T.Store(out, idx, ctx.apply_epilogue(flat_tmp[flat], idx, flat))

    return T.Allocate(tmp, T.seq(build(tmp), T.loop_nest(out.shape, copy, prefix=f"{ctx.name}_o")))


def _copy(src: T.Buffer, dst: T.Buffer, name: str) -> T.Stmt:
    fs, fd = src.with_(shape=(src.numel,), strides=()), dst.with_(shape=(dst.numel,), strides=())
    return T.loop(dst.numel, lambda i: T.Store(fd, (i,), fs[i]), name=name, kind="vectorized")


_REDUCTIONS = ("none", "add", "mul", "max", "min")


def _combine(reduction: str, old: T.Expr, new: T.Expr) -> T.Expr:
    if reduction == "add":
        return old + new
    if reduction == "mul":
        return old * new
    if reduction == "max":
        return T.maximum(old, new)
    if reduction == "min":
        return T.minimum(old, new)
    return new


def _np_combine(reduction: str, out: np.ndarray, idx: Any, upd: Any) -> None:
    if reduction == "add":
        out[idx] += upd
    elif reduction == "mul":
        out[idx] *= upd
    elif reduction == "max":
        out[idx] = np.maximum(out[idx], upd)
    elif reduction == "min":
        out[idx] = np.minimum(out[idx], upd)
    else:
        out[idx] = upd


def _reduction(op: OpDef, attrs: dict[str, Any]) -> str:
    r = str(attrs.get("reduction", "none"))
    if r not in _REDUCTIONS:
        raise op.error(f"reduction {r!r} is not one of {', '.join(_REDUCTIONS)}")
    return r


class GatherElements(OpDef):
    """``out[i] = data[i with axis replaced by indices[i]]`` (ONNX GatherElements; ``out.shape ==
    indices.shape``)."""

    name = "gather_elements"
    kind = "injective"
    flops_per_element = 0

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        data, ind = inputs
        normalize_axis(int(attrs.get("axis", 0)), data.ndim, self.name)
        if ind.ndim != data.ndim:
            raise self.error(f"indices {ind} must have the rank of data {data}")
        return [TensorType(ind.shape, data.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        data, ind = inputs
        axis = normalize_axis(int(attrs.get("axis", 0)), data.ndim, self.name)
        return [np.take_along_axis(data, np_wrap(ind, data.shape[axis]), axis=axis)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        data, ind = ins
        out = outs[0]
        axis = normalize_axis(int(attrs.get("axis", 0)), data.ndim, self.name)

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            src = tuple(
                wrap_index(ind[idx], data.shape[axis]) if d == axis else T.minimum(idx[d], data.shape[d] - 1)
                for d in range(data.ndim)
            )
            return T.Store(out, idx, ctx.apply_epilogue(data[src], idx))

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


def _gather_nd_shape(data: TensorType, ind: TensorType, b: int, op: OpDef) -> tuple[Any, ...]:
    if ind.ndim < 1 or not isinstance(ind.shape[-1], int):
        raise op.error(f"indices {ind} need a static last dimension")
    r = int(ind.shape[-1])
    if b < 0 or b >= ind.ndim or data.shape[:b] != ind.shape[:b]:
        raise op.error(f"batch_dims {b} must count leading dimensions data {data} and indices {ind} share")
    if b + r > data.ndim:
        raise op.error(f"batch_dims {b} + index length {r} exceed the rank of data {data}")
    return (*ind.shape[:-1], *data.shape[b + r :])


class GatherND(OpDef):
    """ONNX GatherND: the last dimension of ``indices`` indexes the leading dimensions of ``data`` (after
    ``batch_dims`` shared leading dimensions); ``out.shape = indices.shape[:-1] + data.shape[b + r:]``."""

    name = "gather_nd"
    kind = "injective"
    flops_per_element = 0

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        data, ind = inputs
        return [TensorType(_gather_nd_shape(data, ind, int(attrs.get("batch_dims", 0)), self), data.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        data, ind = inputs
        b = int(attrs.get("batch_dims", 0))
        r = ind.shape[-1]
        out = np.empty(_gather_nd_shape_np(data, ind, b), dtype=data.dtype)
        for pos in np.ndindex(*ind.shape[:-1]):
            key = tuple(int(np_wrap(ind[pos][j], data.shape[b + j])) for j in range(r))
            out[pos] = data[(*pos[:b], *key)]
        return [out]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        data, ind = ins
        out = outs[0]
        b = int(attrs.get("batch_dims", 0))
        r = ind.shape[-1]
        lead = ind.ndim - 1

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            pos = idx[:lead]
            key = tuple(wrap_index(ind[(*pos, T.IntImm(j))], data.shape[b + j]) for j in range(r))
            src = (*pos[:b], *key, *idx[lead:])
            return T.Store(out, idx, ctx.apply_epilogue(data[src], idx))

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


def _gather_nd_shape_np(data: np.ndarray, ind: np.ndarray, b: int) -> tuple[int, ...]:
    return (*ind.shape[:-1], *data.shape[b + ind.shape[-1] :])


class ScatterElements(OpDef):
    """ONNX ScatterElements: ``out = data``; then for every index ``i`` of ``indices``:
    ``out[i with axis replaced by indices[i]] = updates[i]`` (or combined with ``reduction``)."""

    name = "scatter_elements"
    kind = "opaque"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        data, ind, upd = inputs
        normalize_axis(int(attrs.get("axis", 0)), data.ndim, self.name)
        _reduction(self, attrs)
        if ind.shape != upd.shape or ind.ndim != data.ndim:
            raise self.error(f"indices {ind} and updates {upd} must have one shape and the rank of {data}")
        return [data]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        data, ind, upd = inputs
        axis = normalize_axis(int(attrs.get("axis", 0)), data.ndim, self.name)
        red = _reduction(self, attrs)
        out = data.copy()
        wrapped = np_wrap(ind, data.shape[axis])
        for pos in np.ndindex(*ind.shape):
            dst = tuple(int(wrapped[pos]) if d == axis else pos[d] for d in range(data.ndim))
            _np_combine(red, out, dst, upd[pos])
        return [out]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        data, ind, upd = ins
        axis = normalize_axis(int(attrs.get("axis", 0)), data.ndim, self.name)
        red = _reduction(self, attrs)

        def build(buf: T.Buffer) -> T.Stmt:
            def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
                dst = tuple(
                    wrap_index(ind[idx], data.shape[axis])
                    if d == axis
                    else T.minimum(idx[d], data.shape[d] - 1)
                    for d in range(data.ndim)
                )
                return T.Store(buf, dst, _combine(red, buf[dst], upd[idx]))

            return T.seq(
                _copy(data, buf, f"{ctx.name}_c"), T.loop_nest(ind.shape, body, prefix=f"{ctx.name}_s")
            )

        return staged(ctx, outs[0], build)


class ScatterND(OpDef):
    """ONNX ScatterND: ``out = data``; then for every leading index ``i`` of ``indices``:
    ``out[indices[i]] = updates[i]`` (a slice when ``indices`` is shorter than the rank of data), or
    combined with ``reduction``."""

    name = "scatter_nd"
    kind = "opaque"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        data, ind, upd = inputs
        _reduction(self, attrs)
        if ind.ndim < 1 or not isinstance(ind.shape[-1], int) or ind.shape[-1] > data.ndim:
            raise self.error(f"indices {ind} need a static last dimension of at most the rank of {data}")
        want = (*ind.shape[:-1], *data.shape[int(ind.shape[-1]) :])
        if upd.shape != want:
            raise self.error(f"updates must have shape {want}, got {upd}")
        return [data]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        data, ind, upd = inputs
        red = _reduction(self, attrs)
        out = data.copy()
        r = ind.shape[-1]
        for pos in np.ndindex(*ind.shape[:-1]):
            key = tuple(int(np_wrap(ind[pos][j], data.shape[j])) for j in range(r))
            _np_combine(red, out, key, upd[pos])
        return [out]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        data, ind, upd = ins
        red = _reduction(self, attrs)
        r = ind.shape[-1]
        lead = ind.ndim - 1

        def build(buf: T.Buffer) -> T.Stmt:
            def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
                pos = idx[:lead]
                key = tuple(wrap_index(ind[(*pos, T.IntImm(j))], data.shape[j]) for j in range(r))
                dst = (*key, *idx[lead:])
                return T.Store(buf, dst, _combine(red, buf[dst], upd[idx]))

            return T.seq(
                _copy(data, buf, f"{ctx.name}_c"), T.loop_nest(upd.shape, body, prefix=f"{ctx.name}_s")
            )

        return staged(ctx, outs[0], build)


class OneHot(OpDef):
    """ONNX OneHot with a static ``depth``: ``out`` has a new axis ``axis`` of length ``depth``;
    ``out[..., k, ...] = values[1] if k == indices[...] (negative ones wrapped) else values[0]``. The inputs
    are ``indices`` and the two-element ``values`` (off, on), which gives the output dtype."""

    name = "one_hot"
    kind = "injective"
    flops_per_element = 0

    def _axis(self, ndim: int, attrs: dict[str, Any]) -> int:
        return normalize_axis(int(attrs.get("axis", -1)), ndim + 1, self.name)

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        ind, values = inputs
        axis = self._axis(ind.ndim, attrs)
        if values.numel != 2 or int(attrs["depth"]) < 1:
            raise self.error(
                f"needs [off_value, on_value] and a positive depth, got {values} and {attrs['depth']}"
            )
        shape = list(ind.shape)
        shape.insert(axis, int(attrs["depth"]))
        return [TensorType(tuple(shape), values.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        ind, values = inputs
        depth = int(attrs["depth"])
        axis = self._axis(ind.ndim, attrs)
        k = np.asarray(ind).astype(np.int64)
        k = np.where(k < 0, k + depth, k)
        ks = np.arange(depth).reshape((-1,) + (1,) * (ind.ndim - axis))
        hot = np.expand_dims(k, axis) == ks
        return [np.where(hot, values.reshape(-1)[1], values.reshape(-1)[0]).astype(values.dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        ind, values = ins
        out = outs[0]
        depth = int(attrs["depth"])
        axis = self._axis(ind.ndim, attrs)
        vals = values.with_(shape=(2,), strides=())

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            src = idx[:axis] + idx[axis + 1 :]
            k = T.cast("int64", ind[src])
            k = T.select(k < 0, k + depth, k)
            v = T.Select(k.eq(idx[axis]), vals[1], vals[0])
            return T.Store(out, idx, ctx.apply_epilogue(v, idx))

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


class ReverseSequence(OpDef):
    """ONNX ReverseSequence: for each batch index ``b`` (along ``batch_axis``), the first ``lens[b]`` steps
    along ``time_axis`` reversed, the rest unchanged."""

    name = "reverse_sequence"
    kind = "injective"
    flops_per_element = 0

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x, lens = inputs
        bax, tax = int(attrs.get("batch_axis", 1)), int(attrs.get("time_axis", 0))
        if not (0 <= bax < x.ndim and 0 <= tax < x.ndim and bax != tax and lens.shape == (x.shape[bax],)):
            raise self.error(
                f"expects two different axes of the input (batch_axis, time_axis) and one length per batch "
                f"entry, got {x}, lengths {lens}, batch_axis {bax}, time_axis {tax}"
            )
        return [inputs[0]]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x, lens = inputs
        bax, tax = int(attrs.get("batch_axis", 1)), int(attrs.get("time_axis", 0))
        out = x.copy()
        for b, n in enumerate(np.asarray(lens).astype(np.int64)):
            src: list[Any] = [slice(None)] * x.ndim
            src[bax], src[tax] = b, slice(0, int(n))
            dst = list(src)
            dst[tax] = slice(int(n) - 1, None, -1) if n > 0 else slice(0, 0)
            out[tuple(dst)] = x[tuple(src)]
        return [out]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, lens = ins
        out = outs[0]
        bax, tax = int(attrs.get("batch_axis", 1)), int(attrs.get("time_axis", 0))

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            n = T.cast("int64", lens[idx[bax]])
            t = idx[tax]
            src_t = T.select(t < n, n - 1 - t, t)
            src = tuple(
                T.minimum(T.maximum(src_t, 0), x.shape[tax] - 1) if d == tax else idx[d]
                for d in range(x.ndim)
            )
            return T.Store(out, idx, ctx.apply_epilogue(x[src], idx))

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


for _op in (GatherElements(), GatherND(), ScatterElements(), ScatterND(), OneHot(), ReverseSequence()):
    register(_op)
