"""det: ONNX Det, the determinant of each square matrix in the last two axes (``[*, M, M] -> [*]``).

Lowered (kiln script) as Gaussian elimination with partial pivoting on a local copy of each matrix: the
determinant is the product of the pivots, negated once per row swap; a zero pivot column (a singular matrix)
gives 0 without dividing by it.
"""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType
from . import script
from .base import OpError


def _infer(x: TensorType) -> TensorType:
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise OpError(f"det: expects square matrices in the last two axes ([*, M, M]), got {x}")
    if not x.dtype.startswith("float"):
        raise OpError(f"det: expects a float tensor, got {x.dtype}")
    return TensorType(x.shape[:-2], x.dtype)


def _reference(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.linalg.det(x), dtype=x.dtype)


@script.operator("det", infer=_infer, reference=_reference, flops_per_element=0)
def det(x, out):  # type: ignore[no-untyped-def]
    m = x.shape[-1]
    n = out.numel
    xs = x.with_(shape=(n, m, m), strides=())
    ys = out.with_(shape=(n,), strides=())
    a = script.alloc((m, m), x.dtype)
    d = script.alloc((1,), x.dtype)
    p = script.alloc((1,), "int64")
    t = script.alloc((1,), x.dtype)
    for b in range(n):
        for i, j in script.grid(m, m):
            a[i, j] = xs[b, i, j]
        d[0] = 1.0
        for k in range(m):
            p[0] = k
            for i in range(k + 1, m):
                if abs(a[i, k]) > abs(a[p[0], k]):
                    p[0] = i
            if p[0] != k:
                d[0] = -d[0]
                for j in range(m):
                    t[0] = a[k, j]
                    a[k, j] = a[p[0], j]
                    a[p[0], j] = t[0]
            d[0] = d[0] * a[k, k]
            if a[k, k] != 0.0:
                for i in range(k + 1, m):
                    f = a[i, k] / a[k, k]
                    for j in range(k + 1, m):
                        a[i, j] = a[i, j] - f * a[k, j]
        ys[b] = d[0]
