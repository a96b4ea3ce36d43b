"""The inline math functions (no libm) against NumPy over wide input ranges, on the host through the JIT."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jit import jit_run
from kiln.driver import compile_module
from kiln.frontend.nn import GraphBuilder

_erf = np.vectorize(math.erf)

CASES = {
    # op: (input range, reference, rtol, atol)
    "exp": ((-80, 80), np.exp, 2e-6, 0),
    "log": ((1e-6, 1e6), np.log, 0, 2e-6),
    "tanh": ((-12, 12), np.tanh, 2e-6, 2e-7),
    "sigmoid": ((-30, 30), lambda x: 1 / (1 + np.exp(-x)), 2e-6, 1e-7),
    "erf": ((-5, 5), _erf, 0, 6e-7),
    "floor": ((-1e8, 1e8), np.floor, 0, 0),
    "ceil": ((-1e3, 1e3), np.ceil, 0, 0),
    "sqrt": ((0, 1e4), np.sqrt, 1e-7, 0),
    "sin": ((-1e4, 1e4), np.sin, 0, 2e-7),
    "cos": ((-1e4, 1e4), np.cos, 0, 2e-7),
    "gelu": ((-8, 8), lambda x: x * 0.5 * (1 + _erf(x / np.sqrt(2))), 1e-6, 2e-6),
}


def _run(op: str, x: np.ndarray, target: str = "x86_64-linux", **attrs: object) -> np.ndarray:
    g = GraphBuilder()
    v = g.input("x", x.shape)
    g.output(g.op(op, v, **attrs), "y")
    return jit_run(
        compile_module(g.build(), target), __import__("kiln").targets.get_target(target), {"x": x}
    )[0]


# vectors of 8 and 16 lanes (the vector forms), with a scalar tail of 2 elements
@pytest.mark.parametrize("target", ["x86_64-linux", "x86_64-linux-avx512"])
@pytest.mark.parametrize("op", sorted(CASES))
def test_math_function_accuracy(op: str, target: str) -> None:
    (lo, hi), ref, rtol, atol = CASES[op]
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(lo, hi, 4000), np.linspace(lo, hi, 997), [0.0, 1e-3, -1e-3, 0.5, -0.5]])
    x = x[(x >= lo) & (x <= hi)].astype("f4")
    got = _run(op, x, target)
    want = ref(x.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol + 1e-30)


@pytest.mark.parametrize("copies", [1, 5], ids=["scalar", "vector"])  # 8 elements, or 40 (vectors of 16)
def test_exp_saturates_without_overflow_or_nan(copies: int) -> None:
    x = np.tile(np.array([-1000, -88, -87, 88, 88.7, 89, 1000, np.nan], "f4"), copies)
    got = _run("exp", x, "x86_64-linux-avx512").reshape(copies, 8)
    assert np.all(np.isfinite(got[:, :5])) and np.all(got[:, 0] == 0) and np.all(np.isnan(got[:, 7]))
    np.testing.assert_allclose(
        got[:, 2:5], np.exp(x[2:5].astype(np.float64))[None].repeat(copies, 0), rtol=2e-6
    )
    assert np.all(got[:, 1] < 1e-37)  # below the smallest normal float: flushed to zero


def test_integer_casts_truncate_like_numpy() -> None:
    x = np.array([-2.7, -0.5, 0.5, 2.7, 100.9], "f4")
    np.testing.assert_array_equal(_run("cast", x, to="int32"), x.astype(np.int32))
