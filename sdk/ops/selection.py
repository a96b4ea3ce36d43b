"""Operators whose result size depends on the values: non_zero (ONNX NonZero) and unique (ONNX Unique).

Both have a **bounded output**: the size ONNX would give is only known at run time, so kiln's result has the
largest size the input allows, the real entries first and padding after them (the padding can never be a real
entry, so the count is recovered from the result: :func:`kiln.ops.detection.bounded_count`):

* ``non_zero``: ``[rank, numel]`` int64, the indices of the nonzero elements (row-major order) in the first
  ``count`` columns and -1 in the others;
* ``unique``: ``Y`` holds ``n`` slots (``n`` = the number of elements, or ``X.shape[axis]`` with ``axis``),
  the unique values (or slices) first and zeros after; ``indices`` and ``counts`` have ``n`` entries, the real
  ones first, then -1 and 0; ``inverse_indices`` is exact (one entry per element or slice of ``X``).
  ``sorted=1``: ascending (slices compared lexicographically); ``sorted=0``: in order of first occurrence.

When the input is a constant, the importer folds the operator to ONNX's exact result (:func:`trim`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from . import script
from .base import LowerContext, OpDef, normalize_axis, register, static_dims, unflatten


# ------------------------------------------------------------------------------------------------- non_zero
class NonZero(OpDef):
    name = "non_zero"
    kind = "opaque"
    flops_per_element = 0

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        static_dims(x, self.name)
        return [TensorType((x.ndim, x.numel), "int64")]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = np.asarray(inputs[0])
        out = np.full((x.ndim, x.size), -1, np.int64)
        if x.ndim:
            idx = np.array(np.nonzero(x), np.int64)
            out[:, : idx.shape[1]] = idx
        return [out]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        n, rank = x.numel, x.ndim
        flat = x.with_(shape=(n,), strides=())
        count = T.Buffer(f"{ctx.name}_count", (1,), "int64", scope="local")
        z = (T.IntImm(0),)
        zero = T.const(0.0 if x.dtype.startswith("float") else 0, x.dtype)

        def store(at: tuple[T.Expr, ...], v: T.Expr) -> T.Stmt:
            return T.Store(out, at, ctx.apply_epilogue(v, at))

        def element(f: T.LoopVar) -> T.Stmt:
            idx = unflatten(f, x.shape)
            found = T.seq(
                *(store((T.IntImm(d), count[0]), idx[d]) for d in range(rank)),
                T.Store(count, z, count[0] + 1),
            )
            # "not equal to zero" as the negation of an ordered ==, so that NaN counts as nonzero (as in NumPy)
            return T.IfThenElse(flat[f].eq(zero), T.Seq(()), found)

        def pad(j: T.LoopVar) -> T.Stmt:
            return T.seq(*(store((T.IntImm(d), j), T.IntImm(-1)) for d in range(rank)))

        if rank == 0:
            return T.Seq(())
        return T.Allocate(
            count,
            T.seq(
                T.Store(count, z, T.IntImm(0)),
                T.loop(n, element, name=f"{ctx.name}_f"),
                T.loop(T.IntImm(n) - count[0], pad, name=f"{ctx.name}_p", start=count[0]),
            ),
        )


register(NonZero())


def trim(op: str, results: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
    """The exact ONNX results of bounded operator ``op`` (``non_zero``, ``unique``, ``non_max_suppression``)
    from its bounded ones: the padding cut off."""
    if op == "non_zero":
        (r,) = results
        keep = int(np.count_nonzero(r[0] != -1)) if r.shape[0] else int(r.shape[1])
        return [np.ascontiguousarray(r[:, :keep])]
    if op == "non_max_suppression":
        (r,) = results
        return [np.ascontiguousarray(r[: int(np.count_nonzero(r[:, 0] != -1))])]
    if op == "unique":
        y, first, inverse, counts = results
        k = int(np.count_nonzero(first != -1))
        axis = attrs.get("axis")
        y = y[:k] if axis is None else np.take(y, np.arange(k), axis=int(axis))
        return [np.ascontiguousarray(y), first[:k], inverse, counts[:k]]
    raise ValueError(f"{op} has no bounded output")


# --------------------------------------------------------------------------------------------------- unique
def _slots(x: TensorType, axis: int | None) -> int:
    return x.numel if axis is None else int(x.shape[normalize_axis(axis, x.ndim, "unique")])  # type: ignore[arg-type]


def _unique_infer(x: TensorType, *, axis: int | None = None, sorted: int = 1) -> list[TensorType]:  # noqa: A002
    static_dims(x, "unique")
    n = _slots(x, axis)
    if axis is None:
        y = TensorType((n,), x.dtype)
    else:
        a = normalize_axis(axis, x.ndim, "unique")
        y = TensorType(tuple(n if d == a else x.shape[d] for d in range(x.ndim)), x.dtype)
    return [y, TensorType((n,), "int64"), TensorType((n,), "int64"), TensorType((n,), "int64")]


def _unique_reference(x: np.ndarray, *, axis: int | None = None, sorted: int = 1) -> list[np.ndarray]:  # noqa: A002
    n = x.size if axis is None else x.shape[axis]
    rows = x.reshape(-1, 1) if axis is None else np.moveaxis(x, axis, 0).reshape(n, -1)
    _, first, inverse, counts = np.unique(
        rows, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    if not sorted:  # renumber the unique rows in order of first occurrence
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        first, counts, inverse = first[order], counts[order], rank[inverse]
    k = len(first)
    y = np.zeros((n, rows.shape[1]), x.dtype)
    y[:k] = rows[first]
    y = y.reshape(n) if axis is None else np.moveaxis(y.reshape((n, *np.delete(x.shape, axis))), 0, axis)
    pad = np.full(n - k, -1, np.int64)
    return [
        np.ascontiguousarray(y),
        np.concatenate([first, pad]).astype(np.int64),
        inverse.astype(np.int64),
        np.concatenate([counts, np.zeros(n - k, np.int64)]).astype(np.int64),
    ]


def _row_split(shape: Sequence[int], axis: int | None) -> tuple[int, int, int]:
    """``outer, n, inner``: the input seen as ``[outer, n, inner]`` with the unique rows along the middle."""
    if axis is None:
        return 1, int(np.prod(shape, dtype=np.int64)), 1
    a = axis % len(shape)
    return (
        int(np.prod(shape[:a], dtype=np.int64)),
        int(shape[a]),
        int(np.prod(shape[a + 1 :], dtype=np.int64)),
    )


@script.operator(
    "unique", infer=_unique_infer, reference=_unique_reference, num_outputs=4, flops_per_element=0
)
def unique(x, y, first, inverse, counts, *, axis=None, sorted=1):  # type: ignore[no-untyped-def]  # noqa: A002
    outer, n, inner = _row_split(x.shape, axis)
    rows = x.with_(shape=(outer, n, inner), strides=())
    ys = y.with_(shape=(outer, n, inner), strides=())
    seen = script.alloc(n, "int64")  # the first occurrences, in order of occurrence
    slot = script.alloc(n, "int64")  # the output position of each of them
    found = 0
    for i in range(n):  # row i is new if no earlier row equals it
        dup = 0
        for j in range(i):
            same = 1
            for o, e in script.grid(outer, inner):
                if rows[o, j, e] != rows[o, i, e]:
                    same = 0
            dup = max(dup, same)
        if dup == 0:
            seen[found] = i
            found = found + 1
    for u in range(found):
        pos = 0
        if sorted:  # rank among the unique rows, compared lexicographically
            for v in range(found):
                less = 0
                decided = 0
                for o, e in script.grid(outer, inner):
                    if decided == 0 and rows[o, seen[v], e] != rows[o, seen[u], e]:
                        decided = 1
                        less = script.select(rows[o, seen[v], e] < rows[o, seen[u], e], 1, 0)
                pos = pos + less
        else:
            pos = pos + u
        slot[u] = pos
    for u in range(found):
        cnt = 0
        for i in range(n):
            same = 1
            for o, e in script.grid(outer, inner):
                if rows[o, i, e] != rows[o, seen[u], e]:
                    same = 0
            if same == 1:
                cnt = cnt + 1
                inverse[i] = slot[u]
        counts[slot[u]] = cnt
        first[slot[u]] = seen[u]
        for o, e in script.grid(outer, inner):
            ys[o, slot[u], e] = rows[o, seen[u], e]
    for t in range(found, n):
        first[t] = -1
        counts[t] = 0
        for o, e in script.grid(outer, inner):
            ys[o, t, e] = 0
