"""The tiny hand-written test model (tests/runtime/data/tiny_model.c) built into a real package.

inputs x float32[2, 4], mode int32[1]; outputs y = x * 2 + w (w = the first 8 floats of the weights) and
probe int64[1] = weights byte 32; kernels "scale" (2 calls) and "add_weights" (1 call); mode 0 normal,
1 hang, 2 segfault, 3 return an error code. Packages are built through the public build API (zig + the
runtime), so they run natively, under qemu-user, or on a device server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from kiln.build import toolchain
from kiln.build.link import ModelInfo, link_model
from kiln.build.package import Package
from kiln.targets import get_target

SOURCE = Path(__file__).parent / "runtime" / "data" / "tiny_model.c"
INFO = ModelInfo(
    "tiny",
    inputs=[("x", "float32", (2, 4)), ("mode", "int32", (1,))],
    outputs=[("y", "float32", (2, 4)), ("probe", "int64", (1,))],
    workspace_bytes=64,
    kernel_names=["scale", "add_weights"],
)
MODES = {"ok": 0, "hang": 1, "segfault": 2, "error": 3}


def default_weights() -> bytes:
    return np.arange(16, dtype=np.float32).tobytes()


def build(target: str, weights: bytes | Path | None = None, name: str = "tiny") -> Package:
    t = get_target(target)
    obj = toolchain.compile_source(t, SOURCE)
    info = ModelInfo(name, INFO.inputs, INFO.outputs, INFO.workspace_bytes, INFO.kernel_names)
    return Package.create(
        t, info, link_model(t, obj, default_weights() if weights is None else weights, info)
    )


def inputs(x: np.ndarray | None = None, mode: str = "ok") -> dict[str, np.ndarray]:
    if x is None:
        x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    return {"x": x.astype(np.float32), "mode": np.array([MODES[mode]], dtype=np.int32)}


def reference(feeds: dict[str, np.ndarray], weights: bytes | None = None) -> dict[str, np.ndarray]:
    w = default_weights() if weights is None else weights
    wf = np.frombuffer(w[:32], dtype=np.float32).reshape(2, 4)
    return {"y": feeds["x"] * 2 + wf, "probe": np.array([w[32]], dtype=np.int64)}
