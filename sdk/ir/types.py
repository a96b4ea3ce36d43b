"""Element types, symbolic dimensions and tensor types shared by graph-level and tensor-level IR."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..runtime_c import abi


def _abi_dtypes(*names: str) -> dict[str, np.dtype]:
    """NumPy dtypes for element types named as in the ABI; a name the ABI does not have, or a size that
    differs from the ABI's, fails at import, so the two tables cannot drift."""
    out: dict[str, np.dtype] = {}
    for name in names:
        if name not in abi.DTYPES or abi.dtype_bytes(name) != np.dtype(name).itemsize:
            raise TypeError(f"dtype {name!r} is not an element type of kiln.runtime_c.abi.DTYPES")
        out[name] = np.dtype(name)
    return out


#: The element types the compiler handles and their NumPy equivalents: a subset of the ABI's
#: (:data:`kiln.runtime_c.abi.DTYPES` also lists types that only pass through, such as ``bfloat16``, which has
#: no NumPy dtype). One table, used everywhere.
DTYPES: dict[str, np.dtype] = _abi_dtypes(
    "float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"
)


def dtype_of(arr: np.ndarray | np.dtype) -> str:
    """The kiln dtype name of a NumPy array or dtype."""
    dt = arr.dtype if isinstance(arr, np.ndarray) else np.dtype(arr)
    if dt.kind == "O":  # a tensor of dimensions, some of them symbolic (shape arithmetic at import)
        return "int64"
    for name, npdt in DTYPES.items():
        if npdt == dt:
            return name
    raise TypeError(f"unsupported element type {dt}; kiln supports {', '.join(DTYPES)}")


def np_dtype(dtype: str) -> np.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise TypeError(f"unknown dtype {dtype!r}; kiln supports {', '.join(DTYPES)}") from None


def itemsize(dtype: str) -> int:
    return int(np_dtype(dtype).itemsize)


def is_float(dtype: str) -> bool:
    return dtype.startswith("float")


# A symbolic dimension is a polynomial with integer coefficients over atoms: a named size (``"seq"``) or a
# floor division / remainder of another symbolic dimension by a positive integer (a convolution's output size).
# Monomials are sorted tuples of atoms; the constant term has the empty monomial.
_Atom = str | tuple[str, "Sym", int]
_Poly = dict[tuple[_Atom, ...], int]


def _atom_key(a: _Atom) -> str:
    return a if isinstance(a, str) else f"({a[1].name}){a[0]}{a[2]}"


@dataclass(frozen=True, order=True)
class Sym:
    """A symbolic dimension: a named size (``Sym("seq")``, a dynamic batch size or sequence length) or an
    expression of named sizes (``seq * 4``, ``(H - 1) // 2 + 1``), made with Python arithmetic on ints and
    Syms. Expressions are kept in a normal form (a polynomial), so equal sizes built in different ways
    compare equal by name; a result that is a number is a plain ``int``."""

    name: str
    terms: tuple[tuple[tuple[_Atom, ...], int], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.terms:
            object.__setattr__(self, "terms", (((self.name,), 1),))

    def __str__(self) -> str:
        return self.name

    # ---- arithmetic (dims are sizes: ints >= 0)
    def _poly(self) -> _Poly:
        return dict(self.terms)

    def __add__(self, o: Dim) -> Dim:
        return _make(_padd(self._poly(), _as_poly(o)))

    __radd__ = __add__

    def __sub__(self, o: Dim) -> Dim:
        return _make(_padd(self._poly(), _pscale(_as_poly(o), -1)))

    def __rsub__(self, o: Dim) -> Dim:
        return _make(_padd(_as_poly(o), _pscale(self._poly(), -1)))

    def __mul__(self, o: Dim) -> Dim:
        return _make(_pmul(self._poly(), _as_poly(o)))

    __rmul__ = __mul__

    def __floordiv__(self, o: Dim) -> Dim:
        return _divide(self, o, "//")

    def __mod__(self, o: Dim) -> Dim:
        return _divide(self, o, "%")

    def __rfloordiv__(self, o: int) -> Dim:
        if o == 0:
            return 0
        raise TypeError(f"cannot divide {o} by symbolic dimension {self}")

    def __rmod__(self, o: int) -> Dim:
        if o == 0:
            return 0
        raise TypeError(f"cannot divide {o} by symbolic dimension {self}")

    def __neg__(self) -> Dim:
        return _make(_pscale(self._poly(), -1))

    def atoms(self) -> set[str]:
        """The named sizes this dimension depends on."""
        out: set[str] = set()
        for mono, _ in self.terms:
            for a in mono:
                out |= {a} if isinstance(a, str) else a[1].atoms()
        return out

    def evaluate(self, env: dict[str, int]) -> int:
        """The size for named sizes ``env`` (a :class:`KeyError` names a missing one)."""
        total = 0
        for mono, coeff in self.terms:
            v = coeff
            for a in mono:
                if isinstance(a, str):
                    v *= env[a]
                else:
                    x = a[1].evaluate(env)
                    v *= x // a[2] if a[0] == "//" else x % a[2]
            total += v
        return total


def _as_poly(o: Dim) -> _Poly:
    if isinstance(o, Sym):
        return o._poly()
    if isinstance(o, (int, np.integer)) and not isinstance(o, bool):
        return {(): int(o)} if o else {}
    return NotImplemented  # type: ignore[return-value]


def _padd(a: _Poly, b: _Poly) -> _Poly:
    if b is NotImplemented:
        raise TypeError("a symbolic dimension combines only with ints and symbolic dimensions")
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + c
    return out


def _pscale(a: _Poly, k: int) -> _Poly:
    return {m: c * k for m, c in a.items()}


def _pmul(a: _Poly, b: _Poly) -> _Poly:
    if b is NotImplemented:
        raise TypeError("a symbolic dimension combines only with ints and symbolic dimensions")
    out: _Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb, key=_atom_key))
            out[m] = out.get(m, 0) + ca * cb
    return out


