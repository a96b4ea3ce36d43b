"""A small transformer block whose attention uses a custom operator written in Python (rope_op.py), compiled
for several targets and checked against a NumPy implementation written independently of kiln.

    python examples/custom_op/transformer.py [--targets x86_64-linux,aarch64-linux,riscv64-linux]

The block: two-head causal self-attention with rotary position embeddings on queries and keys, a residual
connection, layer normalization and a GELU MLP. Targets other than the host's run under qemu-user.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

# this folder (rope_op) and the one above (transformer_numpy, shared with examples/nn_transformer.py)
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import rope_op  # noqa: E402, F401  (registers the operator rotary_embedding)
import transformer_numpy  # noqa: E402
from transformer_numpy import causal_attention, gelu, largest_difference, layer_norm  # noqa: E402

import kiln  # noqa: E402
from kiln.frontend.nn import GraphBuilder  # noqa: E402
from kiln.ir import Module  # noqa: E402

SEQ, DIM, HEADS, HIDDEN = 8, 32, 2, 64
HEAD = DIM // HEADS


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / math.sqrt(shape[0])).astype("float32")

    return {
        "wq": w(DIM, DIM),
        "wk": w(DIM, DIM),
        "wv": w(DIM, DIM),
        "wo": w(DIM, DIM),
        "w1": w(DIM, HIDDEN),
        "b1": np.zeros(HIDDEN, "float32") + 0.1,
        "w2": w(HIDDEN, DIM),
        "gamma": np.ones(DIM, "float32"),
        "beta": np.zeros(DIM, "float32"),
        "mask": np.triu(np.full((SEQ, SEQ), -1e9, "float32"), 1),  # causal: no attention to later tokens
    }


def build(p: dict[str, np.ndarray]) -> Module:
    g = GraphBuilder("rope_transformer")
    x = g.input("x", (1, SEQ, DIM))

    def heads(v):  # noqa: ANN001, ANN202 - (1, SEQ, DIM) -> (HEADS, SEQ, HEAD)
        v = g.reshape(v, shape=(1, SEQ, HEADS, HEAD))
        return g.reshape(g.transpose(v, perm=[0, 2, 1, 3]), shape=(HEADS, SEQ, HEAD))

    q = g.rotary_embedding(heads(g.matmul(x, g.const(p["wq"]))))  # the custom operator
    k = g.rotary_embedding(heads(g.matmul(x, g.const(p["wk"]))))
    v = heads(g.matmul(x, g.const(p["wv"])))
    scores = g.mul(g.matmul(q, g.transpose(k, perm=[0, 2, 1])), g.const(np.float32(1 / math.sqrt(HEAD))))
    att = g.matmul(g.softmax(g.add(scores, g.const(p["mask"])), axis=-1), v)  # (HEADS, SEQ, HEAD)
    att = g.reshape(
        g.transpose(g.reshape(att, shape=(1, HEADS, SEQ, HEAD)), perm=[0, 2, 1, 3]), shape=(1, SEQ, DIM)
    )
    h = g.add(x, g.matmul(att, g.const(p["wo"])))
    n = g.layer_norm(h, g.const(p["gamma"]), g.const(p["beta"]), axis=-1)
    mlp = g.matmul(g.gelu(g.add(g.matmul(n, g.const(p["w1"])), g.const(p["b1"]))), g.const(p["w2"]))
    g.output(g.add(h, mlp), "y")
    return g.build()


def numpy_reference(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """The same block in float64 NumPy, rotary embedding included (nothing from kiln)."""
    x = x.astype(np.float64)

    def rope(v: np.ndarray) -> np.ndarray:  # (H, S, D): rotate pairs (2i, 2i+1) by t * 10000^(-2i/D)
        d = v.shape[-1]
        theta = np.arange(v.shape[1])[:, None] * 10000.0 ** (-2.0 * np.arange(d // 2) / d)
        c, s = np.cos(theta), np.sin(theta)
        out = np.empty_like(v)
        out[..., 0::2] = v[..., 0::2] * c - v[..., 1::2] * s
        out[..., 1::2] = v[..., 0::2] * s + v[..., 1::2] * c
        return out

    def heads(v: np.ndarray) -> np.ndarray:
        return v.reshape(SEQ, HEADS, HEAD).transpose(1, 0, 2)

    q, k, v = (heads(x[0] @ p[n]) for n in ("wq", "wk", "wv"))
    att = causal_attention(rope(q), rope(k), v)
    h = x[0] + att.transpose(1, 0, 2).reshape(SEQ, DIM) @ p["wo"]
    n = layer_norm(h, p["gamma"], p["beta"])
    return (h + gelu(n @ p["w1"] + p["b1"]) @ p["w2"])[None]


def run(target: str, seed: int = 0) -> float:
    """Compile the block for ``target``, run it once; returns the largest difference from NumPy."""
    p = weights(seed)
    pkg = kiln.compile(build(p), target)
    x = np.random.default_rng(seed + 1).standard_normal((1, SEQ, DIM)).astype("float32")
    return largest_difference(pkg, {"x": x}, "y", numpy_reference(x, p))


def main(argv: list[str] | None = None) -> None:
    transformer_numpy.main(__doc__, run, argv)


if __name__ == "__main__":
    main()
