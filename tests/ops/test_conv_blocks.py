"""conv2d's blocked im2col and packed GEMM panels: convolutions whose im2col matrix exceeds one block are built
and multiplied a block of output rows at a time (with a shorter last block), and long or direct (1x1) ones pack
their column panels; every variant matches the NumPy reference, with a fused residual add and relu to check
the output pixel index of each block."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.frontend.nn import GraphBuilder
from kiln.ops.conv2d import conv_out_size, rows_per_block
from kiln.ops.interpreter import interpret


@pytest.mark.parametrize(
    ("cin", "size", "k", "stride", "groups"),
    [(64, 42, 3, 1, 1), (32, 45, 5, 2, 1), (64, 30, 3, 1, 2), (128, 20, 3, 1, 1), (256, 9, 1, 1, 1)],
)
def test_blocked_im2col_matches_reference(cin: int, size: int, k: int, stride: int, groups: int) -> None:
    oh = conv_out_size(size, k, stride, 2 * (k // 2), 1)
    if k > 1:
        assert rows_per_block(cin // groups * k * k, oh, oh) < oh  # the case really is blocked
    cout = 32  # >= 4 row tiles of 6: the packed panel path (for K >= 1024 and the 1x1 case)
    rng = np.random.default_rng(cin + size)
    g = GraphBuilder()
    x = g.input("x", (1, cin, size, size))
    r = g.input("r", (1, cout, oh, oh))
    w = g.const((rng.standard_normal((cout, cin // groups, k, k)) * 0.1).astype("f4"))
    b = g.const(rng.standard_normal(cout).astype("f4"))
    p = k // 2
    y = g.conv2d(x, w, b, pads=(p, p, p, p), strides=(stride, stride), groups=groups)
    g.output(g.relu(g.add(y, r)), "y")
    mod = g.build()
    feed = {
        "x": rng.standard_normal((1, cin, size, size)).astype("f4"),
        "r": rng.standard_normal((1, cout, oh, oh)).astype("f4"),
    }
    got = kiln.compile(mod, "x86_64-linux").run(feed)["y"]
    np.testing.assert_allclose(got, interpret(mod, feed)["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("size", "k", "stride", "pads", "dilation"),
    [
        (20, 3, 1, (1, 1, 1, 1), 1),
        (21, 3, 2, (1, 1, 1, 1), 1),
        (17, 5, 1, (2, 1, 2, 3), 1),
        (19, 3, 1, (0,) * 4, 2),
        # strides above 1: the padded plane split into column phases
        (28, 5, 2, (2, 2, 2, 2), 1),  # EfficientNet's 5x5 stride 2
        (24, 3, 2, (0, 0, 0, 0), 1),  # no padding, even width
        (23, 3, 2, (0, 1, 1, 0), 2),  # dilation 2: every tap in one phase
        (26, 4, 3, (1, 2, 0, 1), 1),  # stride 3, asymmetric padding
    ],
)
def test_depthwise_matches_reference(size: int, k: int, stride: int, pads: tuple, dilation: int) -> None:
    c = 24
    rng = np.random.default_rng(size * k)
    g = GraphBuilder()
    x = g.input("x", (2, c, size, size))
    w = g.const(rng.standard_normal((c, 1, k, k)).astype("f4"))
    b = g.const(rng.standard_normal(c).astype("f4"))
    y = g.conv2d(x, w, b, pads=pads, strides=(stride, stride), dilations=(dilation, dilation), groups=c)
    g.output(g.op("clip", y, min=0.0, max=6.0), "y")
    mod = g.build()
    feed = {"x": rng.standard_normal((2, c, size, size)).astype("f4")}
    got = kiln.compile(mod, "x86_64-linux").run(feed)["y"]
    np.testing.assert_allclose(got, interpret(mod, feed)["y"], rtol=1e-4, atol=1e-4)
