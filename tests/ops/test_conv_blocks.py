"""conv2d's blocked im2col: convolutions whose im2col matrix exceeds one block are built and multiplied a block
of output rows at a time (with a shorter last block); every variant matches the NumPy reference, with a fused
residual add and relu to check the output pixel index of each block."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.frontend.nn import GraphBuilder
from kiln.ir.interpreter import interpret
from kiln.ops.conv2d import conv_out_size, rows_per_block


@pytest.mark.parametrize(
    ("cin", "size", "k", "stride", "groups"),
    [(64, 42, 3, 1, 1), (32, 45, 5, 2, 1), (64, 30, 3, 1, 2), (128, 20, 3, 1, 1)],
)
def test_blocked_im2col_matches_reference(cin: int, size: int, k: int, stride: int, groups: int) -> None:
    oh = conv_out_size(size, k, stride, 2 * (k // 2), 1)
    rows = rows_per_block(cin // groups * k * k, oh, oh)
    assert rows < oh  # the case really is blocked
    rng = np.random.default_rng(cin + size)
    g = GraphBuilder()
    x = g.input("x", (1, cin, size, size))
    r = g.input("r", (1, 16, oh, oh))
    w = g.const((rng.standard_normal((16, cin // groups, k, k)) * 0.1).astype("f4"))
    b = g.const(rng.standard_normal(16).astype("f4"))
    p = k // 2
    y = g.conv2d(x, w, b, pads=(p, p, p, p), strides=(stride, stride), groups=groups)
    g.output(g.relu(g.add(y, r)), "y")
    mod = g.build()
    feed = {
        "x": rng.standard_normal((1, cin, size, size)).astype("f4"),
        "r": rng.standard_normal((1, 16, oh, oh)).astype("f4"),
    }
    got = kiln.compile(mod, "x86_64-linux").run(feed)["y"]
    np.testing.assert_allclose(got, interpret(mod, feed)["y"], rtol=1e-4, atol=1e-4)
