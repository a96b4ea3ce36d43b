"""The tiny test model of tests/runtime/tinymodel.py, seen from the device farm's tests and benchmarks.

A thin layer over ``tinymodel`` (which builds the hand-written model through the public build API): named
modes, inputs, a reference computed from any weights blob, and packages with other weights or names (the
upload benchmark uses a 32 MB one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent / "runtime"))
import tinymodel  # noqa: E402
from kiln.package import ModelInfo, Package  # noqa: E402

MODES = {"ok": 0, "hang": 1, "segfault": 2, "error": 3}


def build(target: str, weights: bytes | None = None, name: str = "tiny") -> Package:
    """The tiny model for ``target``; ``weights`` replaces the constants blob (at least 33 bytes)."""
    if weights is None and name == "tiny":
        return tinymodel.tiny_package(target)
    i = tinymodel.TINY_INFO
    info = ModelInfo(name, i.inputs, i.outputs, i.workspace_bytes, i.kernel_names, i.operators)
    blob = tinymodel.TINY_WEIGHTS if weights is None else weights
    return Package.create(target, info, tinymodel.link_tiny(target, blob, info=info))


def inputs(x: np.ndarray | None = None, mode: str = "ok") -> dict[str, np.ndarray]:
    feeds = tinymodel.tiny_inputs(mode=MODES[mode])
    if x is not None:
        feeds["x"] = np.asarray(x, dtype=np.float32)
    return feeds


def reference(feeds: dict[str, np.ndarray], weights: bytes | None = None) -> dict[str, np.ndarray]:
    """Expected outputs for ``feeds`` with the given weights blob (default: tinymodel's)."""
    w = tinymodel.TINY_WEIGHTS if weights is None else weights
    wf = np.frombuffer(w[:32], dtype=np.float32).reshape(2, 4)
    return {"y": feeds["x"] * np.float32(2) + wf, "probe": np.array([w[32]], dtype=np.int64)}
