"""8-bit integer matrix products accumulate in int32 (the bug: 3s times 5s over K = 64 gave -64, the int8
wrap of 960, in both the generated code and the NumPy reference)."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.frontend.nn import GraphBuilder
from kiln.ops import get_op


def _model(a_dtype: str, b: np.ndarray) -> kiln.ir.Module:
    g = GraphBuilder("int8_matmul")
    x = g.input("a", (2, b.shape[0]), a_dtype)
    g.output(g.matmul(x, g.const(b)), name="y")
    return g.build()


def test_reference_accumulates_8_bit_products_in_int32() -> None:
    a, b = np.full((2, 64), 3, np.int8), np.full((64, 3), 5, np.int8)
    (y,) = get_op("matmul").reference([a, b], {})
    assert y.dtype == np.int32
    assert (y == 960).all()


@pytest.mark.parametrize("target", ["x86_64-linux", pytest.param("aarch64-linux", marks=pytest.mark.qemu)])
@pytest.mark.parametrize(("a_dtype", "b_dtype"), [("int8", "int8"), ("uint8", "int8"), ("int16", "int16")])
def test_compiled_8_and_16_bit_matmul_accumulates_in_int32(target: str, a_dtype: str, b_dtype: str) -> None:
    rng = np.random.default_rng(7)
    # the full 8-bit ranges; int16 within +-1000 so that the exact sums fit int32
    lo_a, hi_a = (-1000, 1000) if a_dtype == "int16" else (np.iinfo(a_dtype).min, np.iinfo(a_dtype).max)
    lo_b, hi_b = (-1000, 1000) if b_dtype == "int16" else (np.iinfo(b_dtype).min, np.iinfo(b_dtype).max)
    a = rng.integers(lo_a, hi_a, (2, 64), endpoint=True).astype(a_dtype)
    b = rng.integers(lo_b, hi_b, (64, 19), endpoint=True).astype(b_dtype)
    a[0, :] = 3
    b[:, 0] = 5
    got = kiln.compile(_model(a_dtype, b), target).run({"a": a})["y"]
    want = a.astype(np.int64) @ b.astype(np.int64)  # exact, independent of kiln
    assert got.dtype == np.int32
    assert got[0, 0] == 960
    np.testing.assert_array_equal(got, want)
