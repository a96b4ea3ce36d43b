"""bitcast: ONNX BitCast (opset 26): the bits of each element reinterpreted as another element type of the
same width (``to``, a kiln dtype), shape unchanged; no value conversion (float32 1.0 -> int32 1065353216).

Lowered as a copy that reads the input's memory as the output's element type (a view of the input buffer
with the other dtype: the load has the new type, so no conversion instruction is emitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType, itemsize, np_dtype
from .base import LowerContext, OpDef, register, unflatten


class BitCast(OpDef):
    name = "bitcast"
    kind = "injective"
    flops_per_element = 0  # moves data only

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x, to = inputs[0], str(attrs["to"])
        if itemsize(x.dtype) != itemsize(to):
            raise self.error(
                f"cannot reinterpret {x.dtype} ({8 * itemsize(x.dtype)} bits) as {to} ({8 * itemsize(to)} bits): "
                "BitCast needs element types of the same width (use Cast to convert values)"
            )
        return [TensorType(x.shape, to)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = np.array(inputs[0], order="C")  # (ascontiguousarray would make a 0-d input 1-d)
        to = np_dtype(str(attrs["to"]))
        if to == np.bool_:  # a bool holds 0 or 1; other bytes are not a bool (ONNX: nonzero is true)
            return [x.view(np.uint8) != 0]
        return [x.view(to).reshape(x.shape)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        src = x.with_(shape=(x.numel,), strides=(), dtype=out.dtype if out.dtype != "bool" else "uint8")
        dst = out.with_(shape=(out.numel,), strides=())

        def body(i: T.LoopVar) -> T.Stmt:
            v: T.Expr = src[i]
            if out.dtype == "bool":
                v = v.ne(T.const(0, "uint8"))
            return T.Store(dst, (i,), ctx.apply_epilogue(v, unflatten(i, out.shape), i))

        kind = "serial" if out.dtype == "bool" else "vectorized"
        return T.loop(out.numel, body, name=ctx.name + "_c", kind=kind)


register(BitCast())
