"""A NaN in a max-pooling window or a max/min reduction gives NaN (IEEE 754-2019 maximum/minimum, NumPy's
``np.max``); onnxruntime drops some of them, so the oracle here is NumPy itself."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.frontend.nn import GraphBuilder


def _run(build, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    g = GraphBuilder("nan_case")
    g.output(build(g, g.input("x", x.shape)), name="y")
    return kiln.compile(g.build(), "x86_64-linux").run({"x": x})["y"]


X = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
X[0, 0, 1, 2] = np.nan
X[0, 1, 3, 3] = np.nan


@pytest.mark.parametrize(
    ("name", "build", "want"),
    [
        ("reduce_max", lambda g, x: g.reduce_max(x, axes=(3,), keepdims=0), np.max(X, axis=3)),
        ("reduce_min", lambda g, x: g.reduce_min(x, axes=(2,), keepdims=0), np.min(X, axis=2)),
        (
            "max_pool2d",
            lambda g, x: g.max_pool2d(x, kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)),
            X.reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5)),
        ),
    ],
)
def test_nan_in_the_window_gives_nan(name: str, build, want: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    got = _run(build, X)
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(got, want)  # NaNs in the same places, the other values exact


def test_nan_and_inf_through_a_fused_matmul_add_relu() -> None:
    """The case found in the farm review: relu(NaN) was 0 in the fused epilogue; onnxruntime gives NaN."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    x[0, 3], x[1, 2] = np.nan, np.inf
    g = GraphBuilder("fused_nan")
    y = g.relu(g.add(g.matmul(g.input("x", x.shape), g.const(w)), g.const(b)))
    g.output(y, name="y")
    got = kiln.compile(g.build(), "x86_64-linux").run({"x": x})["y"]
    with np.errstate(invalid="ignore"):
        want = np.maximum(x @ w + b, 0, where=True)  # np.maximum propagates NaN
    assert np.isnan(want[0]).all() and not np.isnan(want[1]).any()
    np.testing.assert_array_equal(got, want)


# Whole vectors and a tail on every x86 vector width (AVX2: 8 lanes, AVX-512: 16): a NaN, +-inf and the clip
# bounds themselves in every lane position, through relu and clip (their constant-bound form) standalone and
# fused into a matmul epilogue (the NaN arriving through the fused add), and through maximum/minimum of two
# run-time tensors (NaN on either side).
V = np.random.default_rng(1).uniform(-8, 8, (3, 37)).astype(np.float32)
V[0, ::3], V[1, 1::3], V[2, 2::3] = np.nan, np.inf, -np.inf
V[1, ::5], V[2, ::7] = 0.0, 6.0
W = np.random.default_rng(2).uniform(-8, 8, (3, 37)).astype(np.float32)
W[0, 1::4], W[2, ::4] = np.nan, np.nan
F = np.random.default_rng(3).uniform(-2, 2, (3, 5)).astype(np.float32)  # finite: the matmul's input, weights
K = np.random.default_rng(4).uniform(-2, 2, (5, 37)).astype(np.float32)


@pytest.mark.parametrize("target", ["x86_64-linux", "x86_64-linux-avx512"])
@pytest.mark.parametrize(
    ("name", "build", "want"),
    [
        ("relu", lambda g, x, w: g.relu(x), lambda: np.maximum(V, 0)),
        ("relu6", lambda g, x, w: g.clip(x, min=0.0, max=6.0), lambda: np.clip(V, 0, 6)),
        ("clip-min-only", lambda g, x, w: g.clip(x, min=-1.5), lambda: np.maximum(V, -1.5)),
        ("maximum", lambda g, x, w: g.maximum(x, w), lambda: np.maximum(V, W)),
        ("minimum", lambda g, x, w: g.minimum(w, x), lambda: np.minimum(W, V)),
        (
            "fused-relu6",
            lambda g, x, w: g.clip(g.relu(g.add(g.matmul(g.input("f", F.shape), g.const(K)), x)), max=6.0),
            lambda: np.clip(F.astype(np.float64) @ K + V, 0, 6),
        ),
    ],
)
def test_nan_through_constant_bounds_on_whole_vectors(name: str, build, want, target: str) -> None:  # type: ignore[no-untyped-def]
    g = GraphBuilder("nan_vectors")
    x, w = g.input("x", V.shape), g.input("w", W.shape)
    y = build(g, x, w)
    g.output(y, name="y")
    feeds = {"x": V, "w": W, "f": F} if name.startswith("fused") else {"x": V, "w": W}
    with np.errstate(invalid="ignore"):
        expected = want().astype(np.float32)
    got = kiln.compile(g.build(), target).run(feeds)["y"]
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    if name.startswith("fused"):  # a matmul sums in its own order: NaNs in the same places, the rest close
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, expected)
