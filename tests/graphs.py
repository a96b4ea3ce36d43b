"""Small models built with kiln.frontend.nn for pass and codegen tests (seeded random weights)."""

from __future__ import annotations

import numpy as np

from kiln.frontend.nn import GraphBuilder
from kiln.ir import Module


def conv_bn_relu(channels: int = 8, size: int = 12, seed: int = 0) -> Module:
    rng = np.random.default_rng(seed)
    g = GraphBuilder("conv_bn_relu")
    x = g.input("x", (1, 3, size, size))
    w = g.const(rng.standard_normal((channels, 3, 3, 3)).astype("f4"), "w")
    y = g.conv2d(x, w, pads=(1, 1, 1, 1))
    scale = g.const(rng.uniform(0.5, 2, (1, channels, 1, 1)).astype("f4"), "scale")
    shift = g.const(rng.standard_normal((1, channels, 1, 1)).astype("f4"), "shift")
    z = g.relu(g.add(g.mul(y, scale), shift))
    g.output(z, "z")
    return g.build()


def residual_block(channels: int = 8, size: int = 10, seed: int = 1) -> Module:
    """conv -> relu -> conv (+ bias) -> add(x) -> relu, stride-2 conv branch and a global pool head."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("residual")
    x = g.input("x", (1, channels, size, size))

    def conv(v, k=3, stride=1, cout=channels):  # noqa: ANN001, ANN202
        w = g.const(rng.standard_normal((cout, channels, k, k)).astype("f4") * 0.2)
        b = g.const(rng.standard_normal(cout).astype("f4"))
        p = k // 2
        return g.conv2d(v, w, b, pads=(p, p, p, p), strides=(stride, stride))

    h = g.relu(conv(x))
    y = g.relu(g.add(conv(h), x))
    d = conv(y, k=1, stride=2, cout=4)
    g.output(y, "features")
    g.output(d, "down")
    return g.build()


def mlp(seed: int = 2, batch: int = 3) -> Module:
    rng = np.random.default_rng(seed)
    g = GraphBuilder("mlp")
    x = g.input("x", (batch, 20))
    w1 = g.const(rng.standard_normal((20, 37)).astype("f4"))
    b1 = g.const(rng.standard_normal(37).astype("f4"))
    w2 = g.const(rng.standard_normal((37, 5)).astype("f4"))
    h = g.tanh(g.add(g.matmul(x, w1), b1))
    y = g.sigmoid(g.matmul(h, w2))
    g.output(y, "y")
    return g.build()
