"""Bring your own kernel: a small CNN whose convolutions (with bias and ReLU) and fully connected layers
(weights stored transposed, as PyTorch holds them) run in a hand-written C library, handgemm.c, while kiln
generates everything else.

    python examples/byok_gemm/byok_cnn.py [--target x86_64-linux]

It builds the model with kiln.frontend.nn, compiles it with handgemm's dispatch rewrites added to the default
pipeline, checks the outputs against the NumPy reference, and prints the package's profile: the library
calls show up as kernels of their own (handgemm_...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import handgemm_dispatch  # noqa: E402

import kiln  # noqa: E402
from kiln.frontend.nn import GraphBuilder  # noqa: E402
from kiln.ir import Module  # noqa: E402
from kiln.ops.interpreter import interpret  # noqa: E402
from kiln.transform import Pipeline, default_pipeline  # noqa: E402


def build_model(seed: int = 0) -> Module:
    """conv3x3+bias+relu -> conv3x3/2+bias+relu -> flatten -> linear+relu -> linear (weights (out, in))."""
    rng = np.random.default_rng(seed)

    def param(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype("float32")

    g = GraphBuilder("byok_cnn")
    x = g.input("image", (2, 3, 12, 12))
    h = g.relu(g.conv2d(x, g.const(param(8, 3, 3, 3)), g.const(param(8)), pads=(1, 1, 1, 1)))
    h = g.relu(
        g.add(
            g.conv2d(h, g.const(param(16, 8, 3, 3)), strides=(2, 2), pads=(1, 1, 1, 1)),
            g.const(param(1, 16, 1, 1)),
        )
    )
    h = g.reshape(h, shape=(2, 16 * 6 * 6))
    w1, w2 = g.const(param(64, 576, scale=0.05)), g.const(param(10, 64, scale=0.1))
    h = g.relu(g.add(g.matmul(h, g.transpose(w1, perm=[1, 0])), g.const(param(64))))
    g.output(g.matmul(h, g.transpose(w2, perm=[1, 0])), "logits")
    return g.build()


def pipeline(target: str) -> Pipeline:
    """The default pipeline with handgemm's rewrites, each where it declares it belongs."""
    return default_pipeline(target, extra=[handgemm_dispatch.matmul_nt, handgemm_dispatch.conv_bias_relu])


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="x86_64-linux")
    args = ap.parse_args(argv)
    mod = build_model()
    pipe = pipeline(args.target)
    print(f"pipeline: {pipe}")
    pkg = kiln.compile(mod, args.target, pipeline=pipe)
    assert Pipeline.parse(pkg.manifest["pipeline"]) == pipe  # the manifest's pipeline parses back
    print("linked:", ", ".join(f"{e['name']} ({', '.join(e['files'])})" for e in pkg.manifest["externs"]))
    image = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype("float32")
    want = interpret(mod, {"image": image})["logits"]
    # natively with the package's default timeout; under an emulator without one (its speed varies)
    session = pkg.open_session() if pkg.target.runs_natively() else pkg.open_session(timeout=None)
    with session:
        got = session.run({"image": image})["logits"]
        profile = session.profile()
    err = float(np.max(np.abs(got - want)))
    print(f"largest difference from the NumPy reference: {err:.2e}")
    print(profile.table())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return {row.kernel: row.total_s for row in profile.rows()}


if __name__ == "__main__":
    main()