def _poly_str(p: _Poly) -> str:
    parts = []
    for mono, c in sorted(p.items(), key=lambda mc: (len(mc[0]) == 0, [_atom_key(a) for a in mc[0]])):
        names = [a if isinstance(a, str) else f"({a[1].name}){a[0]}{a[2]}" for a in mono]
        term = "*".join(([str(abs(c))] if abs(c) != 1 or not names else []) + names)
        parts.append(("-" if c < 0 else "+") + term)
    s = "".join(parts)
    return s[1:] if s.startswith("+") else s


def _make(p: _Poly) -> Dim:
    p = {m: c for m, c in p.items() if c}
    if not p:
        return 0
    if set(p) == {()}:
        return p[()]
    if len(p) == 1:
        ((mono, c),) = p.items()
        if c == 1 and len(mono) == 1 and isinstance(mono[0], str):
            return Sym(mono[0])
    items = tuple(sorted(p.items(), key=lambda mc: [_atom_key(a) for a in mc[0]]))
    return Sym(_poly_str(p), items)


def _divide(s: Sym, o: Dim, op: str) -> Dim:
    """``s // o`` or ``s % o``: exact when every coefficient (or every monomial) divides, else a new atom."""
    p = s._poly()
    if isinstance(o, Sym):
        den = o._poly()
        if len(den) == 1:
            ((dm, dc),) = den.items()
            if dc > 0 and all(
                c % dc == 0 and all(m.count(a) >= dm.count(a) for a in dm) for m, c in p.items()
            ):
                if op == "%":
                    return 0
                q: _Poly = {}
                for m, c in p.items():
                    rest = list(m)
                    for a in dm:
                        rest.remove(a)
                    q[tuple(rest)] = c // dc
                return _make(q)
        raise TypeError(f"cannot divide symbolic dimension {s} by {o}")
    if not isinstance(o, (int, np.integer)) or o <= 0:
        raise TypeError(f"cannot divide symbolic dimension {s} by {o!r}")
    k = int(o)
    if k == 1:
        return 0 if op == "%" else s
    if all(c % k == 0 for c in p.values()):
        return 0 if op == "%" else _make({m: c // k for m, c in p.items()})
    return _make({((op, s, k),): 1})


def bound_of(d: Dim, bounds: dict[str, int]) -> int:
    """The largest value of dimension ``d`` when each named size is at most its bound (dims grow with the
    sizes they are made of)."""
    return d if isinstance(d, int) else max(d.evaluate(bounds), 0)


Dim = int | Sym


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape; dimensions are ints or :class:`Sym`."""

    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        np_dtype(self.dtype)
        for d in self.shape:
            if not isinstance(d, (int, Sym)) or (isinstance(d, int) and d < 0):
                raise TypeError(f"invalid dimension {d!r} in shape {self.shape}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise ValueError(f"shape {self} has symbolic dimensions; bind them to sizes before compiling")
        return tuple(int(d) for d in self.shape)  # type: ignore[arg-type]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.static_shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def shape_str(shape: tuple[Dim, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def bound_type(t: TensorType, bounds: dict[str, int]) -> TensorType:
    """``t`` at the largest sizes its run-time dimensions may take (:func:`bound_of`): what memory is planned
    for."""
    return t if t.is_static else TensorType(tuple(bound_of(d, bounds) for d in t.shape), t.dtype)
