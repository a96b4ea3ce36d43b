"""The text form of the IR: readable, deterministic, and parsed back by :func:`kiln.ir.parser.parse_module`
into an equal module (:func:`kiln.ir.equality.structural_equal`). docs/topics/ir.md describes the syntax.

A module's text is its constants (``const @w: float32[2, 3] = ...``), its functions in order, blank-line
separated, then its attributes (``attr memory_plan = {...}``). Constant data is printed according to
``constants``:

* ``"inline"``: every constant's data is in the text (small ones as nested lists of numbers, written as the
  shortest decimal that reads back to the same value of the element type; larger ones as the base64 of their
  little-endian bytes), so the text alone parses back;
* ``"elided"``: each constant is ``elided('<hash>')``, its hash a key into :func:`constant_table` (the side
  table to give the parser);
* ``"auto"`` (the default, what ``str(module)`` prints): small constants inline as lists, the others elided.

Names are printed as they are. Where two distinct values of one scope share a name, later ones are printed
``%name~1``, ``%name~2`` (the suffix is not part of the name: it only tells the values apart), so duplicate
names survive a round trip; names that are not plain identifiers are quoted (``%"/conv/Conv_output_0"``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .extern import ExternSource
from .graph import Constant, GraphFunction, Node, Value, Var
from .tensor import (
    Allocate,
    BinOp,
    Buffer,
    Call,
    Cast,
    Expr,
    FloatImm,
    For,
    IfThenElse,
    IntImm,
    Load,
    LoopVar,
    Select,
    Seq,
    Stmt,
    Store,
    TensorFunction,
    const,
)
from .types import DTYPES, Sym, TensorType, dtype_of

#: Records (dataclasses) the parser builds by their short name (:func:`kiln.ir.parser.register_record`);
#: other dataclasses print with their qualified name (``kiln.targets.Target(...)``), which the parser resolves
#: among loaded ``kiln`` modules.
RECORDS: dict[str, type] = {"ExternSource": ExternSource, "Sym": Sym}

#: How constant data is printed (see the module docstring).
CONSTANT_MODES = ("auto", "inline", "elided")
#: ``auto`` prints constants of at most this many elements inline.
INLINE_MAX = 16
#: ``inline`` prints constants of more than this many elements as base64 bytes instead of a list.
LIST_MAX = 256

_BARE_SIGIL = re.compile(r"[A-Za-z0-9_.]+\Z")  # after % or @
_BARE_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Words that a tensor-level name (buffer, loop variable) or an attribute key cannot be bare.
RESERVED = frozenset(
    {"and", "or", "for", "in", "if", "else", "pass", "return", "inf", "nan", "True", "False", "None", "alloc"}
)
_SIMPLE_OP = re.compile(r"[A-Za-z0-9_.]+\Z")


# ------------------------------------------------------------------------------------------------------- names
def quote(s: str) -> str:
    """``s`` as a string literal the parser reads back (Python's syntax, always double-quoted-safe)."""
    return repr(s)


def sigil_name(sigil: str, name: str, n: int = 0) -> str:
    body = name if _BARE_SIGIL.match(name) else quote(name)
    return f"{sigil}{body}{f'~{n}' if n else ''}"


def ident_name(name: str, n: int = 0) -> str:
    body = name if _BARE_IDENT.match(name) and name not in RESERVED else quote(name)
    return f"{body}{f'~{n}' if n else ''}"


class _Namer:
    """Printed names of the values of one scope: the name, with ``~k`` for later distinct values of the same
    name. Keyed by the object's uid; ``scoped`` pushes a lexical scope (tensor-level bindings)."""

    def __init__(self, fmt: Callable[[str, int], str]) -> None:
        self.fmt = fmt
        self.scopes: list[dict[int, str]] = [{}]
        self.taken: list[set[tuple[str, int]]] = [set()]
        self.objs: dict[int, Any] = {}  # uid -> the object bound (a buffer's declaration)

    def _visible(self) -> set[tuple[str, int]]:
        return set().union(*self.taken)

    def bind(self, uid: int, name: str, obj: Any = None) -> str:
        self.objs[uid] = obj
        visible = self._visible()
        k = 0
        while (name, k) in visible:
            k += 1
        self.taken[-1].add((name, k))
        text = self.fmt(name, k)
        self.scopes[-1][uid] = text
        return text

    def get(self, uid: int, name: str) -> str:
        for scope in reversed(self.scopes):
            if uid in scope:
                return scope[uid]
        return self.fmt(name, 0)  # unbound (invalid IR): the plain name

    def push(self) -> None:
        self.scopes.append({})
        self.taken.append(set())

    def pop(self) -> None:
        self.scopes.pop()
        self.taken.pop()


# ------------------------------------------------------------------------------------------------- constants
def data_hash(a: np.ndarray) -> str:
    """The key of an array in a constant table: a digest of its dtype, shape and bytes (16 hex digits)."""
    a = np.asarray(a)  # (not ascontiguousarray: it makes a 0-d array 1-d)
    h = hashlib.sha256()
    h.update(f"{dtype_of(a)}{list(a.shape)}".encode())
    h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())  # C order
    return h.hexdigest()[:16]


