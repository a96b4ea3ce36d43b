"""Run a graph function with the operators' NumPy references: the oracle that frontends and graph passes are
tested against (tensor code is tested against it too, through the compiled package)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..ir import Constant, GraphFunction, Module, Value, np_dtype
from .base import get_op


def interpret(mod: Module | GraphFunction, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate ``main`` (or the given graph function) on named inputs; returns outputs by name."""
    f = mod.main if isinstance(mod, Module) else mod
    env: dict[Value, np.ndarray] = {}
    for p in f.params:
        if p.name not in inputs:
            raise KeyError(f"missing input {p.name!r}")
        env[p] = np.asarray(inputs[p.name]).astype(np_dtype(p.type.dtype), copy=False)

    def get(v: Value) -> np.ndarray:
        return v.data if isinstance(v, Constant) else env[v]

    for n in f.nodes:
        if n.op in ("call_tensor", "call_extern"):
            raise ValueError("interpret() runs graph-level operators only; interpret before legalization")
        if n.op == "view":
            outs = [get(n.inputs[0]).reshape(n.outputs[0].type.static_shape)]
        else:
            outs = get_op(n.op).reference([get(v) for v in n.inputs], n.attrs)
        for o, val in zip(n.outputs, outs, strict=True):
            env[o] = val
    return {(v.name): get(v) for v in f.outputs}
