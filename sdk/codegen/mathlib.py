"""Math functions generated inline (no libm): exp, log, tanh, erf, sigmoid, sin/cos, floor/ceil/round, pow.

Each is an internal ``alwaysinline`` LLVM function built from arithmetic, bit casts and selects only, so the
loop vectorizer can vectorize loops that call them and bare-metal targets need no math library. Accuracy is
within a few ulp of float32 over the ranges neural networks use (checked against NumPy in tests).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

F32 = ir.FloatType()
I32 = ir.IntType(32)
I1 = ir.IntType(1)

Body = Callable[[ir.IRBuilder, list[ir.Value], "MathLib"], ir.Value]


def _c(v: float) -> ir.Constant:
    return ir.Constant(F32, v)


class MathLib:
    """Creates (once per module) and calls the inline math functions."""

    def __init__(self, module: ir.Module) -> None:
        self.module = module
        self.funcs: dict[str, ir.Function] = {}

    def call(self, b: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
        if name in ("sqrt", "abs"):
            intr = {"sqrt": "llvm.sqrt", "abs": "llvm.fabs"}[name]
            fn = self.module.declare_intrinsic(intr, [F32])
            return b.call(fn, args)
        f = self.funcs.get(name)
        if f is None:
            f = self._define(name, len(args), _BODIES[name])
        return b.call(f, args)

    def _define(self, name: str, nargs: int, body: Body) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(F32, [F32] * nargs), f"kiln_math_{name}")
        fn.linkage = "internal"
        fn.attributes.add("alwaysinline")
        fn.attributes.add("nounwind")
        self.funcs[name] = fn
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.ret(body(b, list(fn.args), self))
        return fn


def _select_lt(b: ir.IRBuilder, x: ir.Value, y: ir.Value, a: ir.Value, c: ir.Value) -> ir.Value:
    return b.select(b.fcmp_ordered("<", x, y), a, c)


def _clamp(b: ir.IRBuilder, x: ir.Value, lo: float, hi: float) -> ir.Value:
    x = _select_lt(b, x, _c(lo), _c(lo), x)
    return _select_lt(b, _c(hi), x, _c(hi), x)


def _poly(b: ir.IRBuilder, x: ir.Value, coeffs: list[float]) -> ir.Value:
    """Horner: coeffs from the highest degree down."""
    acc: ir.Value = _c(coeffs[0])
    for c in coeffs[1:]:
        acc = b.fadd(b.fmul(acc, x), _c(c))
    return acc


def _floor(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    x = args[0]
    t = b.sitofp(b.fptosi(_clamp(b, x, -8388608.0, 8388608.0), I32), F32)
    t = b.select(b.fcmp_ordered(">", t, x), b.fsub(t, _c(1.0)), t)
    big = b.fcmp_ordered(">=", m.call(b, "abs", [x]), _c(8388608.0))
    return b.select(big, x, t)


def _ceil(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    return b.fneg(_floor(b, [b.fneg(args[0])], m))


def _round(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    """Round half to even (ONNX Round, NumPy round)."""
    x = args[0]
    fl = _floor(b, [x], m)
    diff = b.fsub(x, fl)
    up = b.fadd(fl, _c(1.0))
    half = _floor(b, [b.fmul(fl, _c(0.5))], m)
    fl_even = b.fcmp_ordered("==", b.fmul(half, _c(2.0)), fl)
    at_half = b.select(fl_even, fl, up)
    r = b.select(b.fcmp_ordered("<", diff, _c(0.5)), fl, up)
    return b.select(b.fcmp_ordered("==", diff, _c(0.5)), at_half, r)


def _exp(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    # exp(x) = 2^n * exp(r), x = n ln2 + r, |r| <= ln2/2; degree-6 polynomial for exp(r).
    x = _clamp(b, args[0], -87.33654, 88.72283)
    n = _floor(b, [b.fadd(b.fmul(x, _c(1.4426950408889634)), _c(0.5))], m)
    r = b.fsub(b.fsub(x, b.fmul(n, _c(0.693145751953125))), b.fmul(n, _c(1.428606765330187e-06)))
    p = _poly(b, r, [1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0])
    # scale by 2^n in two steps so n = 128 (x near 88.7) does not overflow the exponent field
    n_i = b.fptosi(n, I32)
    h = b.ashr(n_i, ir.Constant(I32, 1))
    s1 = b.bitcast(b.shl(b.add(h, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)
    s2 = b.bitcast(b.shl(b.add(b.sub(n_i, h), ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)
    res = b.fmul(b.fmul(p, s1), s2)
    return b.select(b.fcmp_ordered("<=", args[0], _c(-87.33654)), _c(0.0), res)


def _log(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    # x = 2^e * f with f in [sqrt(1/2), sqrt(2)); log f via atanh series of s = (f-1)/(f+1).
    x = args[0]
    bits = b.bitcast(x, I32)
    e = b.sub(b.ashr(bits, ir.Constant(I32, 23)), ir.Constant(I32, 127))
    f = b.bitcast(b.or_(b.and_(bits, ir.Constant(I32, 0x007FFFFF)), ir.Constant(I32, 0x3F800000)), F32)
    big = b.fcmp_ordered(">", f, _c(1.41421356))
    f = b.select(big, b.fmul(f, _c(0.5)), f)
    e = b.select(big, b.add(e, ir.Constant(I32, 1)), e)
    s = b.fdiv(b.fsub(f, _c(1.0)), b.fadd(f, _c(1.0)))
    s2 = b.fmul(s, s)
    p = _poly(b, s2, [2 / 11, 2 / 9, 2 / 7, 2 / 5, 2 / 3, 2.0])
    res = b.fadd(b.fmul(s, p), b.fmul(b.sitofp(e, F32), _c(0.6931471805599453)))
    res = b.select(b.fcmp_ordered("==", x, _c(0.0)), _c(float("-inf")), res)
    res = b.select(b.fcmp_ordered("<", x, _c(0.0)), _c(float("nan")), res)
    return b.select(b.fcmp_ordered("==", x, _c(float("inf"))), x, res)


def _tanh(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    x = args[0]
    ax = m.call(b, "abs", [x])
    # 1 - 2/(exp(2|x|)+1), sign restored; odd polynomial near 0 for relative accuracy.
    t = b.fsub(_c(1.0), b.fdiv(_c(2.0), b.fadd(m.call(b, "exp", [b.fmul(ax, _c(2.0))]), _c(1.0))))
    t = b.select(b.fcmp_ordered("<", x, _c(0.0)), b.fneg(t), t)
    x2 = b.fmul(x, x)
    small = b.fmul(x, _poly(b, x2, [-17 / 315, 2 / 15, -1 / 3, 1.0]))
    return b.select(b.fcmp_ordered("<", ax, _c(0.0625)), small, t)


def _sigmoid(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    return b.fdiv(_c(1.0), b.fadd(_c(1.0), m.call(b, "exp", [b.fneg(args[0])])))


def _erf(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd extension; Taylor series near 0.
    x = args[0]
    ax = m.call(b, "abs", [x])
    t = b.fdiv(_c(1.0), b.fadd(_c(1.0), b.fmul(ax, _c(0.3275911))))
    p = b.fmul(t, _poly(b, t, [1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592]))
    y = b.fsub(_c(1.0), b.fmul(p, m.call(b, "exp", [b.fneg(b.fmul(ax, ax))])))
    y = b.select(b.fcmp_ordered("<", x, _c(0.0)), b.fneg(y), y)
    x2 = b.fmul(x, x)
    c = 1.1283791670955126  # 2/sqrt(pi): erf(x) = c (x - x^3/3 + x^5/10 - x^7/42 ...)
    small = b.fmul(x, _poly(b, x2, [-c / 42, c / 10, -c / 3, c]))
    return b.select(b.fcmp_ordered("<", ax, _c(0.01)), small, y)


def _pow(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    a, e = args
    # a^e = exp(e log|a|); negative a allowed for integral e (sign from the parity of e).
    r = m.call(b, "exp", [b.fmul(e, m.call(b, "log", [m.call(b, "abs", [a])]))])
    e_int = b.fptosi(_clamp(b, e, -16777216.0, 16777216.0), I32)
    odd = b.trunc(e_int, I1)
    neg = b.fcmp_ordered("<", a, _c(0.0))
    r = b.select(b.and_(neg, odd), b.fneg(r), r)
    r = b.select(b.fcmp_ordered("==", e, _c(0.0)), _c(1.0), r)
    return b.select(b.fcmp_ordered("==", e, _c(1.0)), a, r)


def _sin_quadrant(b: ir.IRBuilder, x: ir.Value, shift: int, m: MathLib) -> ir.Value:
    """sin(x + shift * pi/2): x = k pi/2 + r with |r| <= pi/4 (Cody-Waite, pi/2 in three parts, accurate for
    |x| up to about 1e5), then the sine or cosine polynomial of r by the quadrant k + shift (mod 4)."""
    k = _floor(b, [b.fadd(b.fmul(x, _c(0.6366197723675814)), _c(0.5))], m)
    r = b.fsub(x, b.fmul(k, _c(1.5703125)))
    r = b.fsub(r, b.fmul(k, _c(4.837512969970703125e-4)))
    r = b.fsub(r, b.fmul(k, _c(7.549789954891882e-8)))
    r2 = b.fmul(r, r)
    sin_r = b.fmul(r, _poly(b, r2, [1 / 362880, -1 / 5040, 1 / 120, -1 / 6, 1.0]))
    cos_r = _poly(b, r2, [-1 / 3628800, 1 / 40320, -1 / 720, 1 / 24, -0.5, 1.0])
    q = b.add(b.fptosi(k, I32), ir.Constant(I32, shift))
    odd = b.trunc(q, I1)  # quadrants 1 and 3: the cosine polynomial
    neg = b.icmp_signed("!=", b.and_(q, ir.Constant(I32, 2)), ir.Constant(I32, 0))  # quadrants 2 and 3
    v = b.select(odd, cos_r, sin_r)
    return b.select(neg, b.fneg(v), v)


def _sin(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
    return _sin_quadrant(b, args[0], 0, m)


def _cos(b: ir.IRBuilder, args: list[ir.Value], m: MathLib) -> ir.Value:
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
