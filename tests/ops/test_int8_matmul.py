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


def _conv_model(x_shape: tuple[int, ...], x_dtype: str, w: np.ndarray, bias: np.ndarray, **attrs: object):  # noqa: ANN202
    g = GraphBuilder("int8_conv")
    x = g.input("x", x_shape, x_dtype)
    g.output(g.op("conv2d", x, g.const(w), g.const(bias), **attrs), name="y")
    return g.build()


def _conv_exact(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray, pad: int, pad_value: int, groups: int
) -> np.ndarray:
    """Exact int64 convolution (stride 1), independent of kiln: padded with ``pad_value``, windows x taps."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=pad_value)
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))  # n, c, oh, ow, kh, kw
    cg, ocg = w.shape[1], w.shape[0] // groups
    outs = [
        np.einsum(
            "nchwij,ocij->nohw",
            win[:, gi * cg : (gi + 1) * cg],
            w[gi * ocg : (gi + 1) * ocg].astype(np.int64),
        )
        for gi in range(groups)
    ]
    return np.concatenate(outs, axis=1) + bias.astype(np.int64).reshape(1, -1, 1, 1)


@pytest.mark.parametrize("target", ["x86_64-linux", pytest.param("aarch64-linux", marks=pytest.mark.qemu)])
@pytest.mark.parametrize(("x_dtype", "groups"), [("uint8", 1), ("int8", 1), ("uint8", 6)])
def test_compiled_8_bit_conv_accumulates_in_int32_and_pads_with_the_pad_value(
    target: str, x_dtype: str, groups: int
) -> None:
    """Im2col (groups 1) and depthwise (groups = channels) 3x3 convolutions of full-range 8-bit values: int32
    results, and the padding reads ``pad_value`` (a quantized input's zero point), not 0."""
    rng = np.random.default_rng(11)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max, (1, 6, 7, 9), endpoint=True).astype(x_dtype)
    w = rng.integers(-128, 127, (6, 6 // groups, 3, 3), endpoint=True).astype(np.int8)
    bias = rng.integers(-5000, 5000, 6).astype(np.int32)
    pad_value = int(info.max) - 3
    mod = _conv_model(x.shape, x_dtype, w, bias, pads=(1, 1, 1, 1), groups=groups, pad_value=pad_value)
    got = kiln.compile(mod, target).run({"x": x})["y"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _conv_exact(x, w, bias, 1, pad_value, groups))
