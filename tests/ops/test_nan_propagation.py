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
