"""Elementwise operators: one small definition each (per-element expression + NumPy meaning).

Binary ones broadcast like NumPy. All share the loop nest in :class:`~kiln.ops.base.Elementwise`, and all can
be fused into a producer's epilogue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ir import tensor as T
from ..ir.types import TensorType
from .base import Elementwise, nan_max, nan_min, register

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _unary(
    name: str,
    scalar: Callable[[dict[str, Any], T.Expr], T.Expr],
    numpy: Callable[[dict[str, Any], np.ndarray], np.ndarray],
) -> None:
    op = type(
        f"Op_{name}",
        (Elementwise,),
        {
            "name": name,
            "scalar": lambda self, attrs, x: scalar(attrs, x),
            "numpy": lambda self, attrs, x: numpy(attrs, x),
        },
    )
    register(op())


def _binary(
    name: str,
    scalar: Callable[[T.Expr, T.Expr], T.Expr],
    numpy: Callable[[np.ndarray, np.ndarray], np.ndarray],
    out_dtype: str | None = None,
) -> None:
    op = type(
        f"Op_{name}",
        (Elementwise,),
        {
            "name": name,
            "out_dtype": out_dtype,
            "scalar": lambda self, attrs, a, b: scalar(a, b),
            "numpy": lambda self, attrs, a, b: numpy(a, b),
        },
    )
    register(op())


def _f(attrs: dict[str, Any], key: str, default: float) -> float:
    return float(attrs.get(key, default))


# --- arithmetic
_binary("add", lambda a, b: a + b, np.add)
_binary("sub", lambda a, b: a - b, np.subtract)
_binary("mul", lambda a, b: a * b, np.multiply)
_binary(
    "div",
    lambda a, b: a / b if a.dtype.startswith("float") else a // b,
    lambda a, b: a / b if a.dtype.kind == "f" else np.trunc(a / b).astype(a.dtype),
)
_binary("pow", lambda a, b: T.Call("pow", (a, T.cast(a.dtype, b)), a.dtype), np.power)  # any exponent dtype
_binary("maximum", nan_max, np.maximum)  # NaN-propagating, like np.maximum
_binary("minimum", nan_min, np.minimum)
# --- comparisons (bool result)
_binary("equal", lambda a, b: a.eq(b), np.equal, "bool")
_binary("less", lambda a, b: a < b, np.less, "bool")
_binary("greater", lambda a, b: a > b, np.greater, "bool")
_binary("less_equal", lambda a, b: a <= b, np.less_equal, "bool")
_binary("greater_equal", lambda a, b: a >= b, np.greater_equal, "bool")
# --- logic (bool in, bool out)
_binary("and", lambda a, b: T.logical_and(a, b), np.logical_and, "bool")
_binary("or", lambda a, b: T.BinOp("or", a, b), np.logical_or, "bool")
_binary("xor", lambda a, b: a.ne(b), np.logical_xor, "bool")
_unary("not", lambda at, x: x.eq(False), lambda at, x: np.logical_not(x))

# --- activations and math
_unary("relu", lambda at, x: nan_max(x, T.const(0, x.dtype)), lambda at, x: np.maximum(x, 0))
_unary("neg", lambda at, x: -x, lambda at, x: -x)
_unary("abs", lambda at, x: T.call("abs", x), lambda at, x: np.abs(x))
_unary("exp", lambda at, x: T.call("exp", x), lambda at, x: np.exp(x))
_unary("log", lambda at, x: T.call("log", x), lambda at, x: np.log(x))
_unary("sqrt", lambda at, x: T.call("sqrt", x), lambda at, x: np.sqrt(x))
_unary("tanh", lambda at, x: T.call("tanh", x), lambda at, x: np.tanh(x))
_unary("erf", lambda at, x: T.call("erf", x), lambda at, x: _erf(x))
_unary("floor", lambda at, x: T.call("floor", x), lambda at, x: np.floor(x))
_unary("ceil", lambda at, x: T.call("ceil", x), lambda at, x: np.ceil(x))
_unary("reciprocal", lambda at, x: T.const(1.0, x.dtype) / x, lambda at, x: 1.0 / x)
_unary("sigmoid", lambda at, x: T.call("sigmoid", x), lambda at, x: 1.0 / (1.0 + np.exp(-x)))
_unary("identity", lambda at, x: x, lambda at, x: x)
_unary("round", lambda at, x: T.call("round", x), lambda at, x: np.round(x))  # halves to even, like ONNX
_unary("sin", lambda at, x: T.call("sin", x), lambda at, x: np.sin(x))
_unary("cos", lambda at, x: T.call("cos", x), lambda at, x: np.cos(x))
_unary(
    "sign",
    lambda at, x: T.select(
        x > T.const(0, x.dtype),
        T.const(1, x.dtype),
        T.select(x < T.const(0, x.dtype), T.const(-1, x.dtype), T.const(0, x.dtype)),
    ),
    lambda at, x: np.sign(x),
)
_unary(
    "clip",
    lambda at, x: nan_min(
        nan_max(x, T.const(_f(at, "min", -math.inf), x.dtype)), T.const(_f(at, "max", math.inf), x.dtype)
    ),
    lambda at, x: np.clip(x, _f(at, "min", -math.inf), _f(at, "max", math.inf)),
)
_unary(
    "leaky_relu",
    lambda at, x: T.select(x > T.const(0.0, x.dtype), x, x * _f(at, "alpha", 0.01)),
    lambda at, x: np.where(x > 0, x, x * _f(at, "alpha", 0.01)),
)
_unary(
    "hard_sigmoid",
    lambda at, x: T.minimum(
        T.maximum(x * _f(at, "alpha", 0.2) + _f(at, "beta", 0.5), T.const(0.0, x.dtype)),
        T.const(1.0, x.dtype),
    ),
    lambda at, x: np.clip(x * _f(at, "alpha", 0.2) + _f(at, "beta", 0.5), 0, 1),
)
_unary(
    "hard_swish",
    lambda at, x: x * T.minimum(T.maximum(x * (1 / 6) + 0.5, T.const(0.0, x.dtype)), T.const(1.0, x.dtype)),
    lambda at, x: x * np.clip(x / 6 + 0.5, 0, 1),
)
# softplus = log(1 + exp(x)), in the overflow-free form max(x, 0) + log(1 + exp(-|x|))
_unary(
    "softplus",
    lambda at, x: T.maximum(x, T.const(0.0, x.dtype)) + T.call("log", T.call("exp", -T.call("abs", x)) + 1.0),
    lambda at, x: np.logaddexp(0, x),
)
_unary("softsign", lambda at, x: x / (T.call("abs", x) + 1.0), lambda at, x: x / (1 + np.abs(x)))
# elu: x if x > 0 else alpha * (exp(x) - 1); selu: gamma * (x if x > 0 else alpha * (exp(x) - 1))
_unary(
    "elu",
    lambda at, x: T.select(x > T.const(0.0, x.dtype), x, (T.call("exp", x) - 1.0) * _f(at, "alpha", 1.0)),
    lambda at, x: np.where(x > 0, x, _f(at, "alpha", 1.0) * np.expm1(np.minimum(x, 0))),
)
_SELU_ALPHA, _SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875
_unary(
    "selu",
    lambda at, x: (
        T.select(x > T.const(0.0, x.dtype), x, (T.call("exp", x) - 1.0) * _f(at, "alpha", _SELU_ALPHA))
        * _f(at, "gamma", _SELU_GAMMA)
    ),
    lambda at, x: (
        _f(at, "gamma", _SELU_GAMMA)
        * np.where(x > 0, x, _f(at, "alpha", _SELU_ALPHA) * np.expm1(np.minimum(x, 0)))
    ),
)
# prelu: x if x >= 0 else slope * x (slope broadcasts against x)
_binary(
    "prelu",
    lambda x, k: T.select(x < T.const(0.0, x.dtype), x * k, x),
    lambda x, k: np.where(x < 0, x * k, x),
)
# GELU, exact (erf) form; approximate="tanh" selects the tanh form.
_SQRT1_2 = 1 / math.sqrt(2)
_unary(
    "gelu",
    lambda at, x: (
        x * 0.5 * (T.call("tanh", (x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)) + 1.0)
        if at.get("approximate", "none") == "tanh"
        else x * 0.5 * (T.call("erf", x * _SQRT1_2) + 1.0)
    ),
    lambda at, x: (
        x * 0.5 * (np.tanh((x + 0.044715 * x**3) * math.sqrt(2 / math.pi)) + 1)
        if at.get("approximate", "none") == "tanh"
        else x * 0.5 * (_erf(x * _SQRT1_2) + 1)
    ),
)


class Cast(Elementwise):
    """``out = x.astype(attrs["to"])`` (float to int truncates toward zero, like C and NumPy)."""

    name = "cast"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        t = super().infer(inputs, attrs)[0]
        return [TensorType(t.shape, attrs["to"])]

    def scalar(self, attrs: dict[str, Any], *args: T.Expr) -> T.Expr:
        return T.cast(attrs["to"], args[0])

    def numpy(self, attrs: dict[str, Any], *args: np.ndarray) -> np.ndarray:
        return args[0]


class Mod(Elementwise):
    """ONNX Mod. ``fmod=0`` (default): the remainder takes the divisor's sign (Python's ``%``, integers);
    ``fmod=1``: it takes the dividend's sign (C's ``fmod``; required by ONNX for floats)."""

    name = "mod"

    def scalar(self, attrs: dict[str, Any], *args: T.Expr) -> T.Expr:
        a, b = args
        r = a % b  # C semantics (srem / frem)
        if int(attrs.get("fmod", 0)):
            return r
        zero = T.const(0, a.dtype)  # floats too: frem, then the sign fix-up (exact, and x mod inf is right)
        return T.select(T.logical_and(r.ne(zero), (r < zero).ne(b < zero)), r + b, r)

    def numpy(self, attrs: dict[str, Any], *args: np.ndarray) -> np.ndarray:
        return np.fmod(*args) if int(attrs.get("fmod", 0)) else np.mod(*args)


class Where(Elementwise):
    """``out = cond ? a : b`` with broadcasting."""

    name = "where"

    def infer(self, inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        t = super().infer(inputs, attrs)[0]
        return [TensorType(t.shape, inputs[1].dtype)]

    def scalar(self, attrs: dict[str, Any], *args: T.Expr) -> T.Expr:
        c, a, b = args
        return T.Select(c if c.dtype == "bool" else c.ne(T.const(0, c.dtype)), a, b)

    def numpy(self, attrs: dict[str, Any], *args: np.ndarray) -> np.ndarray:
        return np.where(args[0], args[1], args[2])


register(Cast())
register(Mod())
register(Where())
