"""Hand-written test models (data/*.c) standing in for generated code, built into packages per target.

``tiny``: x float32[2,4], mode int32[1] -> y = x*2 + w (w = weights[0:8] as float32), probe int64[1]
(the weights byte at PROBE_OFFSET, or with mode 4 the weights' address modulo 64); kernels "scale" (2 calls)
and "add_weights". Modes 1/2/3 hang, segfault, or make the entry return an error; mode 5 calls "scale"
200 times.
``copy``: x float32[300000] -> y = x + 1; no weights, workspace or kernels; its tensors span several frames.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from kiln.package import ModelInfo, Package, link_model
from kiln.package.link import LinkedModel
from kiln.package.toolchain import compile_source
from kiln.targets import Target, get_target, list_targets

DATA = Path(__file__).parent / "data"
LINUX_TARGETS = [t.name for t in list_targets() if t.os == "linux"]

TINY_INFO = ModelInfo(
    name="tiny",
    inputs=[("x", "float32", (2, 4)), ("mode", "int32", (1,))],
    outputs=[("y", "float32", (2, 4)), ("probe", "int64", (1,))],
    workspace_bytes=32,
    kernel_names=["scale", "add_weights"],
    operators=["Add", "Mul"],
)
TINY_WEIGHTS_F32 = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
TINY_PROBE_BYTE = 42
TINY_WEIGHTS = TINY_WEIGHTS_F32.tobytes() + bytes([TINY_PROBE_BYTE])

COPY_N = 300000
COPY_INFO = ModelInfo("copy", [("x", "float32", (COPY_N,))], [("y", "float32", (COPY_N,))], 0)


def tiny_inputs(seed: int = 0, mode: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((2, 4)).astype(np.float32)
    return {"x": x, "mode": np.array([mode], dtype=np.int32)}


def tiny_expected(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The NumPy oracle for output y."""
    return inputs["x"] * np.float32(2) + TINY_WEIGHTS_F32.reshape(2, 4)


@functools.cache
def tiny_object(target: Target, probe_offset: int = 32) -> bytes:
    return compile_source(target, DATA / "tiny_model.c", flags=[f"-DPROBE_OFFSET={probe_offset}"])


def link_tiny(
    target: str | Target,
    weights: bytes | Path = TINY_WEIGHTS,
    probe_offset: int = 32,
    info: ModelInfo = TINY_INFO,
) -> LinkedModel:
    t = get_target(target)
    return link_model(t, tiny_object(t, probe_offset), weights, info)


@functools.cache
def tiny_package(target: str) -> Package:
    """The tiny model packaged for ``target`` (cached per process)."""
    return Package.create(target, TINY_INFO, link_tiny(target))


@functools.cache
def copy_package(target: str = "x86_64-linux") -> Package:
    t = get_target(target)
    obj = compile_source(t, DATA / "copy_model.c")
    return Package.create(t, COPY_INFO, link_model(t, obj, b"", COPY_INFO))
