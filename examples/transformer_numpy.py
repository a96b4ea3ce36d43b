"""What the two transformer examples share (not an example itself): the pieces of their float64 NumPy
references, written without kiln, and the compile-run-compare loop over targets.

Used by examples/nn_transformer.py (a language model built from kiln.frontend.nn modules) and
examples/custom_op/transformer.py (a block whose attention uses a custom operator).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np

from kiln.package import Package

DEFAULT_TARGETS = "x86_64-linux,aarch64-linux,riscv64-linux"


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Normalization over the last axis, then scale and shift."""
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta


def gelu(z: np.ndarray) -> np.ndarray:
    """GELU in its exact (erf) form."""
    return 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Scaled dot-product attention of (heads, sequence, head_dim) arrays; no token attends to a later one."""
    seq, d = q.shape[-2], q.shape[-1]
    s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
    s = np.where(np.triu(np.ones((seq, seq), bool), 1), -np.inf, s)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def largest_difference(pkg: Package, feeds: dict[str, np.ndarray], output: str, want: np.ndarray) -> float:
    """Runs ``pkg`` once (targets other than the host's under qemu-user, without a time limit: their speed
    varies), checks ``output`` against ``want`` and returns the largest absolute difference."""
    session = pkg.open_session() if pkg.target.runs_natively() else pkg.open_session(timeout=None)
    with session:
        got = session.run(feeds)[output]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"on {pkg.target.name}")
    return float(np.max(np.abs(got - want)))


def main(doc: str, run: Callable[[str], float], argv: list[str] | None = None, banner: str = "") -> None:
    """An example's command line: ``--targets a,b,c``; prints ``banner`` (if any), then each target's largest
    difference from NumPy."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    args = ap.parse_args(argv)
    if banner:
        print(banner)
    for t in args.targets.split(","):
        print(f"{t:16} largest difference from NumPy: {run(t):.2e}")
