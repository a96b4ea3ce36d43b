"""tile: ``np.tile(x, repeats)`` with one repeat count per axis (ONNX Tile; ``repeats`` is a static attribute)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import Dim, TensorType
from .base import LowerContext, OpDef, flat_index, register


class Tile(OpDef):
    """``out[i0, i1, ...] = x[i0 % d0, i1 % d1, ...]`` over ``out.shape = x.shape * repeats``."""

    name = "tile"
    kind = "injective"

    def _repeats(self, x: TensorType, attrs: dict[str, Any]) -> list[int]:
        reps = [int(r) for r in attrs["repeats"]]
        if len(reps) != x.ndim or any(r < 0 for r in reps):
            raise self.error(f"repeats {reps} must be one non-negative count per axis of {x}")
        return reps

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        shape: list[Dim] = []
        for d, r in zip(x.shape, self._repeats(x, attrs), strict=True):
            if isinstance(d, int):
                shape.append(d * r)
            elif r == 1:
                shape.append(d)
            else:
                raise self.error(f"cannot repeat symbolic dimension {d} of {x} {r} times; bind it first")
        return [TensorType(tuple(shape), x.dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        return [np.tile(inputs[0], tuple(int(r) for r in attrs["repeats"]))]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            src = tuple(i if n == o else i % n for i, n, o in zip(idx, x.shape, out.shape, strict=True))
            return T.Store(out, idx, ctx.apply_epilogue(x[src], idx, flat_index(idx, out.shape)))

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i", innermost="vectorized")

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return 0


register(Tile())
