"""A custom operator written in Python: rotary position embedding (RoPE, as in RoFormer and LLaMA).

The kernel is a loop nest in kiln script (:mod:`kiln.ops.script`): kiln parses it into its tensor IR, so it
compiles for every target like a built-in operator, and the same function, run as plain Python on NumPy
arrays, is the operator's reference. ``script.operator`` registers it as the kiln operator
``rotary_embedding``: ``GraphBuilder.rotary_embedding(x)``, ONNX nodes of a custom domain
(``kiln compile --custom-op com.example:RotaryEmbedding=rope_op.py:rotary_embedding``), and the NumPy
interpreter all know it.
"""

from __future__ import annotations

import math

from kiln.ops import script


@script.operator("rotary_embedding", flops_per_element=6)
def rotary_embedding(x, out, *, base=10000.0):  # noqa: ANN001, ANN201 - buffers in, buffers out
    """Rotate each (even, odd) feature pair of x[b, t, :] by the angle t * base^(-2i/dim)."""
    batch, seq, dim = x.shape
    for b, t in script.grid(batch, seq):
        for i in range(dim // 2):
            theta = float(t) * script.exp(float(i) * (-2.0 * math.log(base) / dim))
            c = script.cos(theta)
            s = script.sin(theta)
            x0 = x[b, t, 2 * i]
            x1 = x[b, t, 2 * i + 1]
            out[b, t, 2 * i] = x0 * c - x1 * s
            out[b, t, 2 * i + 1] = x0 * s + x1 * c
