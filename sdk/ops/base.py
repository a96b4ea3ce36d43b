"""The operator registry and what every operator definition provides.

An operator is one :class:`OpDef` subclass instance registered under a name. It gives, in one place:

* ``infer(input_types, attrs) -> output types`` (shape inference; symbolic dims pass through where they can);
* ``reference(inputs, attrs) -> outputs``: the NumPy definition of its meaning, the oracle for tests and the
  implementation of constant folding;
* ``kind``: how fusion treats it: ``elementwise`` (output[i] depends on input[i] after broadcasting; can be
  fused into a producer's epilogue), ``complex`` (conv/matmul-like: accepts an elementwise epilogue),
  ``injective``, ``reduce``, ``view`` (a reshape: no data moves) or ``opaque``;
* ``lower(ctx, ins, outs, attrs) -> Stmt``: its loop nest over buffers. Operators that accept an epilogue
  apply ``ctx.epilogue(value, out_indices)`` to every value they store.

Elementwise operators subclass :class:`Elementwise` and only give ``scalar`` (the per-element expression) and
``numpy``; their loop nest and broadcasting are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import Dim, Sym, TensorType, dtype_of, np_dtype
from ..ir.verifier import InferFn
from ..targets import Target

# epilogue(value, out_index, flat_offset) -> value to store. ``flat_offset`` is the row-major element offset
# of ``out_index`` in the output (lowerings pass it when they have it cheaply, so fused same-shape operands are
# read without div/mod).
Epilogue = Callable[[T.Expr, tuple[T.Expr, ...], T.Expr | None], T.Expr]

_REGISTRY: dict[str, OpDef] = {}


class OpError(ValueError):
    """An operator got inputs or attributes it cannot handle; the message names the op and the problem."""


@dataclass
class LowerContext:
    """What a lowering may read: the target (vector width), the epilogue to apply to stored values, a name
    prefix for buffers it allocates, and the tensors the epilogue reads (``None``: not known)."""

    target: Target | None = None
    epilogue: Epilogue | None = None
    name: str = "k"
    epilogue_inputs: tuple[T.Buffer, ...] | None = None

    def apply_epilogue(self, value: T.Expr, idx: tuple[T.Expr, ...], flat: T.Expr | None = None) -> T.Expr:
        return self.epilogue(value, idx, flat) if self.epilogue is not None else value

    @property
    def lanes(self) -> int:
        return self.target.vector_lanes_f32 if self.target is not None else 4


class OpDef:
    name: str = ""
    kind: str = "opaque"
    num_outputs: int = 1
    #: The lowering handles buffers whose dimensions are run-time expressions (int64 loads of the model's
    #: dimension table; dense row-major layout with run-time strides): loop extents from ``buf.shape``, no
    #: Python arithmetic or scratch sized by them. Legalize refuses a dynamic kernel of any other operator.
    dynamic_shapes: bool = False

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        raise NotImplementedError

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        raise NotImplementedError

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        raise OpError(f"operator {self.name} has no lowering to tensor code")

    flops_per_element: int = 1  # the default count per output element; 0 for operators that only move data

    def flops(
        self, inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]
    ) -> int:
        return self.flops_per_element * sum(t.numel for t in outputs if t.is_static)

    def error(self, msg: str) -> OpError:
        return OpError(f"{self.name}: {msg}")


def register(op: OpDef) -> OpDef:
    if not op.name:
        raise ValueError("an operator needs a name")
    if op.name in _REGISTRY:
        raise ValueError(f"operator {op.name!r} is registered twice")
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OpError(f"unknown operator {name!r}") from None


def has_op(name: str) -> bool:
    return name in _REGISTRY


def type_rule(name: str) -> InferFn | None:
    """Operator ``name``'s shape and type inference, or None if no such operator is registered: what
    :func:`kiln.ir.verify` takes as ``infer`` (``verify(mod, infer=type_rule)``)."""
    op = _REGISTRY.get(name)
    return op.infer if op is not None else None


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)


# --------------------------------------------------------------------------------------------- shared shape rules
def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """NumPy broadcasting of (possibly symbolic) shapes."""
    nd = max(len(s) for s in shapes)
    out: list[Dim] = []
    for d in range(nd):
        dims = [s[d - (nd - len(s))] for s in shapes if d - (nd - len(s)) >= 0]
        non1 = {x for x in dims if x != 1}
        if len(non1) > 1:
            raise OpError(f"shapes {[tuple(s) for s in shapes]} cannot be broadcast together")
        out.append(non1.pop() if non1 else 1)
    return tuple(out)


def broadcast_index(buf: T.Buffer, out_idx: Sequence[T.Expr], out_ndim: int) -> tuple[T.Expr, ...]:
    """Indices into ``buf`` for the output element at ``out_idx`` under NumPy broadcasting."""
    off = out_ndim - buf.ndim
    return tuple(T.IntImm(0) if buf.shape[d] == 1 else out_idx[d + off] for d in range(buf.ndim))


def int_tuple(
    attrs: dict[str, Any], key: str, n: int, default: int, op: str, minimum: int
) -> tuple[int, ...]:
    """Attribute ``key`` as ``n`` ints (``default`` each when absent): a window's strides, dilations, pads;
    another count of values, or a value below ``minimum``, is an :class:`OpError` naming ``op``."""
    v = tuple(int(x) for x in attrs.get(key, (default,) * n))
    if len(v) != n:
        raise OpError(f"{op}: {key} needs {n} values, got {list(v)}")
    if any(x < minimum for x in v):
        raise OpError(f"{op}: {key} {list(v)} must be at least {minimum}")
    return v


def positive_int(attrs: dict[str, Any], key: str, default: int, op: str) -> int:
    """Attribute ``key`` (``default`` when absent) as an int of at least 1 (groups, block sizes), else an
    :class:`OpError` naming ``op``."""
    v = int(attrs.get(key, default))
    if v < 1:
        raise OpError(f"{op}: {key} must be at least 1, got {v}")
    return v


def normalize_axis(axis: int, ndim: int, op: str = "") -> int:
    if not -ndim <= axis < ndim:
        raise OpError(
            f"{op}: axis {axis} out of range for rank {ndim}"
            + (" (a scalar has no axes)" if not ndim else "")
        )
    return axis % ndim


def _plain_number(b: T.ExprLike) -> bool:
    """``b`` is a number known at compile time and not NaN (a Python number or an immediate)."""
    v = b.value if isinstance(b, T.IntImm | T.FloatImm) else b
    return isinstance(v, int | float) and v == v


def nan_max(a: T.Expr, b: T.ExprLike) -> T.Expr:
    """``max(a, b)`` with IEEE 754-2019 ``maximum`` semantics for floats: NaN if either operand is NaN (as
    NumPy's ``np.maximum``), so a NaN is never lost in a relu, clip, max-pool or max reduction.

    ``a < b ? b : a`` keeps a NaN ``a`` (the ordered compare is false) and is one ``maxps``-like instruction;
    that is all it takes against a constant that is not NaN (relu's 0, clip's bounds). Otherwise a NaN ``b``
    is passed on by a check of ``b`` alone: an accumulator goes first (``nan_max(acc, x)``), so that check is
    not on the accumulator's dependency chain (a check of ``a`` would put a compare before every max)."""
    if not a.dtype.startswith("float"):
        return T.maximum(a, b)
    c = T.const(b, a.dtype)
    m = T.select(a < c, c, a)
    return m if _plain_number(b) else T.select(c.eq(c), m, c)


def nan_min(a: T.Expr, b: T.ExprLike) -> T.Expr:
    """``min(a, b)``, NaN if either operand is NaN (see :func:`nan_max`; ``a > b ? b : a``)."""
    if not a.dtype.startswith("float"):
        return T.minimum(a, b)
    c = T.const(b, a.dtype)
    m = T.select(a > c, c, a)
    return m if _plain_number(b) else T.select(c.eq(c), m, c)


def limit_value(value: float, dtype: str) -> float | int:
    """``value`` as a start value of ``dtype``: infinities become the integer type's limits (bool: 0/1)."""
    if dtype.startswith("float") or abs(value) != float("inf"):
        return value if dtype.startswith("float") else int(value)
    if dtype == "bool":
        return int(value > 0)
    info = np.iinfo(np_dtype(dtype))
    return int(info.max) if value > 0 else int(info.min)


def ref_cast(x: np.ndarray, dtype: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == object:  # dimensions, some symbolic: integers stay as they are, truth values become bools
        if dtype == "bool":
            return x.astype(bool)
        if dtype == "int64" or dtype.startswith("int"):
            return x
    return x.astype(np_dtype(dtype), copy=False)


# --------------------------------------------------------------------------------------------------- elementwise
class Elementwise(OpDef):
    """``out = f(*inputs)`` per element with NumPy broadcasting. Subclasses give ``scalar`` and ``numpy``."""

    kind = "elementwise"
    dynamic_shapes = True
    out_dtype: str | None = None  # None: same as the first input

    def scalar(self, attrs: dict[str, Any], *args: T.Expr) -> T.Expr:
        raise NotImplementedError

    def numpy(self, attrs: dict[str, Any], *args: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        shape = broadcast_shapes(*(t.shape for t in inputs))
        return [TensorType(shape, self.out_dtype or inputs[0].dtype)]

    def reference(self, inputs: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        out_t = self.infer([TensorType(tuple(x.shape), dtype_of(np.asarray(x))) for x in inputs], attrs)[0]
        r = self.numpy(attrs, *inputs)
        return [ref_cast(np.broadcast_to(r, out_t.static_shape), out_t.dtype)]

    def lower(
        self, ctx: LowerContext, ins: Sequence[T.Buffer], outs: Sequence[T.Buffer], attrs: dict[str, Any]
    ) -> T.Stmt:
        out = outs[0]

        def at(idx: tuple[T.Expr, ...]) -> T.Stmt:
            args = [b[broadcast_index(b, idx, out.ndim)] for b in ins]
            return T.Store(out, idx, ctx.apply_epilogue(self.scalar(attrs, *args), idx))

        operands = (*ins, *ctx.epilogue_inputs) if ctx.epilogue_inputs is not None else None
        if (ctx.epilogue is not None and operands is None) or any(
            b.is_dynamic for b in (out, *(operands or ins))
        ):
            return T.loop_nest(out.shape, at, prefix=ctx.name + "_i", innermost="vectorized")
        shape = [int(d) for d in out.shape]
        if (
            0 in shape
        ):  # nothing to compute (and a run's fixed index 0 would be outside a dimension of size 0)
            return T.seq()
        groups = merged_dims(shape, [[int(d) for d in b.shape] for b in (operands or ins)])
        extents = [int(np.prod([shape[d] for d in g])) for g in groups]

        def body(gidx: tuple[T.LoopVar, ...]) -> T.Stmt:
            idx: list[T.Expr] = [T.IntImm(0)] * out.ndim
            for g, v in zip(groups, gidx, strict=True):  # the run's flat index on its innermost dimension
                idx[max((d for d in g if shape[d] > 1), default=g[-1])] = v  # of size > 1 (merged_dims)
            return at(tuple(idx))

        return T.loop_nest(extents, body, prefix=ctx.name + "_i", innermost="vectorized")


def merged_dims(shape: Sequence[int], operands: Sequence[Sequence[int]]) -> list[list[int]]:
    """Runs of adjacent dimensions of an output of ``shape`` that one loop can cover: each operand
    (right-aligned, NumPy broadcasting) is either full along all of a run or broadcast along all of it.

    Dense row-major operands then need no per-dimension indices inside a run: the element at flat position
    ``g`` of the run is at ``g`` times the stride of the run's innermost dimension of size > 1 for a full
    operand (and at 0 for a broadcast one), so a lowering indexes that dimension with ``g`` and the run's
    others with 0, which keeps every access affine (unit stride for the vectorizer). Output dimensions of
    size 1 join any run. An elementwise ``[1, 1152, 7, 7]`` map is one loop of 56448 elements, not
    1152 x 7 loops too short for a vector."""
    ndim = len(shape)

    def full(op: Sequence[int], d: int) -> bool:
        k = d - (ndim - len(op))
        return k >= 0 and op[k] == shape[d]

    groups: list[list[int]] = []
    sigs: list[tuple[bool, ...] | None] = []
    for d in range(ndim):
        sig = None if shape[d] == 1 else tuple(full(op, d) for op in operands)
        if groups and (sig is None or sigs[-1] is None or sigs[-1] == sig):
            groups[-1].append(d)
            if sig is not None:
                sigs[-1] = sig
        else:
            groups.append([d])
            sigs.append(sig)
    return groups


def elementwise_copy(ctx: LowerContext, src: T.Buffer, dst: T.Buffer) -> T.Stmt:
    """dst[...] = epilogue(src[...]) over identical element counts, viewing both as flat arrays."""
    flat_src = src.with_(shape=(src.numel,), strides=())
    flat_dst = dst.with_(shape=(dst.numel,), strides=())
    return T.loop(
        dst.numel,
        lambda i: T.Store(flat_dst, (i,), ctx.apply_epilogue(flat_src[i], unflatten(i, dst.shape), i)),
        name=ctx.name + "_c",
        kind="vectorized",
    )


def unflatten(flat: T.Expr, shape: Sequence[int]) -> tuple[T.Expr, ...]:
    """The row-major multi-index of element ``flat`` of a tensor of ``shape``."""
    idx: list[T.Expr] = []
    for d in reversed(shape):
        idx.append(flat % d if d != 1 else T.IntImm(0))
        flat = flat // d
    return tuple(reversed(idx))


def flat_index(idx: Sequence[T.Expr], shape: Sequence[int]) -> T.Expr:
    out: T.Expr = T.IntImm(0)
    stride = 1
    for d in reversed(range(len(shape))):
        out = idx[d] * stride + out if stride != 1 else idx[d] + out
        stride *= shape[d]
    return out


def static_dims(t: TensorType, op: str) -> tuple[int, ...]:
    if not t.is_static:
        raise OpError(
            f"{op}: needs static shapes, got {t} (bind symbolic dims such as "
            f"{', '.join(str(d) for d in t.shape if isinstance(d, Sym))} before compiling)"
        )
    return t.static_shape
