"""The SIMD paths of softmax, log-softmax, layer norm, max pooling and LRN, against NumPy written here.

tests/op_cases.py runs every operator on small tensors, mostly shorter than a vector; these shapes are long
enough to take the vector paths (partial accumulators, interior windows without bounds checks), with lengths
that leave tails (37, 197) and the sizes of the benchmark models (128, 384), on AVX2 (8 lanes) and AVX-512
(16 lanes).
"""

from __future__ import annotations

import numpy as np
import pytest
import running

import kiln
from kiln.frontend.nn import GraphBuilder

TARGETS = ("x86_64-linux", "x86_64-linux-avx512")


def _run(target: str, build, **inputs: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    g = GraphBuilder("vector_case")
    xs = [g.input(k, v.shape) for k, v in inputs.items()]
    g.output(build(g, *xs), name="y")
    return running.run(kiln.compile(g.build(), target), inputs)["y"]


def _softmax(x: np.ndarray, log: bool) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return (z - lse if log else np.exp(z - lse)).astype(np.float32)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(3, 16), (2, 3, 37), (4, 128), (2, 197), (1, 1000)])
def test_softmax_rows(target: str, log: bool, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) * 1000 + shape[-1])
    x = (rng.standard_normal(shape) * 8).astype("f4")
    x[..., shape[-1] // 3] += 60  # one large logit per row: the max must be the true max
    op = "log_softmax" if log else "softmax"
    got = _run(target, lambda g, x: g.op(op, x, axis=-1), x=x)
    np.testing.assert_allclose(got, _softmax(x, log), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", [(5, 16), (3, 37), (2, 128, 384), (2, 197)])
def test_layer_norm_rows(target: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(shape[-1])
    x = (rng.standard_normal(shape) * 3 + 5).astype("f4")  # offset: the variance must subtract the mean
    gamma = rng.standard_normal(shape[-1]).astype("f4")
    beta = rng.standard_normal(shape[-1]).astype("f4")
    got = _run(target, lambda g, x, s, b: g.layer_norm(x, s, b, axis=-1, epsilon=1e-5), x=x, s=gamma, b=beta)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(axis=-1, keepdims=True) + 1e-5) * gamma + beta
    np.testing.assert_allclose(got, want.astype("f4"), rtol=1e-4, atol=1e-4)


def _max_pool(x: np.ndarray, k: int, s: int, p: int, d: int, out_hw: tuple[int, ...]) -> np.ndarray:
    """Max over windows of the input padded with -inf (padding never wins)."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p + k * d), (p, p + k * d)), constant_values=-np.inf)
    oh, ow = out_hw
    taps = [
        xp[:, :, a * d : a * d + s * oh : s, b * d : b * d + s * ow : s] for a in range(k) for b in range(k)
    ]
    return np.max(taps, axis=0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("shape", "k", "s", "p", "d", "ceil"),
    [
        ((1, 8, 112, 112), 3, 2, 1, 1, 0),  # ResNet's stem
        ((1, 4, 55, 55), 3, 2, 0, 1, 0),  # AlexNet's
        ((2, 3, 20, 37), 3, 1, 1, 1, 0),  # stride 1: the window max is stored directly
        ((1, 2, 30, 41), 2, 2, 0, 1, 1),  # ceil mode: the last window runs past the input
        ((1, 2, 25, 40), 3, 1, 2, 2, 0),  # dilated
    ],
)
def test_max_pool_rows(
    target: str, shape: tuple[int, ...], k: int, s: int, p: int, d: int, ceil: int
) -> None:
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype("f4")
    x[0, 0, 5, 7] = np.nan  # a NaN wins its windows
    got = _run(
        target,
        lambda g, x: g.max_pool2d(
            x, kernel=(k, k), strides=(s, s), pads=(p,) * 4, dilations=(d, d), ceil_mode=ceil
        ),
        x=x,
    )
    span = [n + 2 * p - d * (k - 1) - 1 for n in shape[2:]]
    out_hw = tuple(
        (-(-n // s) if ceil else n // s) + 1 for n in span
    )  # no window starts in the end padding here
    assert got.shape == (*shape[:2], *out_hw)
    np.testing.assert_array_equal(got, _max_pool(x, k, s, p, d, out_hw))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("shape", "size", "beta"),
    [((1, 16, 13, 29), 5, 0.75), ((2, 7, 9, 11), 3, 0.6), ((1, 6, 20, 20), 4, 0.75)],
)
def test_lrn_planes(target: str, shape: tuple[int, ...], size: int, beta: float) -> None:
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(shape) * 4).astype("f4")
    alpha, bias = 0.3, 1.5
    got = _run(target, lambda g, x: g.lrn(x, size=size, alpha=alpha, beta=beta, bias=bias), x=x)
    x64 = x.astype(np.float64)
    sq = np.zeros_like(x64)
    below, above = (size - 1) // 2, size - 1 - (size - 1) // 2  # channels before and after, ONNX's split
    for c in range(shape[1]):
        sq[:, c] = (x64[:, max(0, c - below) : c + above + 1] ** 2).sum(axis=1)
    np.testing.assert_allclose(got, x64 / (bias + alpha / size * sq) ** beta, rtol=2e-5, atol=1e-6)


REDUCTIONS = {
    "reduce_sum": lambda x, ax: x.sum(axis=ax),
    "reduce_mean": lambda x, ax: x.mean(axis=ax),
    "reduce_max": lambda x, ax: x.max(axis=ax),
    "reduce_min": lambda x, ax: x.min(axis=ax),
    "reduce_prod": lambda x, ax: x.prod(axis=ax),
    "reduce_sum_square": lambda x, ax: (x * x).sum(axis=ax),
    "reduce_l1": lambda x, ax: np.abs(x).sum(axis=ax),
    "reduce_l2": lambda x, ax: np.sqrt((x * x).sum(axis=ax)),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@pytest.mark.parametrize(("shape", "axes"), [((3, 37), (1,)), ((2, 4, 128), (2,)), ((2, 10, 20), (1, 2))])
def test_reductions_over_trailing_axes(
    target: str, op: str, shape: tuple[int, ...], axes: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(len(op) + shape[-1])
    x = (
        rng.uniform(0.9, 1.1, shape).astype("f4")
        if op == "reduce_prod"
        else rng.standard_normal(shape).astype("f4")
    )
    if op in ("reduce_max", "reduce_min"):
        x[0, -1] = np.nan  # a NaN anywhere in a run gives NaN
    got = _run(target, lambda g, x: g.op(op, x, axes=axes, keepdims=0), x=x)
    want = REDUCTIONS[op](x.astype(np.float64), axes).astype("f4")
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", [(1, 8, 14, 14), (2, 3, 7, 9)])
def test_global_avg_pool_planes(target: str, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(shape[-1]).standard_normal(shape).astype("f4")
    got = _run(target, lambda g, x: g.global_avg_pool2d(x), x=x)
    np.testing.assert_allclose(
        got, x.astype(np.float64).mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize(
    ("shape", "k", "s", "p", "ceil"),
    [((1, 8, 35, 35), 3, 1, 1, 0), ((1, 4, 56, 56), 3, 2, 1, 0), ((1, 2, 30, 41), 2, 2, 1, 1)],
)
def test_avg_pool_rows(
    target: str, include_pad: int, shape: tuple[int, ...], k: int, s: int, p: int, ceil: int
) -> None:
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype("f4")
    got = _run(
        target,
        lambda g, x: g.avg_pool2d(
            x, kernel=(k, k), strides=(s, s), pads=(p,) * 4, ceil_mode=ceil, count_include_pad=include_pad
        ),
        x=x,
    )
    h, w = shape[2:]
    out_hw = [(-(-(n + 2 * p - k) // s) if ceil else (n + 2 * p - k) // s) + 1 for n in (h, w)]
    out_hw = [o - 1 if (o - 1) * s >= n + p else o for o, n in zip(out_hw, (h, w), strict=True)]  # ONNX: no
    # window may start in the trailing padding
    extra = k + s  # zeros past the trailing padding, so every window can be sliced
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p + extra), (p, p + extra)))
    inside = np.pad(np.ones((h, w)), ((p, p + extra), (p, p + extra)))
    padded = np.pad(np.ones((h + 2 * p, w + 2 * p)), ((0, extra), (0, extra)))  # input and its padding
    weight = padded if include_pad else inside
    oh, ow = out_hw
    total = sum(xp[:, :, a : a + s * oh : s, b : b + s * ow : s] for a in range(k) for b in range(k))
    count = sum(weight[a : a + s * oh : s, b : b + s * ow : s] for a in range(k) for b in range(k))
    assert got.shape == (*shape[:2], oh, ow)
    np.testing.assert_allclose(got, total / count, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("batch", "m"), [((9, 1), 1), ((3,), 13), ((2, 3), 7)])
def test_batched_matmul_with_shared_weights(target: str, batch: tuple[int, ...], m: int) -> None:
    """``x[..., m, k] @ w[k, n]`` (ViT's ``[197, 1, 768] @ [768, 2304]``) is one GEMM over every batch row;
    its fused epilogue (a bias, a same-shape residual, a factor per batch index) sees the real indices."""
    rng = np.random.default_rng(m)
    k, n = 40, 70
    x = rng.standard_normal((*batch, m, k)).astype("f4")
    r = rng.standard_normal((*batch, m, n)).astype("f4")
    s = rng.standard_normal((*batch, 1, 1)).astype("f4")
    w = rng.standard_normal((k, n)).astype("f4")
    bias = rng.standard_normal(n).astype("f4")

    def build(g, x, r, s):  # type: ignore[no-untyped-def]
        return g.mul(g.add(g.add(g.matmul(x, g.const(w)), g.const(bias)), r), s)

    got = _run(target, build, x=x, r=r, s=s)
    want = ((x.astype(np.float64) @ w + bias) + r) * s
    np.testing.assert_allclose(got, want.astype("f4"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("m", "k"), [(7, 37), (50, 200), (3, 16)])
def test_one_column_products_are_dot_products(target: str, m: int, k: int) -> None:
    """A product with one output column (a matrix-vector product, a 1x1 convolution of a 1x1 map in a
    squeeze-excitation block) sums each row along ``k`` in vectors, with its epilogue."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((m, k)).astype("f4")
    v = rng.standard_normal(k).astype("f4")
    w = rng.standard_normal((m, k, 1, 1)).astype("f4")
    b = rng.standard_normal(m).astype("f4")
    img = rng.standard_normal((1, k, 1, 1)).astype("f4")

    def build(g, x, img):  # type: ignore[no-untyped-def]
        return g.matmul(x, g.const(v)), g.sigmoid(g.conv2d(img, g.const(w), g.const(b)))

    gb = GraphBuilder("dots")
    y1, y2 = build(gb, gb.input("x", x.shape), gb.input("img", img.shape))
    gb.output(y1, name="y1")
    gb.output(y2, name="y2")
    got = running.run(kiln.compile(gb.build(), target), {"x": x, "img": img})
    np.testing.assert_allclose(got["y1"], x.astype(np.float64) @ v, rtol=1e-4, atol=1e-4)
    conv = w[:, :, 0, 0].astype(np.float64) @ img[0, :, 0, 0] + b
    np.testing.assert_allclose(got["y2"][0, :, 0, 0], 1 / (1 + np.exp(-conv)), rtol=1e-5, atol=1e-6)
