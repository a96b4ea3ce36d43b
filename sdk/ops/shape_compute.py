"""Operators that compute shapes and constants: shape, constant_of_shape, range.

They exist for their meaning (the NumPy references) and for import: the ONNX frontend folds them whenever
their inputs are known (a static input shape, constant operands), which removes the shape arithmetic of
exported models (Shape -> Gather -> Concat -> Reshape). ``shape`` of a tensor with symbolic dimensions stays in
the graph and the interpreter evaluates it; none of them has tensor code: compiling one that is left raises an
error that says to bind the symbolic dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, register


class _ImportOnly(OpDef):
    kind = "opaque"
    flops_per_element = 0  # shape arithmetic, folded at import

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        raise self.error(
            "is only evaluated while importing (its inputs must be known then); bind the model's symbolic "
            "dimensions (shapes=...) so that it folds away"
        )


class Shape(_ImportOnly):
    """``np.array(x.shape[start:end], int64)`` (ONNX Shape; ``start``/``end`` optional, negative from the end)."""

    name = "shape"

    def _slice(self, ndim: int, attrs: dict[str, Any]) -> slice:
        return slice(int(attrs.get("start", 0)), int(attrs["end"]) if attrs.get("end") is not None else ndim)

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        n = len(range(inputs[0].ndim)[self._slice(inputs[0].ndim, attrs)])
        return [TensorType((n,), "int64")]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        return [np.array(x.shape, dtype=np.int64)[self._slice(x.ndim, attrs)]]


class ConstantOfShape(_ImportOnly):
    """``np.full(shape, value)``: the shape is the (1-D int64) input, ``value`` a 1-element array (default
    float32 zero) that also gives the dtype."""

    name = "constant_of_shape"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        raise self.error("its output shape is the value of its input: it needs a constant input")

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        value = np.asarray(attrs.get("value", np.zeros(1, np.float32)))
        shape = tuple(int(d) for d in inputs[0].reshape(-1))
        return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]


class Range(_ImportOnly):
    """``np.arange(start, limit, delta)`` in the inputs' dtype (ONNX Range; three scalar inputs)."""

    name = "range"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        raise self.error("its length depends on its input values: it needs constant inputs")

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        start, limit, delta = (np.asarray(v).reshape(()).item() for v in inputs)
        return [np.arange(start, limit, delta, dtype=np.asarray(inputs[0]).dtype)]


for _op in (Shape(), ConstantOfShape(), Range()):
    register(_op)
