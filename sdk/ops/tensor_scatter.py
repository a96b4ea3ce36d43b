"""tensor_scatter: ONNX TensorScatter (opset 24), the functional form of a KV-cache update: the cache with
``update`` written along ``axis`` (the sequence axis; axis 0 is the batch) starting at ``write_indices[b]``
for batch entry ``b``; ``circular=1`` wraps positions modulo the cache length, otherwise positions past the
end are not written.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir.types import TensorType
from . import script
from .base import OpError, normalize_axis


def _infer(
    cache: TensorType, update: TensorType, write: TensorType, *, axis: int, circular: int = 0
) -> TensorType:
    a = normalize_axis(axis, cache.ndim, "tensor_scatter")
    same = update.ndim == cache.ndim and all(
        cache.shape[d] == update.shape[d] for d in range(cache.ndim) if d != a
    )
    if a == 0 or update.ndim != cache.ndim or not same or tuple(write.shape) != (cache.shape[0],):
        raise OpError(
            f"tensor_scatter: expects a cache, an update that differs only along axis {a} (not the batch axis 0) "
            f"and one write index per batch entry, got {cache}, {update}, {write}"
        )
    return cache


def _split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int, int]:
    return (
        shape[0],
        int(np.prod(shape[1:axis], dtype=np.int64)),
        shape[axis],
        int(np.prod(shape[axis + 1 :], dtype=np.int64)),
    )


def _reference(
    cache: np.ndarray, update: np.ndarray, write: np.ndarray, *, axis: int, circular: int = 0
) -> np.ndarray:
    a = axis % cache.ndim
    out = cache.copy()
    n = cache.shape[a]
    for b in range(cache.shape[0]):
        for t in range(update.shape[a]):
            pos = int(write[b]) + t
            pos = pos % n if circular else pos
            if 0 <= pos < n:
                rest = (slice(None),) * (cache.ndim - a - 1)
                dst: tuple[Any, ...] = (b, Ellipsis, pos, *rest)
                src: tuple[Any, ...] = (b, Ellipsis, t, *rest)
                out[dst] = update[src]
    return out


@script.operator("tensor_scatter", infer=_infer, reference=_reference, flops_per_element=0)
def tensor_scatter(cache, update, write, out, *, axis, circular=0):  # type: ignore[no-untyped-def]
    a = axis % cache.ndim
    nb, mid, n, inner = _split(cache.shape, a)
    s = update.shape[a]
    cv = cache.with_(shape=(nb, mid, n, inner), strides=())
    uv = update.with_(shape=(nb, mid, s, inner), strides=())
    ov = out.with_(shape=(nb, mid, n, inner), strides=())
    for b, m, p, e in script.grid(nb, mid, n, inner):
        ov[b, m, p, e] = cv[b, m, p, e]
    for b, m, t, e in script.grid(nb, mid, s, inner):
        pos = (write[b] + t) % n if circular else write[b] + t
        if pos >= 0 and pos < n:
            ov[b, m, pos, e] = uv[b, m, t, e]