def _scalar(x: Any, dtype: str) -> str:
    if dtype == "bool":
        return "True" if x else "False"
    if dtype.startswith("float"):
        return str(DTYPES[dtype].type(x))  # the shortest text that reads back to this value of the type
    return str(int(x))


def _nested(a: np.ndarray, dtype: str) -> str:
    if a.ndim == 0:
        return _scalar(a[()], dtype)
    return "[" + ", ".join(_nested(x, dtype) for x in a) + "]"


def print_data(a: np.ndarray, mode: str = "inline") -> str:
    """An array's data as the parser reads it: a nested list, ``base64('...')`` or ``elided('<hash>')``."""
    if mode not in CONSTANT_MODES:
        raise ValueError(f"constants must be one of {CONSTANT_MODES}, got {mode!r}")
    dtype = dtype_of(a)
    if mode == "elided" or (mode == "auto" and a.size > INLINE_MAX):
        return f"elided('{data_hash(a)}')"
    if a.size > LIST_MAX:
        raw = np.asarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        return f"base64('{base64.b64encode(raw).decode()}')"
    return _nested(np.asarray(a), dtype)


def constant_table(mod_or_fn: Any) -> dict[str, np.ndarray]:
    """Every array a module (or function) holds, in constants and in attributes, by :func:`data_hash`: the
    side table that resolves ``elided('<hash>')`` when parsing (``parse_module(text, constants=table)``)."""
    out: dict[str, np.ndarray] = {}

    def visit(v: Any) -> None:
        if isinstance(v, Constant):
            out.setdefault(data_hash(v.data), v.data)
        elif isinstance(v, np.ndarray):
            out.setdefault(data_hash(v), v)
        elif isinstance(v, GraphFunction):
            for c in v.constants():
                visit(c)
            visit(v.attrs)
            for n in v.nodes:
                visit(n.attrs)
        elif isinstance(v, TensorFunction):
            visit(v.attrs)
        elif isinstance(v, dict):
            for k, x in v.items():
                visit(k)
                visit(x)
        elif isinstance(v, list | tuple):
            for x in v:
                visit(x)
        elif hasattr(v, "functions") and hasattr(v, "attrs"):  # a Module (no import: module.py imports us)
            for f in v.functions.values():
                visit(f)
            visit(v.attrs)

    visit(mod_or_fn)
    return out


# ------------------------------------------------------------------------------------------------ attributes
def _float(v: float) -> str:
    return repr(float(v))  # exact; inf and nan read back


