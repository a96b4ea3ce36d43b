"""Per-channel normalizations on NCHW-like tensors: batch_norm (inference) and lrn (across channels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, flat_index, register


class BatchNorm(OpDef):
    """``(x - mean) / sqrt(var + epsilon) * scale + bias`` with the four parameters per channel (axis 1).

    Usually folded into the preceding convolution by fold-batch-norm; otherwise one elementwise loop."""

    name = "batch_norm"
    kind = "injective"

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return (
            2 * inputs[0].numel if inputs[0].is_static else 0
        )  # one multiply-add per element once folded into scale and shift

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        x = inputs[0]
        c = x.shape[1] if x.ndim > 1 else x.shape[0]
        for p in inputs[1:]:
            if p.shape != (c,):
                raise self.error(f"parameters must have shape ({c},), got {p}")
        return [x]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x, scale, bias, mean, var = (a.astype(np.float64) for a in inputs)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        s = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        y = (x - mean.reshape(shape)) * s.reshape(shape) + bias.reshape(shape)
        return [y.astype(inputs[0].dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, scale, bias, mean, var = ins
        out = outs[0]
        eps = float(attrs.get("epsilon", 1e-5))

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            c = idx[1]
            v = (x[idx] - mean[c]) * (scale[c] / T.call("sqrt", var[c] + eps)) + bias[c]
            return T.Store(out, idx, ctx.apply_epilogue(v, idx, flat_index(idx, out.shape)))

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i", innermost="vectorized")


class LRN(OpDef):
    """ONNX LRN: ``x / (bias + alpha / size * sum_{window over channels} x^2) ** beta``."""

    name = "lrn"
    kind = "injective"

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return (
            (2 * int(attrs["size"]) + 4) * inputs[0].numel if inputs[0].is_static else 0
        )  # window of squares, then scale, pow and divide

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        return [inputs[0]]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0].astype(np.float64)
        size = int(attrs["size"])
        alpha, beta, bias = (
            float(attrs.get("alpha", 1e-4)),
            float(attrs.get("beta", 0.75)),
            float(attrs.get("bias", 1.0)),
        )
        c = x.shape[1]
        sq = np.zeros_like(x)
        lo_off, hi_off = (size - 1) // 2, size - 1 - (size - 1) // 2
        for i in range(c):
            lo, hi = max(0, i - lo_off), min(c - 1, i + hi_off)
            sq[:, i] = (x[:, lo : hi + 1] ** 2).sum(axis=1)
        return [(x / (bias + alpha / size * sq) ** beta).astype(inputs[0].dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        x, out = ins[0], outs[0]
        size = int(attrs["size"])
        alpha, beta, bias = (
            float(attrs.get("alpha", 1e-4)),
            float(attrs.get("beta", 0.75)),
            float(attrs.get("bias", 1.0)),
        )
        c = x.shape[1]
        lo_off = (size - 1) // 2
        acc = T.Buffer(f"{ctx.name}_acc", (1,), x.dtype, scope="local")
        zero = (T.IntImm(0),)

        def body(idx: tuple[T.LoopVar, ...]) -> T.Stmt:
            def tap(k: T.LoopVar) -> T.Stmt:
                ch = idx[1] + k - lo_off
                inside = T.logical_and(ch >= 0, ch < c)
                v = x[(idx[0], T.minimum(T.maximum(ch, 0), c - 1), *idx[2:])]
                return T.Store(acc, zero, acc[0] + T.select(inside, v * v, T.const(0.0, x.dtype)))

            denom = T.call("pow", bias + acc[0] * (alpha / size), T.const(beta, x.dtype))
            return T.Allocate(
                acc,
                T.seq(
                    T.Store(acc, zero, T.const(0.0, x.dtype)),
                    T.loop(size, tap, name=f"{ctx.name}_k"),
                    T.Store(out, idx, ctx.apply_epilogue(x[idx] / denom, idx, None)),
                ),
            )

        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


register(BatchNorm())
register(LRN())
