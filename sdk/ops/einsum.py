"""einsum: ``np.einsum(equation, *operands)`` for explicit equations without ellipsis (``"ij,jk->ik"``).

The ONNX frontend expands ``...`` into letters and imports the common two-operand contractions as
transposes, reshapes and one batched :mod:`matmul <kiln.ops.matmul>` (the tiled GEMM); this operator is
the general case (diagonals, several operands, broadcast batch letters): a loop nest over the output
letters with, per output element, an inner nest over the summed letters accumulating the product of the
operands in a local scalar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import Dim, TensorType
from .base import LowerContext, OpDef, OpError, register


def parse(equation: str, ndims: Sequence[int]) -> tuple[list[str], str]:
    """Operand subscripts and output subscripts of an explicit or implicit equation without ``...``."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise OpError(f"einsum: equation {equation!r} still has an ellipsis")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        raise OpError(f"einsum: equation {equation!r} has {len(terms)} operands, got {len(ndims)}")
    for t, nd in zip(terms, ndims, strict=True):
        if len(t) != nd or not (t.isalpha() or t == ""):
            raise OpError(f"einsum: subscripts {t!r} do not match an operand of rank {nd}")
    if "->" not in eq:  # implicit: the letters used once, sorted
        letters = "".join(terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs


def letter_sizes(terms: Sequence[str], shapes: Sequence[Sequence[Dim]]) -> dict[str, Dim]:
    sizes: dict[str, Dim] = {}
    for t, shape in zip(terms, shapes, strict=True):
        for ch, d in zip(t, shape, strict=True):
            old = sizes.get(ch)
            if old is None or old == 1:
                sizes[ch] = d
            elif d != 1 and d != old:
                raise OpError(f"einsum: letter {ch!r} has sizes {old} and {d}")
    return sizes


class Einsum(OpDef):
    name = "einsum"
    kind = "complex"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        terms, out = parse(attrs["equation"], [t.ndim for t in inputs])
        sizes = letter_sizes(terms, [t.shape for t in inputs])
        if any(ch not in sizes for ch in out):
            raise self.error(f"output letters of {attrs['equation']!r} do not appear in the operands")
        return [TensorType(tuple(sizes[ch] for ch in out), inputs[0].dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        terms, out = parse(attrs["equation"], [x.ndim for x in inputs])
        wide = [x.astype(np.float64) if x.dtype.kind == "f" else x for x in inputs]
        r = np.einsum(f"{','.join(terms)}->{out}", *wide)
        return [np.asarray(r).astype(inputs[0].dtype)]

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        terms, _ = parse(attrs["equation"], [t.ndim for t in inputs])
        sizes = letter_sizes(terms, [t.static_shape for t in inputs])
        total = 1
        for v in sizes.values():
            total *= int(v)  # type: ignore[arg-type]
        return len(inputs) * total

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        out = outs[0]
        terms, rhs = parse(attrs["equation"], [b.ndim for b in ins])
        sizes = letter_sizes(terms, [b.shape for b in ins])
        summed = sorted({ch for t in terms for ch in t} - set(rhs))
        acc = T.Buffer(f"{ctx.name}_acc", (1,), out.dtype, scope="local")
        z = (T.IntImm(0),)

        def body(oidx: tuple[T.LoopVar, ...]) -> T.Stmt:
            def product(sidx: Sequence[T.Expr]) -> T.Expr:
                var = {**dict(zip(rhs, oidx, strict=True)), **dict(zip(summed, sidx, strict=True))}
                p: T.Expr | None = None
                for b, t in zip(ins, terms, strict=True):
                    v = b[tuple(T.IntImm(0) if b.shape[k] == 1 else var[ch] for k, ch in enumerate(t))]
                    p = v if p is None else p * v
                assert p is not None
                return p

            if not summed:
                return T.Store(out, oidx, ctx.apply_epilogue(product(()), oidx))
            return T.Allocate(
                acc,
                T.seq(
                    T.Store(acc, z, T.const(0, out.dtype)),
                    T.loop_nest(
                        [int(sizes[ch]) for ch in summed],  # type: ignore[arg-type]
                        lambda sidx: T.Store(acc, z, acc[0] + product(sidx)),
                        prefix=f"{ctx.name}_s",
                    ),
                    T.Store(out, oidx, ctx.apply_epilogue(acc[0], oidx)),
                ),
            )

        if not rhs:
            return body(())
        return T.loop_nest(out.shape, body, prefix=f"{ctx.name}_i")


register(Einsum())
