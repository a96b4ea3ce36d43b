"""matmul: NumPy ``a @ b`` semantics (batch dimensions broadcast; 1-D operands are promoted and squeezed).

Lowered per batch index to the shared register-tiled GEMM (its tiles from the instance's schedule record,
:func:`kiln.ops.schedule.schedule_for`); ONNX Gemm becomes matmul plus transposes and an elementwise bias
add, which fusion folds into this kernel's epilogue. On targets with an OS, a batch of at least
``BATCH_PARALLEL_MIN`` (4) products, or of small ones, runs its batch indices in parallel; otherwise each
GEMM splits its tiles over threads (:mod:`kiln.ops.gemm_kernel`).

8- and 16-bit integer operands (int8, uint8, int16, and mixed int8 x uint8) are multiplied and accumulated
in int32 and give an int32 result, like ONNX MatMulInteger (ONNX MatMul itself does not take them): the sum
of K products of 8-bit values overflows 8 bits long before it overflows 32. Other dtypes accumulate in their
own type (int32 and int64 products wrap like C and NumPy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import Dim, TensorType
from ..targets.schedule import GemmSchedule
from .base import LowerContext, OpDef, OpError, broadcast_shapes, flat_index, register, unflatten
from .gemm_kernel import gemm, gemm_dynamic, parallel_for
from .schedule import schedule_for

SMALL_INTS = ("int8", "uint8", "int16")
#: From this many batch indices a batched product runs its batch in parallel (fewer: each GEMM does).
BATCH_PARALLEL_MIN = 4


def acc_dtype(a: str, b: str) -> str:
    """The accumulator and result dtype of a product of ``a`` and ``b`` operands."""
    return "int32" if a in SMALL_INTS and b in SMALL_INTS else a


def _promote(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[tuple[Dim, ...], tuple[Dim, ...]]:
    return (a if len(a) > 1 else (1, *a)), (b if len(b) > 1 else (*b, 1))


class MatMul(OpDef):
    name = "matmul"
    kind = "complex"
    dynamic_shapes = True

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        a, b = inputs
        if a.ndim == 0 or b.ndim == 0:
            raise self.error("operands must have at least one dimension")
        pa, pb = _promote(a.shape, b.shape)
        if isinstance(pa[-1], int) and isinstance(pb[-2], int) and pa[-1] != pb[-2]:
            raise self.error(f"inner dimensions differ: {a} @ {b}")
        batch = broadcast_shapes(pa[:-2], pb[:-2])
        shape = [*batch, pa[-2], pb[-1]]
        if a.ndim == 1:
            del shape[-2]
        if b.ndim == 1:
            del shape[-1]
        if a.dtype != b.dtype and not (a.dtype in SMALL_INTS and b.dtype in SMALL_INTS):
            raise self.error(f"operands have different dtypes: {a} @ {b}")
        return [TensorType(tuple(shape), acc_dtype(a.dtype, b.dtype))]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        a, b = inputs
        out = np.dtype(acc_dtype(str(a.dtype), str(b.dtype)))
        if out.kind == "f":
            return [np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(out)]
        # exact in int64, then wrapped to the result type as the generated code's integer arithmetic does
        return [np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(out)]

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return 2 * outputs[0].numel * int(inputs[0].static_shape[-1])

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        a0, b0 = ins
        out0 = outs[0]
        if any(b.is_dynamic for b in (a0, b0, out0)):
            return _lower_dynamic(ctx, a0, b0, out0)
        sa, sb = _promote(a0.shape, b0.shape)
        a = a0.with_(shape=tuple(int(d) for d in sa), strides=())  # type: ignore[arg-type]
        b = b0.with_(shape=tuple(int(d) for d in sb), strides=())  # type: ignore[arg-type]
        batch = tuple(int(d) for d in broadcast_shapes(sa[:-2], sb[:-2]))  # type: ignore[arg-type]
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        out = out0.with_(shape=(*batch, m, n), strides=())
        nb = len(batch)
        acc = acc_dtype(a.dtype, b.dtype)
        sched = schedule_for(ctx, self.name, ins)
        count = int(np.prod(batch)) if nb else 1
        # threads: over the batch when it has several small products (attention heads), else in each GEMM
        by_batch = parallel_for(ctx.target) and count >= 2 and (count >= BATCH_PARALLEL_MIN or m * n < 4096)

        def load(buf: T.Buffer, idx: tuple[T.Expr, ...]) -> T.Expr:
            return T.cast(acc, buf[idx])

        def for_batch(bi: tuple[T.Expr, ...]) -> T.Stmt:
            def bidx(buf: T.Buffer) -> tuple[T.Expr, ...]:
                off = nb - (buf.ndim - 2)
                return tuple(T.IntImm(0) if buf.shape[d] == 1 else bi[d + off] for d in range(buf.ndim - 2))

            ab, bb = bidx(a), bidx(b)

            def store(i: T.Expr, j: T.Expr, acc: T.Expr) -> T.Stmt:
                idx = (*bi, i, j)
                flat = flat_index(bi, batch) * (m * n) + i * n + j
                # The epilogue sees the operator's real output index (1-D operands squeezed away).
                real = idx[:-2] + ((i,) if a0.ndim > 1 else ()) + ((j,) if b0.ndim > 1 else ())
                return T.Store(out, idx, ctx.apply_epilogue(acc, real, flat))

            return gemm(
                ctx.name,
                m,
                n,
                k,
                lambda i, kk: load(a, (*ab, i, kk)),
                lambda kk, j: load(b, (*bb, kk, j)),
                store,
                ctx.lanes,
                acc,
                schedule=sched.gemm,
                parallel=parallel_for(ctx.target) and not by_batch,
            )

        if nb == 0:
            return for_batch(())
        if count > 1 and all(d == 1 for d in b.shape[:-2]) and a.shape[:-2] == batch:
            return _folded(ctx, a, b, out, a0.ndim > 1, b0.ndim > 1, acc, sched.gemm)
        if by_batch:  # one loop over every batch index, its coordinates recovered from the flat one

            def flat(f: T.LoopVar) -> T.Stmt:
                strides = [int(np.prod(batch[d + 1 :])) for d in range(nb)]
                return for_batch(tuple((f // st) % batch[d] for d, st in enumerate(strides)))

            return T.loop(count, flat, name=f"{ctx.name}_pb", kind="parallel")
        return T.loop_nest(batch, for_batch, prefix=f"{ctx.name}_b")


def _folded(
    ctx: LowerContext,
    a: T.Buffer,
    b: T.Buffer,
    out: T.Buffer,
    a_rows: bool,
    b_cols: bool,
    acc: str,
    sched: GemmSchedule,
) -> T.Stmt:
    """A batch of products sharing one ``b`` (no batch dimensions of its own, or all 1), with ``a`` holding
    every batch index (e.g. ``[197, 1, 768] @ [768, 2304]``): one GEMM of ``batch * m`` rows, so ``b`` is
    read once per row tile instead of once per batch index. The epilogue sees the real output index."""
    batch, m, k, n = out.shape[:-2], a.shape[-2], a.shape[-1], b.shape[-1]
    rows = int(np.prod(batch)) * m
    a2 = a.with_(shape=(rows, k), strides=())
    b2 = b.with_(shape=(k, n), strides=())
    out2 = out.with_(shape=(rows, n), strides=())

    def store(r: T.Expr, j: T.Expr, value: T.Expr) -> T.Stmt:
        bi = unflatten(r // m if m > 1 else r, batch)
        real = (*bi, *((r % m if m > 1 else T.IntImm(0),) if a_rows else ()), *((j,) if b_cols else ()))
        return T.Store(out2, (r, j), ctx.apply_epilogue(value, real, r * n + j))

    return gemm(
        ctx.name,
        rows,
        n,
        k,
        lambda i, kk: T.cast(acc, a2[i, kk]),
        lambda kk, j: T.cast(acc, b2[kk, j]),
        store,
        ctx.lanes,
        acc,
        schedule=sched,
        parallel=parallel_for(ctx.target),
    )


def _lower_dynamic(ctx: LowerContext, a: T.Buffer, b: T.Buffer, out: T.Buffer) -> T.Stmt:
    """A product whose sizes are known only at run time: the register-tiled GEMM with run-time tile counts
    (:func:`kiln.ops.gemm_kernel.gemm_dynamic`) per batch index; the batch indices run in parallel on targets
    with threads."""
    if a.ndim < 2 or b.ndim < 2:
        raise OpError(f"matmul: a 1-D operand with run-time dimensions ({a} @ {b}) is not supported")
    acc = acc_dtype(a.dtype, b.dtype)
    nb = out.ndim - 2
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    sched = ctx.target.schedule_for() if ctx.target is not None else None  # the target's default tiles

    def bidx(buf: T.Buffer, bi: tuple[T.Expr, ...]) -> tuple[T.Expr, ...]:
        off = nb - (buf.ndim - 2)
        return tuple(T.IntImm(0) if buf.shape[d] == 1 else bi[d + off] for d in range(buf.ndim - 2))

    def product(bi: tuple[T.Expr, ...]) -> T.Stmt:
        ab, bb = bidx(a, bi), bidx(b, bi)

        def store(i: T.Expr, j: T.Expr, v: T.Expr) -> T.Stmt:
            return T.Store(out, (*bi, i, j), ctx.apply_epilogue(v, (*bi, i, j), None))

        return gemm_dynamic(
            ctx.name,
            m,
            n,
            k,
            lambda i, kk: T.cast(acc, a[(*ab, i, kk)]),
            lambda kk, j: T.cast(acc, b[(*bb, kk, j)]),
            store,
            ctx.lanes,
            acc,
            schedule=sched.gemm if sched is not None else None,
        )

    if nb == 0:
        return product(())
    batch = out.shape[:nb]
    count: T.ExprLike = 1
    for d in batch:
        count = count * d

    def flat(f: T.LoopVar) -> T.Stmt:  # the batch coordinates of flat index f
        idx: list[T.Expr] = []
        rest: T.Expr = f
        for d in reversed(batch):
            idx.append(rest % d if not (isinstance(d, int) and d == 1) else T.IntImm(0))
            rest = rest // d
        return product(tuple(reversed(idx)))

    return T.loop(
        count, flat, name=f"{ctx.name}_pb", kind="parallel" if parallel_for(ctx.target) else "serial"
    )


register(MatMul())
