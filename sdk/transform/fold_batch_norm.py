"""fold-batch-norm: fold inference-time per-channel scale and shift into the preceding convolution.

Matches ``conv2d(x, W[, b])`` whose result is used only by ``batch_norm(y, scale, bias, mean, var)`` or by a
``mul``/``add`` with a constant that broadcasts per output channel (shape ``[C,1,1]``, ``[1,C,1,1]``, ``[1]``,
scalar), with constant weights. Rewrites to ``conv2d(x, W', b')``. Expects: types on all values. Guarantees:
the results are unchanged (up to float rounding); the matched batch_norm/mul/add nodes are gone.
"""

from __future__ import annotations

import numpy as np

from ..ir import Constant, Module, Node, Value
from .pipeline import register_pass


def _per_channel(c: Constant, channels: int) -> np.ndarray | None:
    """The constant as a length-``channels`` vector if it broadcasts per output channel of NCHW."""
    d = c.data
    if d.size == 1:
        return np.full(channels, d.reshape(()), dtype=np.float64)
    shape = d.shape
    if shape in ((channels, 1, 1), (1, channels, 1, 1)):
        return d.reshape(channels).astype(np.float64)
    return None


def _scale_shift(n: Node, channels: int, y: Value) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel if ``n`` computes y * scale + shift with constants, else None."""
    if n.op == "batch_norm" and n.inputs[0] is y and all(isinstance(v, Constant) for v in n.inputs[1:]):
        gamma, beta, mean, var = (v.data.astype(np.float64) for v in n.inputs[1:])  # type: ignore[union-attr]
        if gamma.shape != (channels,):
            return None
        s = gamma / np.sqrt(var + float(n.attrs.get("epsilon", 1e-5)))
        return s, beta - mean * s
    if n.op in ("mul", "add") and len(n.inputs) == 2:
        other = n.inputs[1] if n.inputs[0] is y else n.inputs[0]
        if not isinstance(other, Constant) or n.outputs[0].type != y.type:
            return None
        v = _per_channel(other, channels)
        if v is None:
            return None
        return (v, np.zeros(channels)) if n.op == "mul" else (np.ones(channels), v)
    return None


@register_pass("fold-batch-norm", "graph_opt")
def fold_batch_norm(mod: Module) -> Module:
    main = mod.main
    users = main.users()
    graph_outputs = {id(v) for v in main.outputs}
    skip: set[int] = set()
    nodes: list[Node] = []
    for n in main.nodes:
        if id(n) in skip:
            continue
        while n.op == "conv2d" and all(isinstance(v, Constant) for v in n.inputs[1:]):
            y = n.outputs[0]
            us = users.get(y, [])
            channels = y.type.shape[1]
            if len(us) != 1 or id(y) in graph_outputs or not isinstance(channels, int):
                break
            ss = _scale_shift(us[0], channels, y)
            if ss is None:
                break
            scale, shift = ss
            w = n.inputs[1].data  # type: ignore[union-attr]
            b = n.inputs[2].data if len(n.inputs) > 2 else np.zeros(w.shape[0])  # type: ignore[union-attr]
            w2 = (w.astype(np.float64) * scale.reshape(-1, 1, 1, 1)).astype(w.dtype)
            b2 = (b.astype(np.float64) * scale + shift).astype(w.dtype)
            skip.add(id(us[0]))
            n = n.with_(
                inputs=(n.inputs[0], Constant(f"{n.name}_w", w2), Constant(f"{n.name}_b", b2)),
                outputs=us[0].outputs,
            )
        nodes.append(n)
    if not skip:
        return mod
    return mod.with_function(main.with_(nodes=tuple(nodes)))