class _Printer:
    """Printing state for one module: constant names (module-wide) and the data mode."""

    def __init__(self, constants: str = "auto") -> None:
        if constants not in CONSTANT_MODES:
            raise ValueError(f"constants must be one of {CONSTANT_MODES}, got {constants!r}")
        self.mode = constants
        self.const_names: dict[tuple[str, str], str] = {}  # (name, data hash) -> printed name
        self.const_decls: list[str] = []
        self.const_taken: set[tuple[str, int]] = set()
        self.const_text: dict[int, str] = {}  # uid -> printed name

    # constants -------------------------------------------------------------------------------------------
    def const(self, c: Constant) -> str:
        if c.uid in self.const_text:
            return self.const_text[c.uid]
        key = (c.name, data_hash(c.data))
        if key not in self.const_names:
            k = 0
            while (c.name, k) in self.const_taken:
                k += 1
            self.const_taken.add((c.name, k))
            text = sigil_name("@", c.name, k)
            self.const_names[key] = text
            self.const_decls.append(f"const {text}: {c.type} = {print_data(c.data, self.mode)}")
        self.const_text[c.uid] = self.const_names[key]
        return self.const_text[c.uid]

    # attribute values ------------------------------------------------------------------------------------
    def attr(self, v: Any, vars_: _Namer | None, ind: str) -> str:
        if v is None or isinstance(v, bool):
            return repr(v)
        if isinstance(v, int):
            return repr(int(v))
        if isinstance(v, float):
            return _float(v)
        if isinstance(v, str):
            return quote(v)
        if isinstance(v, np.ndarray):
            return f"array({TensorType(tuple(int(d) for d in v.shape), dtype_of(v))}, {print_data(v, self.mode)})"
        if isinstance(v, np.generic):
            dt = dtype_of(np.dtype(type(v)))
            return f"{dt}({_scalar(v, dt)})"
        if isinstance(v, Constant):
            return self.const(v)
        if isinstance(v, Var):
            return vars_.get(v.uid, v.name) if vars_ is not None else sigil_name("%", v.name)
        if isinstance(v, TensorType):
            return _type(v)
        if isinstance(v, list):
            return "[" + ", ".join(self.attr(x, vars_, ind) for x in v) + "]"
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            items = [self.attr(x, vars_, ind) for x in v]
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        if isinstance(v, dict):
            return (
                "{"
                + ", ".join(f"{self.attr(k, vars_, ind)}: {self.attr(x, vars_, ind)}" for k, x in v.items())
                + "}"
            )
        if isinstance(v, GraphFunction):
            return self.graph(v, ind)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            cls = type(v)
            name = (
                cls.__name__ if RECORDS.get(cls.__name__) is cls else f"{cls.__module__}.{cls.__qualname__}"
            )
            fields = ", ".join(
                f"{f.name}={self.attr(getattr(v, f.name), vars_, ind)}"
                for f in dataclasses.fields(v)
                if f.init
            )
            return f"{name}({fields})"
        # anything else still prints (str(module) never fails), but cannot be read back
        return f"opaque({quote(f'{type(v).__name__}: {v!r}')})"

    def attrs(self, attrs: dict[str, Any], vars_: _Namer | None, ind: str) -> str:
        return ", ".join(f"{ident_name(k)}={self.attr(v, vars_, ind)}" for k, v in sorted(attrs.items()))

    # graph functions -------------------------------------------------------------------------------------
    def graph(self, f: GraphFunction, ind: str = "") -> str:
        names = _Namer(lambda n, k: sigil_name("%", n, k))
        params = ", ".join(f"{names.bind(p.uid, p.name)}: {_type(p.type)}" for p in f.params)
        attrs = f" [{self.attrs(f.attrs, names, ind)}]" if f.attrs else ""
        lines = [f"graph {ident_or_quoted(f.name)}({params}){attrs} {{"]
        inner = ind + "  "
        for n in f.nodes:
            lines.append(inner + self.node(n, names, inner))
        lines.append(f"{inner}return {', '.join(self.value(v, names) for v in f.outputs)}".rstrip())
        lines.append(ind + "}")
        return "\n".join(lines)

    def value(self, v: Value, names: _Namer) -> str:
        return self.const(v) if isinstance(v, Constant) else names.get(v.uid, v.name)

    def node(self, n: Node, names: _Namer, ind: str) -> str:
        args = ", ".join(self.value(v, names) for v in n.inputs)
        # attributes before binding the results: they see the scope of the inputs
        attrs = self.attrs(n.attrs, names, ind)
        outs = ", ".join(f"{names.bind(o.uid, o.name)}: {_type(o.type)}" for o in n.outputs)
        op = n.op if _SIMPLE_OP.match(n.op) else quote(n.op)
        loc = f" loc({quote(n.name)})" if n.name else ""
        call = f"{op}({args}{'; ' + attrs if attrs else ''}){loc}"
        return f"{outs} = {call}" if outs else call

    # modules ---------------------------------------------------------------------------------------------
    def module(self, functions: Iterable[GraphFunction | TensorFunction], attrs: dict[str, Any]) -> str:
        funcs = list(functions)
        texts = [self.function(f) for f in funcs]
        main = next((f for f in funcs if isinstance(f, GraphFunction) and f.name == "main"), None)
        tail = []
        if attrs:
            names = _Namer(lambda n, k: sigil_name("%", n, k))
            if main is not None:  # module attributes may refer to main's values (memory_plan)
                for v in [*main.params, *(o for n in main.nodes for o in n.outputs)]:
                    names.bind(v.uid, v.name)
            shown = module_attrs_with_refs(attrs, main)
            tail = [f"attr {ident_name(k)} = {self.attr(v, names, '')}" for k, v in sorted(shown.items())]
        parts = []
        if self.const_decls:
            parts.append("\n".join(self.const_decls))
        parts += texts
        if tail:
            parts.append("\n".join(tail))
        return "\n\n".join(parts)

    def function(self, f: GraphFunction | TensorFunction) -> str:
        return self.graph(f) if isinstance(f, GraphFunction) else print_tensor(f, self)


