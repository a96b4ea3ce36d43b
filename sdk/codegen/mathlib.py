"""Math functions generated inline (no libm): exp, log, tanh, erf, sigmoid, sin/cos, floor/ceil/round, pow.

Each is an internal ``alwaysinline`` LLVM function built from arithmetic, bit casts and selects only, so
bare-metal targets need no math library. Every function exists for scalars and, on request, for vectors of any
length (``kiln_math_exp_v16`` for ``<16 x float>``): the same operations lane-wise, so a ``vectorized`` loop
calling one (:mod:`kiln.codegen.vectorize`) computes exactly what its scalar remainder does. Multiplies and
adds may contract into fused multiply-adds (as everywhere in kiln's code). Accuracy is within a few ulp of
float32 over the ranges neural networks use (checked against NumPy in tests).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

F32 = ir.FloatType()
I32 = ir.IntType(32)
I1 = ir.IntType(1)
_FP = ("contract",)
#: The functions :meth:`MathLib.call` knows (vector code may call each of them).
NAMES = ("floor", "ceil", "round", "exp", "log", "tanh", "sigmoid", "erf", "pow", "sin", "cos", "sqrt", "abs")

Body = Callable[[ir.IRBuilder, list[ir.Value], "_Typed"], ir.Value]


class MathLib:
    """Creates (once per module and vector length) and calls the inline math functions."""

    def __init__(self, module: ir.Module) -> None:
        self.module = module
        self.funcs: dict[tuple[str, int], ir.Function] = {}

    def call(self, b: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
        """``name(*args)`` on float scalars, or lane-wise on vectors of floats (all of one length)."""
        t = args[0].type
        lanes = t.count if isinstance(t, ir.VectorType) else 1
        if name in ("sqrt", "abs"):
            intr = {"sqrt": "llvm.sqrt", "abs": "llvm.fabs"}[name]
            if lanes == 1:
                return b.call(self.module.declare_intrinsic(intr, [F32]), args)
            full = f"{intr}.v{lanes}f32"  # llvmlite does not name vector overloads
            fn = self.module.globals.get(full) or ir.Function(self.module, ir.FunctionType(t, [t]), full)
            return b.call(fn, args)
        f = self.funcs.get((name, lanes))
        if f is None:
            f = self._define(name, len(args), lanes)
        return b.call(f, args)

    def _define(self, name: str, nargs: int, lanes: int) -> ir.Function:
        ty = _Typed(self, lanes)
        suffix = f"_v{lanes}" if lanes > 1 else ""
        fn = ir.Function(self.module, ir.FunctionType(ty.f, [ty.f] * nargs), f"kiln_math_{name}{suffix}")
        fn.linkage = "internal"
        fn.attributes.add("alwaysinline")
        fn.attributes.add("nounwind")
        self.funcs[(name, lanes)] = fn
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.ret(_BODIES[name](b, list(fn.args), ty))
        return fn


class _Typed:
    """What a body needs for one vector length (1: scalars): its float, int32 and bool types, constants
    (splat across the lanes), and calls of the other functions at the same length."""

    def __init__(self, lib: MathLib, lanes: int) -> None:
        self.lib = lib
        self.lanes = lanes
        self.f = F32 if lanes == 1 else ir.VectorType(F32, lanes)
        self.i = I32 if lanes == 1 else ir.VectorType(I32, lanes)
        self.b1 = I1 if lanes == 1 else ir.VectorType(I1, lanes)

    def c(self, v: float) -> ir.Constant:
        return ir.Constant(self.f, v if self.lanes == 1 else [v] * self.lanes)

    def k(self, v: int) -> ir.Constant:
        return ir.Constant(self.i, v if self.lanes == 1 else [v] * self.lanes)

    def call(self, b: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
        return self.lib.call(b, name, args)


def _add(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.fadd(x, y, flags=_FP)


def _sub(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.fsub(x, y, flags=_FP)


def _mul(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.fmul(x, y, flags=_FP)


def _select_lt(b: ir.IRBuilder, x: ir.Value, y: ir.Value, a: ir.Value, c: ir.Value) -> ir.Value:
    return b.select(b.fcmp_ordered("<", x, y), a, c)


def _clamp(b: ir.IRBuilder, x: ir.Value, lo: float, hi: float, m: _Typed) -> ir.Value:
    x = _select_lt(b, x, m.c(lo), m.c(lo), x)
    return _select_lt(b, m.c(hi), x, m.c(hi), x)


def _poly(b: ir.IRBuilder, x: ir.Value, coeffs: list[float], m: _Typed) -> ir.Value:
    """Horner: coeffs from the highest degree down."""
    acc: ir.Value = m.c(coeffs[0])
    for c in coeffs[1:]:
        acc = _add(b, _mul(b, acc, x), m.c(c))
    return acc


def _floor(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    x = args[0]
    t = b.sitofp(b.fptosi(_clamp(b, x, -8388608.0, 8388608.0, m), m.i), m.f)
    t = b.select(b.fcmp_ordered(">", t, x), _sub(b, t, m.c(1.0)), t)
    big = b.fcmp_ordered(">=", m.call(b, "abs", [x]), m.c(8388608.0))
    return b.select(big, x, t)


def _ceil(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    return b.fneg(_floor(b, [b.fneg(args[0])], m))


def _round(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    """Round half to even (ONNX Round, NumPy round)."""
    x = args[0]
    fl = _floor(b, [x], m)
    diff = _sub(b, x, fl)
    up = _add(b, fl, m.c(1.0))
    half = _floor(b, [_mul(b, fl, m.c(0.5))], m)
    fl_even = b.fcmp_ordered("==", _mul(b, half, m.c(2.0)), fl)
    at_half = b.select(fl_even, fl, up)
    r = b.select(b.fcmp_ordered("<", diff, m.c(0.5)), fl, up)
    return b.select(b.fcmp_ordered("==", diff, m.c(0.5)), at_half, r)


_ROUNDER = 12582912.0  # 1.5 * 2^23: adding it to |v| < 2^22 leaves round(v) in the low mantissa bits
_ROUNDER_BITS = 0x4B400000


def _exp(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    # exp(x) = 2^n * exp(r), x = n ln2 + r, n = round(x / ln2), |r| <= ln2/2; degree-6 polynomial for exp(r).
    x = _clamp(b, args[0], -87.33654, 88.72283, m)
    t = _add(b, _mul(b, x, m.c(1.4426950408889634)), m.c(_ROUNDER))
    n = _sub(b, t, m.c(_ROUNDER))  # exact: n is an integer in [-126, 128]
    r = _sub(b, _sub(b, x, _mul(b, n, m.c(0.693145751953125))), _mul(b, n, m.c(1.428606765330187e-06)))
    p = _poly(b, r, [1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0], m)
    # scale by 2^n in two steps so n = 128 (x near 88.7) does not overflow the exponent field
    n_i = b.sub(b.bitcast(t, m.i), m.k(_ROUNDER_BITS))
    h = b.ashr(n_i, m.k(1))
    s1 = b.bitcast(b.shl(b.add(h, m.k(127)), m.k(23)), m.f)
    s2 = b.bitcast(b.shl(b.add(b.sub(n_i, h), m.k(127)), m.k(23)), m.f)
    res = _mul(b, _mul(b, p, s1), s2)
    return b.select(b.fcmp_ordered("<=", args[0], m.c(-87.33654)), m.c(0.0), res)


def _log(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    # x = 2^e * f with f in [sqrt(1/2), sqrt(2)); log f via atanh series of s = (f-1)/(f+1).
    x = args[0]
    bits = b.bitcast(x, m.i)
    e = b.sub(b.ashr(bits, m.k(23)), m.k(127))
    f = b.bitcast(b.or_(b.and_(bits, m.k(0x007FFFFF)), m.k(0x3F800000)), m.f)
    big = b.fcmp_ordered(">", f, m.c(1.41421356))
    f = b.select(big, _mul(b, f, m.c(0.5)), f)
    e = b.select(big, b.add(e, m.k(1)), e)
    s = b.fdiv(_sub(b, f, m.c(1.0)), _add(b, f, m.c(1.0)))
    s2 = _mul(b, s, s)
    p = _poly(b, s2, [2 / 11, 2 / 9, 2 / 7, 2 / 5, 2 / 3, 2.0], m)
    res = _add(b, _mul(b, s, p), _mul(b, b.sitofp(e, m.f), m.c(0.6931471805599453)))
    res = b.select(b.fcmp_ordered("==", x, m.c(0.0)), m.c(float("-inf")), res)
    res = b.select(b.fcmp_ordered("<", x, m.c(0.0)), m.c(float("nan")), res)
    return b.select(b.fcmp_ordered("==", x, m.c(float("inf"))), x, res)


def _tanh(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    x = args[0]
    ax = m.call(b, "abs", [x])
    # 1 - 2/(exp(2|x|)+1), sign restored; odd polynomial near 0 for relative accuracy.
    t = _sub(b, m.c(1.0), b.fdiv(m.c(2.0), _add(b, m.call(b, "exp", [_mul(b, ax, m.c(2.0))]), m.c(1.0))))
    t = b.select(b.fcmp_ordered("<", x, m.c(0.0)), b.fneg(t), t)
    x2 = _mul(b, x, x)
    small = _mul(b, x, _poly(b, x2, [-17 / 315, 2 / 15, -1 / 3, 1.0], m))
    return b.select(b.fcmp_ordered("<", ax, m.c(0.0625)), small, t)


def _sigmoid(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    return b.fdiv(m.c(1.0), _add(b, m.c(1.0), m.call(b, "exp", [b.fneg(args[0])])))


def _erf(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd extension; Taylor series near 0.
    x = args[0]
    ax = m.call(b, "abs", [x])
    t = b.fdiv(m.c(1.0), _add(b, m.c(1.0), _mul(b, ax, m.c(0.3275911))))
    p = _mul(b, t, _poly(b, t, [1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592], m))
    y = _sub(b, m.c(1.0), _mul(b, p, m.call(b, "exp", [b.fneg(_mul(b, ax, ax))])))
    y = b.select(b.fcmp_ordered("<", x, m.c(0.0)), b.fneg(y), y)
    x2 = _mul(b, x, x)
    c = 1.1283791670955126  # 2/sqrt(pi): erf(x) = c (x - x^3/3 + x^5/10 - x^7/42 ...)
    small = _mul(b, x, _poly(b, x2, [-c / 42, c / 10, -c / 3, c], m))
    return b.select(b.fcmp_ordered("<", ax, m.c(0.01)), small, y)


def _pow(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    a, e = args
    # a^e = exp(e log|a|); negative a allowed for integral e (sign from the parity of e).
    r = m.call(b, "exp", [_mul(b, e, m.call(b, "log", [m.call(b, "abs", [a])]))])
    e_int = b.fptosi(_clamp(b, e, -16777216.0, 16777216.0, m), m.i)
    odd = b.trunc(e_int, m.b1)
    neg = b.fcmp_ordered("<", a, m.c(0.0))
    r = b.select(b.and_(neg, odd), b.fneg(r), r)
    r = b.select(b.fcmp_ordered("==", e, m.c(0.0)), m.c(1.0), r)
    return b.select(b.fcmp_ordered("==", e, m.c(1.0)), a, r)


def _sin_quadrant(b: ir.IRBuilder, x: ir.Value, shift: int, m: _Typed) -> ir.Value:
    """sin(x + shift * pi/2): x = k pi/2 + r with |r| <= pi/4 (Cody-Waite, pi/2 in three parts, accurate for
    |x| up to about 1e5), then the sine or cosine polynomial of r by the quadrant k + shift (mod 4)."""
    k = _floor(b, [b.fadd(b.fmul(x, m.c(0.6366197723675814)), m.c(0.5))], m)
    r = b.fsub(x, b.fmul(k, m.c(1.5703125)))
    r = b.fsub(r, b.fmul(k, m.c(4.837512969970703125e-4)))
    r = b.fsub(r, b.fmul(k, m.c(7.549789954891882e-8)))
    r2 = _mul(b, r, r)
    sin_r = _mul(b, r, _poly(b, r2, [1 / 362880, -1 / 5040, 1 / 120, -1 / 6, 1.0], m))
    cos_r = _poly(b, r2, [-1 / 3628800, 1 / 40320, -1 / 720, 1 / 24, -0.5, 1.0], m)
    q = b.add(b.fptosi(k, m.i), m.k(shift))
    odd = b.trunc(q, m.b1)  # quadrants 1 and 3: the cosine polynomial
    neg = b.icmp_signed("!=", b.and_(q, m.k(2)), m.k(0))  # quadrants 2 and 3
    v = b.select(odd, cos_r, sin_r)
    return b.select(neg, b.fneg(v), v)


def _sin(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    return _sin_quadrant(b, args[0], 0, m)


def _cos(b: ir.IRBuilder, args: list[ir.Value], m: _Typed) -> ir.Value:
    return _sin_quadrant(b, args[0], 1, m)


_BODIES: dict[str, Body] = {
    "floor": _floor,
    "ceil": _ceil,
    "round": _round,
    "exp": _exp,
    "log": _log,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "erf": _erf,
    "pow": _pow,
    "sin": _sin,
    "cos": _cos,
}
