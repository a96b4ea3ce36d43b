"""More elementwise operators: the trigonometric and hyperbolic functions, IsNaN/IsInf and the activations ONNX
added after the classic set (Mish, Swish, Celu, ThresholdedRelu, Shrink).

Like :mod:`kiln.ops.elementwise`, each is a per-element expression plus its NumPy meaning; they share the loop
nest and broadcasting of :class:`~kiln.ops.base.Elementwise` and fuse into a producer's epilogue. The inverse
and hyperbolic functions are built from the codegen intrinsics (exp, log, sqrt, sin, cos) and an arctangent
polynomial (Cephes ``atanf``: range-reduced to ``|t| <= tan(pi/8)``, then a degree-9 odd polynomial), with
Taylor series near zero where the closed forms cancel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from .base import Elementwise, register


def _c(v: float, like: T.Expr) -> T.Expr:
    return T.const(v, like.dtype)


def _poly(x: T.Expr, coeffs: Sequence[float]) -> T.Expr:
    """``c0 + c1 x + c2 x^2 + ...`` in Horner form."""
    acc = _c(coeffs[-1], x)
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


def atan(x: T.Expr) -> T.Expr:
    """Arctangent (Cephes ``atanf``, about 1 ulp in float32); ``atan(+-inf) = +-pi/2``."""
    t = T.call("abs", x)
    big = t > 2.414213562373095  # tan(3 pi / 8)
    mid = t > 0.4142135623730950  # tan(pi / 8)
    base = T.select(big, _c(math.pi / 2, x), T.select(mid, _c(math.pi / 4, x), _c(0.0, x)))
    r = T.select(big, _c(-1.0, x) / t, T.select(mid, (t - 1.0) / (t + 1.0), t))
    z = r * r
    p = _poly(z, [-3.33329491539e-1, 1.99777106478e-1, -1.38776856032e-1, 8.05374449538e-2])
    y = base + (p * z * r + r)
    return T.select(x < _c(0.0, x), -y, y)


def _taylor_select(x: T.Expr, limit: float, series: T.Expr, closed: T.Expr) -> T.Expr:
    return T.select(T.call("abs", x) < limit, series, closed)


def _sinh(x: T.Expr) -> T.Expr:
    e = T.call("exp", x)
    closed = (e - _c(1.0, x) / e) * 0.5
    z = x * x
    return _taylor_select(x, 0.5, x * _poly(z, [1.0, 1 / 6, 1 / 120, 1 / 5040, 1 / 362880]), closed)


def _asinh(x: T.Expr) -> T.Expr:
    a = T.call("abs", x)
    closed = T.call("log", a + T.call("sqrt", a * a + 1.0))
    closed = T.select(x < _c(0.0, x), -closed, closed)
    z = x * x
    return _taylor_select(x, 0.25, x * _poly(z, [1.0, -1 / 6, 3 / 40, -5 / 112, 35 / 1152]), closed)


def _atanh(x: T.Expr) -> T.Expr:
    closed = T.call("log", (x + 1.0) / (_c(1.0, x) - x)) * 0.5
    z = x * x
    return _taylor_select(x, 0.25, x * _poly(z, [1.0, 1 / 3, 1 / 5, 1 / 7, 1 / 9, 1 / 11]), closed)


def _asin(x: T.Expr) -> T.Expr:
    return atan(x / T.call("sqrt", (_c(1.0, x) - x) * (x + 1.0)))


def _acos(x: T.Expr) -> T.Expr:
    return atan(T.call("sqrt", (_c(1.0, x) - x) / (x + 1.0))) * 2.0


def _softplus(x: T.Expr) -> T.Expr:
    return T.maximum(x, _c(0.0, x)) + T.call("log", T.call("exp", -T.call("abs", x)) + 1.0)


def _f(attrs: dict[str, Any], key: str, default: float) -> float:
    return float(attrs.get(key, default))


def _np(fn: Callable[..., np.ndarray]) -> Callable[[dict[str, Any], np.ndarray], np.ndarray]:
    def run(attrs: dict[str, Any], x: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return fn(attrs, x)

    return run


def _unary(
    name: str,
    scalar: Callable[[dict[str, Any], T.Expr], T.Expr],
    numpy: Callable[[dict[str, Any], np.ndarray], np.ndarray],
    out_dtype: str | None = None,
    doc: str = "",
) -> None:
    numpy = _np(numpy)
    op = type(
        f"Op_{name}",
        (Elementwise,),
        {
            "__doc__": doc,
            "name": name,
            "out_dtype": out_dtype,
            "scalar": lambda self, attrs, x: scalar(attrs, x),
            "numpy": lambda self, attrs, x: numpy(attrs, x),
        },
    )
    register(op())


# --- trigonometric and hyperbolic
_unary("tan", lambda at, x: T.call("sin", x) / T.call("cos", x), lambda at, x: np.tan(x))
_unary("atan", lambda at, x: atan(x), lambda at, x: np.arctan(x))
_unary("asin", lambda at, x: _asin(x), lambda at, x: np.arcsin(x))
_unary("acos", lambda at, x: _acos(x), lambda at, x: np.arccos(x))
_unary("sinh", lambda at, x: _sinh(x), lambda at, x: np.sinh(x))
_unary(
    "cosh",
    lambda at, x: (T.call("exp", x) + _c(1.0, x) / T.call("exp", x)) * 0.5,
    lambda at, x: np.cosh(x),
)
_unary("asinh", lambda at, x: _asinh(x), lambda at, x: np.arcsinh(x))
_unary(
    "acosh",
    lambda at, x: T.call("log", x + T.call("sqrt", (x - 1.0) * (x + 1.0))),
    lambda at, x: np.arccosh(x),
)
_unary("atanh", lambda at, x: _atanh(x), lambda at, x: np.arctanh(x))

# --- classification (bool result)
_unary(
    "is_nan",
    lambda at, x: x.eq(x).eq(False),  # ordered ==: false only for NaN
    lambda at, x: np.isnan(x),
    "bool",
    "``x != x``: true where x is NaN.",
)


def _is_inf(at: dict[str, Any], x: T.Expr) -> T.Expr:
    pos, neg = int(at.get("detect_positive", 1)), int(at.get("detect_negative", 1))
    tests = ([x.eq(_c(math.inf, x))] if pos else []) + ([x.eq(_c(-math.inf, x))] if neg else [])
    if not tests:
        return x.ne(x)  # never true (ordered !=, false for NaN too)
    return tests[0] if len(tests) == 1 else T.BinOp("or", tests[0], tests[1])


def _np_is_inf(at: dict[str, Any], x: np.ndarray) -> np.ndarray:
    pos, neg = int(at.get("detect_positive", 1)), int(at.get("detect_negative", 1))
    return (np.isposinf(x) & bool(pos)) | (np.isneginf(x) & bool(neg))


_unary(
    "is_inf",
    _is_inf,
    _np_is_inf,
    "bool",
    "``detect_positive``/``detect_negative`` (default 1) select the signs.",
)

# --- activations
_unary(
    "mish",
    lambda at, x: x * T.call("tanh", _softplus(x)),
    lambda at, x: x * np.tanh(np.logaddexp(0, x)),
    doc="``x * tanh(softplus(x))``.",
)
_unary(
    "swish",
    lambda at, x: x * T.call("sigmoid", x * _f(at, "alpha", 1.0)),
    lambda at, x: x / (1.0 + np.exp(-_f(at, "alpha", 1.0) * x)),
    doc="``x * sigmoid(alpha * x)`` (alpha default 1: SiLU).",
)
_unary(
    "celu",
    lambda at, x: (
        T.maximum(x, _c(0.0, x))
        + T.minimum(
            (T.call("exp", x * (1.0 / _f(at, "alpha", 1.0))) - 1.0) * _f(at, "alpha", 1.0), _c(0.0, x)
        )
    ),
    lambda at, x: np.maximum(x, 0) + np.minimum(0, _f(at, "alpha", 1.0) * np.expm1(x / _f(at, "alpha", 1.0))),
    doc="``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``.",
)
_unary(
    "thresholded_relu",
    lambda at, x: T.select(x > _f(at, "alpha", 1.0), x, _c(0.0, x)),
    lambda at, x: np.where(x > _f(at, "alpha", 1.0), x, 0),
    doc="``x if x > alpha else 0`` (alpha default 1).",
)


def _shrink(at: dict[str, Any], x: T.Expr) -> T.Expr:
    lambd, bias = _f(at, "lambd", 0.5), _f(at, "bias", 0.0)
    is_f = x.dtype.startswith("float")
    cmp = x if is_f else T.cast("float32", x)
    b = T.const(bias if is_f else int(bias), x.dtype)
    return T.select(cmp < -lambd, x + b, T.select(cmp > lambd, x - b, T.const(0, x.dtype)))


def _np_shrink(at: dict[str, Any], x: np.ndarray) -> np.ndarray:
    lambd, bias = _f(at, "lambd", 0.5), _f(at, "bias", 0.0)
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)).astype(x.dtype)


_unary("shrink", _shrink, _np_shrink, doc="``x + bias if x < -lambd; x - bias if x > lambd; else 0``.")


class Mean(Elementwise):
    """The elementwise mean of its inputs (ONNX Mean), with broadcasting."""

    name = "mean"

    def scalar(self, attrs: dict[str, Any], *args: T.Expr) -> T.Expr:
        acc = args[0]
        for a in args[1:]:
            acc = acc + a
        return acc * (1.0 / len(args))

    def numpy(self, attrs: dict[str, Any], *args: np.ndarray) -> np.ndarray:
        return sum(a.astype(np.float64) for a in args) / len(args)  # type: ignore[return-value]


register(Mean())


# --- integer bit operations, in int64 arithmetic (tensor code has no shift or bitwise instructions)
def _bits(dtype: str) -> int:
    return 8 * int(np.dtype(dtype).itemsize)


def _pow2(n: T.Expr, bits: int) -> T.Expr:
    """``2**n`` as int64 for ``0 <= n < bits`` (``2**63`` wraps to ``-2**63``, which multiplies right)."""
    out: T.Expr = T.IntImm(1)
    for k in range(bits - 1, 0, -1):
        v = 1 << k
        out = T.Select(n.eq(T.IntImm(k)), T.IntImm(v - (1 << 64) if v >= 1 << 63 else v), out)
    return out


class BitShift(Elementwise):
    """ONNX BitShift (``direction`` LEFT or RIGHT; arithmetic right shift of signed values). Shifts that are
    negative or not below the bit width give 0 (RIGHT of a negative signed value: -1)."""

    name = "bit_shift"

    def scalar(self, attrs: dict[str, Any], *args: T.Expr) -> T.Expr:
        x, n = args
        bits = _bits(x.dtype)
        signed = x.dtype.startswith("int")
        x64, n64 = T.cast("int64", x), T.cast("int64", n)
        valid = T.logical_and(n64 >= 0, n64 < bits)
        neg_fill = T.select(x64 < 0, T.IntImm(-1), T.IntImm(0)) if signed else T.IntImm(0)
        if str(attrs.get("direction", "LEFT")).upper() == "LEFT":
            res = T.select(valid, x64 * _pow2(n64, bits), T.IntImm(0))
        else:
            p = _pow2(n64, bits)
            q = x64 // p  # truncates toward zero: floor for negative values needs one less
            q = T.select(T.logical_and(x64 < 0, (x64 % p).ne(T.IntImm(0))), q - 1, q)
            if signed:
                q = T.select(n64.eq(T.IntImm(bits - 1)), neg_fill, q)
            res = T.select(valid, q, neg_fill)
        return T.cast(x.dtype, res)

    def numpy(self, attrs: dict[str, Any], *args: np.ndarray) -> np.ndarray:
        x, n = np.broadcast_arrays(*args)
        bits = _bits(str(x.dtype))
        valid = (n >= 0) & (n < bits)
        nn = np.where(valid, n, 0).astype(np.int64)
        x64 = x.astype(np.int64)
        if str(attrs.get("direction", "LEFT")).upper() == "LEFT":
            wide = np.where(valid, (x64.astype(np.uint64) << nn.astype(np.uint64)).astype(np.int64), 0)
        else:
            fill = np.where(x64 < 0, -1, 0) if x.dtype.kind == "i" else 0
            wide = np.where(valid, x64 >> nn, fill)
        return wide.astype(x.dtype)  # wraps to the type's width, like the generated code


class Bitwise(Elementwise):
    """ONNX BitwiseAnd/Or/Xor on integers of up to 32 bits, bit by bit in int64 arithmetic."""

    fn = "and"

    def scalar(self, attrs: dict[str, Any], *args: T.Expr) -> T.Expr:
        a, b = args
        bits = _bits(a.dtype)
        if bits > 32:
            raise self.error(f"{a.dtype} operands are not supported (up to 32 bits)")

        def unsigned(v: T.Expr) -> T.Expr:
            v64 = T.cast("int64", v)
            return T.select(v64 < 0, v64 + (1 << bits), v64)

        ua, ub = unsigned(a), unsigned(b)
        acc: T.Expr = T.IntImm(0)
        for k in range(bits):
            ba, bb = (ua // (1 << k)) % 2, (ub // (1 << k)) % 2
            both = ba * bb
            bit = both if self.fn == "and" else (ba + bb - both if self.fn == "or" else ba + bb - both * 2)
            acc = acc + bit * (1 << k)
        return T.cast(a.dtype, acc)

    def numpy(self, attrs: dict[str, Any], *args: np.ndarray) -> np.ndarray:
        fn = {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[self.fn]
        return fn(*args)  # type: ignore[no-any-return]


class BitwiseAnd(Bitwise):
    name = "bitwise_and"


class BitwiseOr(Bitwise):
    name = "bitwise_or"
    fn = "or"


class BitwiseXor(Bitwise):
    name = "bitwise_xor"
    fn = "xor"


class BitwiseNot(Elementwise):
    """ONNX BitwiseNot: ``-x - 1`` in two's complement (``max - x`` for unsigned types)."""

    name = "bitwise_not"

    def scalar(self, attrs: dict[str, Any], *args: T.Expr) -> T.Expr:
        return T.cast(args[0].dtype, T.IntImm(-1) - T.cast("int64", args[0]))

    def numpy(self, attrs: dict[str, Any], *args: np.ndarray) -> np.ndarray:
        return np.bitwise_not(args[0])


for _op in (BitShift(), BitwiseAnd(), BitwiseOr(), BitwiseXor(), BitwiseNot()):
    register(_op)