def ident_or_quoted(name: str) -> str:
    return name if _BARE_SIGIL.match(name) else quote(name)


def _dim(d: Any) -> str:
    return str(d) if isinstance(d, int) else ident_name(str(d))


def _type(t: TensorType) -> str:
    return f"{t.dtype}[{', '.join(_dim(d) for d in t.shape)}]"


# --------------------------------------------------------------------------------- memory plan: uids <-> values
def module_attrs_with_refs(attrs: dict[str, Any], main: GraphFunction | None) -> dict[str, Any]:
    """``attrs`` with the var and constant uids of ``memory_plan`` (storage keys, ``("const", uid)``) replaced
    by the values of ``main`` they name, so the text (and structural equality) can refer to them."""
    plan = attrs.get("memory_plan")
    if main is None or not isinstance(plan, dict) or not isinstance(plan.get("storage"), dict):
        return attrs
    by_uid: dict[int, Any] = {v.uid: v for v in main.params}
    by_uid.update({o.uid: o for n in main.nodes for o in n.outputs})
    by_uid.update({c.uid: c for c in main.constants()})

    def ref(u: Any) -> Any:
        return by_uid.get(u, u) if isinstance(u, int) and not isinstance(u, bool) else u

    storage = {
        ref(k): (v[0], ref(v[1])) if isinstance(v, tuple) and len(v) == 2 and v[0] == "const" else v
        for k, v in plan["storage"].items()
    }
    return {**attrs, "memory_plan": {**plan, "storage": storage}}


