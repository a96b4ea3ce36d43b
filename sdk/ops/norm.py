"""Per-channel normalizations on NCHW-like tensors: batch_norm (inference) and lrn (across channels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import LowerContext, OpDef, flat_index, register, unflatten


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
        if x.ndim < 2:
            raise self.error(f"expects an input with channels on axis 1 (N, C, ...), got {x}")
        c = x.shape[1]
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
        if int(attrs["size"]) < 1 or inputs[0].ndim < 2:
            raise self.error(
                f"needs a size of at least 1 and an input with channels (N, C, ...), got {inputs[0]}"
            )
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
        n, c = x.shape[:2]
        hw = int(np.prod(x.shape[2:]))
        lo_off = (size - 1) // 2
        xf = x.with_(shape=(n, c, hw), strides=())
        of = out.with_(shape=(n, c, hw), strides=())
        zero = T.const(0.0, x.dtype)

        def pixels(i: T.LoopVar, ch: T.LoopVar) -> T.Stmt:
            # one unit-stride loop per channel plane (SIMD): the window's taps are unrolled, a channel outside
            # the tensor adds 0 (the condition depends on the plane, not the pixel)
            def px(j: T.LoopVar) -> T.Stmt:
                sq: T.Expr = zero
                for k in range(size):
                    cc = ch + (k - lo_off)
                    v = xf[i, T.minimum(T.maximum(cc, 0), c - 1), j]
                    sq = sq + T.select(T.logical_and(cc >= 0, cc < c), v * v, zero)
                t = bias + sq * (alpha / size)
                if (
                    beta == 0.75
                ):  # the usual exponent: t^0.75 = sqrt(t) * sqrt(sqrt(t)), which has a vector form
                    root = T.call("sqrt", t)
                    denom = root * T.call("sqrt", root)
                else:
                    denom = T.call("pow", t, T.const(beta, x.dtype))
                idx = (i, ch, *unflatten(j, x.shape[2:]))
                return T.Store(
                    of, (i, ch, j), ctx.apply_epilogue(xf[i, ch, j] / denom, idx, (i * c + ch) * hw + j)
                )

            return T.loop(hw, px, name=f"{ctx.name}_p", kind="vectorized")

        return T.loop(
            n, lambda i: T.loop(c, lambda ch: pixels(i, ch), name=f"{ctx.name}_c"), name=f"{ctx.name}_n"
        )


register(BatchNorm())
register(LRN())