def module_attrs_with_uids(attrs: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`module_attrs_with_refs`: values back to their uids."""
    plan = attrs.get("memory_plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("storage"), dict):
        return attrs

    def uid(v: Any) -> Any:
        return v.uid if isinstance(v, Var | Constant) else v

    storage = {
        uid(k): (v[0], uid(v[1])) if isinstance(v, tuple) and len(v) == 2 and v[0] == "const" else v
        for k, v in plan["storage"].items()
    }
    return {**attrs, "memory_plan": {**plan, "storage": storage}}


# ----------------------------------------------------------------------------------------------- tensor level
def _float_text(v: float) -> str:
    """Short (``%g``) when that reads back exactly, else the exact ``repr``."""
    g = f"{v:g}"
    return g if float(g) == v or (v != v and g == "nan") else repr(v)


def print_expr(e: Expr, names: Callable[[Any], str] | None = None) -> str:
    """An expression's text; ``names`` gives the printed name of a loop variable or buffer (default: its
    name)."""
    nm = names or (lambda x: ident_name(x.name))

    def p(e: Expr) -> str:
        if isinstance(e, int | float):  # a plain number where an expression goes (an index)
            e = const(e)
        if isinstance(e, IntImm):
            return str(e.value) if e.dtype == "int64" else f"{e.dtype}({e.value})"
        if isinstance(e, FloatImm):
            x = float(e.value)
            if x != x or x in (float("inf"), float("-inf")):
                return f"{e.dtype}({repr(x)})"
            if e.dtype == "float32" and float(np.float32(x)) == x:  # 'f': the float32 nearest the decimal
                g = f"{x:g}"
                return f"{g if float(np.float32(g)) == x else str(np.float32(x))}f"
            return f"{e.dtype}({_float_text(x)})"  # exactly this double
        if isinstance(e, LoopVar):
            return nm(e)
        if isinstance(e, BinOp):
            if e.op in ("min", "max"):
                return f"{e.op}({p(e.a)}, {p(e.b)})"
            return f"({p(e.a)} {e.op} {p(e.b)})"
        if isinstance(e, Call):
            args = ", ".join(p(a) for a in e.args)
            if e.args and e.dtype != e.args[0].dtype or not e.args:
                return f"{e.fn}({args}; dtype={e.dtype})"
            return f"{e.fn}({args})"
        if isinstance(e, Select):
            return f"select({p(e.cond)}, {p(e.t)}, {p(e.f)})"
        if isinstance(e, Cast):
            c = e.value
            inner = f"int64({c.value})" if isinstance(c, IntImm) and c.dtype == "int64" else p(c)
            return f"{e.dtype}({inner})"  # an int64 literal is spelled out: dtype(literal) is a typed literal
        if isinstance(e, Load):
            return f"{nm(e.buffer)}[{', '.join(p(i) for i in e.indices)}]"
        raise TypeError(f"cannot print expression {e!r}")

    return p(e)


class _TensorNames:
    def __init__(self) -> None:
        self.bufs = _Namer(ident_name)
        self.vars = _Namer(ident_name)

    def __call__(self, x: Any) -> str:
        if not isinstance(x, Buffer):
            return self.vars.get(x.uid, x.name)
        text = self.bufs.get(x.uid, x.name)
        decl = self.bufs.objs.get(x.uid)
        if isinstance(decl, Buffer) and decl is not x and _view_key(decl) != _view_key(x):
            # a view: the declared buffer's memory with another shape, dtype or layout
            extra = f", strides={list(x.strides)}" if x.strides else ""
            extra += f", name={quote(x.name)}" if x.name != decl.name else ""
            extra += f", scope={x.scope}" if x.scope != decl.scope else ""
            text += f"{{{x.dtype}{list(x.shape)}{extra}}}"
        return text


def _view_key(b: Buffer) -> tuple[Any, ...]:
    return (b.name, b.shape, b.dtype, b.strides, b.scope)


def _stmt(s: Stmt, ind: str, out: list[str], nm: _TensorNames, last: bool) -> None:
    def e(x: Expr) -> str:
        return print_expr(x, nm)

    if isinstance(s, Seq):
        if not s.stmts:
            out.append(f"{ind}pass")
        for i, x in enumerate(s.stmts):
            _stmt(x, ind, out, nm, last and i == len(s.stmts) - 1)
    elif isinstance(s, For):
        bounds = e(s.extent)
        if not (isinstance(s.start, IntImm) and s.start.value == 0 and s.start.dtype == "int64"):
            stop = s.start + s.extent  # folded when both are constants
            bounds = f"{e(s.start)}, {e(stop)}"  # range(start, stop)
        kind = "" if s.kind == "serial" else f"  # {s.kind}"
        nm.vars.push()
        v = nm.vars.bind(s.var.uid, s.var.name)
        typed = f": {s.var.dtype}" if s.var.dtype != "int64" else ""
        out.append(f"{ind}for {v}{typed} in range({bounds}):{kind}")
        _block(s.body, ind + "  ", out, nm)
        nm.vars.pop()
    elif isinstance(s, Store):
        idx = ", ".join(e(i) for i in s.indices)
        out.append(f"{ind}{nm(s.buffer)}[{idx}] = {e(s.value)}")
    elif isinstance(s, IfThenElse):
        out.append(f"{ind}if {e(s.cond)}:")
        _block(s.then, ind + "  ", out, nm)
        if s.else_ is not None:
            out.append(f"{ind}else:")
            _block(s.else_, ind + "  ", out, nm)
    elif isinstance(s, Allocate):
        nm.bufs.push()
        decl = (
            f"{_buf(s.buffer, nm.bufs.bind(s.buffer.uid, s.buffer.name, s.buffer))} = alloc({s.buffer.scope})"
        )
        if last:  # the rest of the block is the allocation's body
            out.append(ind + decl)
            _stmt(s.body, ind, out, nm, True)
        else:  # statements follow that are outside it: its body is a block
            out.append(f"{ind}{decl}:")
            _block(s.body, ind + "  ", out, nm)
        nm.bufs.pop()
    else:
        raise TypeError(f"cannot print statement {s!r}")


def _block(s: Stmt, ind: str, out: list[str], nm: _TensorNames) -> None:
    _stmt(s, ind, out, nm, True)


def _buf(b: Buffer, name: str) -> str:
    strides = f", strides={list(b.strides)}" if b.strides else ""
    return f"{name}: {b.dtype}{list(b.shape)}{strides}"


def _ops_comment(attrs: dict[str, Any]) -> bool:
    ops = attrs.get("ops")
    return (
        isinstance(ops, list) and bool(ops) and all(isinstance(o, str) and _SIMPLE_OP.match(o) for o in ops)
    )


def print_tensor(f: TensorFunction, printer: _Printer | None = None) -> str:
    pr = printer or _Printer()
    nm = _TensorNames()
    params = []
    for b in f.params:
        scope = f", scope={b.scope}" if b.scope != "param" else ""
        params.append(_buf(b, nm.bufs.bind(b.uid, b.name, b)) + scope)
    ins, outs = params[: len(params) - f.num_outputs], params[len(params) - f.num_outputs :]
    comment = _ops_comment(f.attrs)
    rest = {k: v for k, v in f.attrs.items() if not (comment and k == "ops")}
    attrs = f" [{pr.attrs(rest, None, '')}]" if rest else ""
    ops = f"  # ops: {', '.join(f.attrs['ops'])}" if comment else ""
    out = [f"tensor {ident_or_quoted(f.name)}({', '.join(ins)}) -> ({', '.join(outs)}){attrs}:{ops}"]
    _block(f.body, "  ", out, nm)
    return "\n".join(out)


def print_graph(f: GraphFunction, constants: str = "auto") -> str:
    return _Printer(constants).graph(f)


def print_function(f: GraphFunction | TensorFunction, constants: str = "auto") -> str:
    """One function's text (constants referred to by name, not declared: see :func:`print_module_text`)."""
    return _Printer(constants).function(f)


def print_module_text(
    functions: Iterable[GraphFunction | TensorFunction], attrs: dict[str, Any], constants: str = "auto"
) -> str:
    """The text of a module given its functions and attributes (:func:`kiln.ir.print_module`)."""
    return _Printer(constants).module(functions, attrs)


__all__ = [
    "CONSTANT_MODES",
    "RESERVED",
    "constant_table",
    "data_hash",
    "print_data",
    "print_expr",
    "print_function",
    "print_graph",
    "print_module_text",
    "print_tensor",
]
