"""Read the IR's text form (:mod:`kiln.ir.printer`) back into a :class:`~kiln.ir.Module`.

    mod2 = parse_module(print_module(mod), constants=constant_table(mod))
    assert structural_equal(mod, mod2)

so tests and users can write IR by hand. Errors are :class:`ParseError` naming the line and column (and
showing the line). The syntax is described in docs/topics/ir.md; in short:

* ``const @w: float32[2, 3] = [[...]]`` declares a constant (data as a nested list, ``base64('...')`` of the
  little-endian bytes, or ``elided('<key>')``, looked up in the ``constants`` table given to the parser);
* ``graph name(%x: float32[N, 3]) [attrs] { %y: float32[N, 3] = op(%x, @w; attr=value) loc('node') ...
  return %y }``;
* ``tensor name(in0: float32[4]) -> (out0: float32[4]) [attrs]:  # ops: relu`` followed by an indented
  body of Python-like statements (``for i in range(4):  # vectorized``, ``if``/``else``, stores
  ``out0[i] = max(in0[i], 0f)``, ``acc: float32[4] = alloc(local)``, ``pass``);
* ``attr name = value`` sets a module attribute.

Attribute values are Python-like literals (numbers, strings, ``None``/``True``/``False``, lists, tuples,
dicts), arrays ``array(float32[2], [1.0, 2.0])``, NumPy scalars ``float32(0.5)``, tensor types, values
``%x``/``@w``, nested graph functions (a ``fused`` node's body) and records ``Name(field=value, ...)`` of the
dataclasses registered with :func:`register_record`.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .equality import expr_equal
from .graph import Constant, GraphFunction, Node, Value, Var
from .module import Module
from .printer import RECORDS, module_attrs_with_uids
from .tensor import (
    INTRINSICS,
    LOOP_KINDS,
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
)
from .types import DTYPES, Sym, TensorType, np_dtype


class ParseError(ValueError):
    """A syntax or reference error at ``line``, ``col`` (both 1-based)."""

    def __init__(self, msg: str, line: int, col: int, source_line: str = "") -> None:
        self.msg, self.line, self.col = msg, line, col
        where = f"line {line}, column {col}: {msg}"
        if source_line:
            where += f"\n  {source_line}\n  {' ' * (col - 1)}^"
        super().__init__(where)


def register_record(cls: type) -> type:
    """Let attribute values of dataclass ``cls`` print as ``Name(field=value, ...)`` and parse back by that
    short name. Usable as a class decorator. kiln.ir's own records (:class:`~kiln.ir.extern.ExternSource`,
    :class:`~kiln.ir.Sym`) are registered already; other dataclasses print with their qualified name
    (``kiln.targets.Target(...)``) and parse back when they belong to a loaded ``kiln`` module (the parser
    imports nothing)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    RECORDS[cls.__name__] = cls
    return cls


def _record_class(name: str) -> type | None:
    if name in RECORDS:
        return RECORDS[name]
    mod_name, _, qual = name.rpartition(".")
    while mod_name:
        mod = sys.modules.get(mod_name)
        if mod is not None:
            obj: Any = mod
            for part in qual.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__.startswith("kiln."):
                return obj
            return None
        mod_name, _, head = mod_name.rpartition(".")
        qual = f"{head}.{qual}"
    return None


# ------------------------------------------------------------------------------------------------- tokens
_SUFFIX = r"(?:~\d+)?"
_STR = r"""(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
_TOKEN = re.compile(
    rf"""
    (?P<ws>[ \t]+)
  | (?P<comment>\#[^\n]*)
  | (?P<nl>\r?\n)
  | (?P<ref>[%@](?:[A-Za-z0-9_.]+|{_STR}){_SUFFIX})
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?f?(?![A-Za-z0-9_]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*{_SUFFIX})
  | (?P<string>{_STR}{_SUFFIX})
  | (?P<op>->|//|<=|>=|==|!=|[()\[\]{{}},:;=<>+\-*/%.])
    """,
    re.VERBOSE,
)
_OPEN, _CLOSE = "([{", ")]}"


@dataclasses.dataclass
class Tok:
    kind: str  # ref, number, name, string, op, comment, nl, end
    text: str
    line: int
    col: int
    first: bool = False  # first token of its line

    def is_(self, kind: str, text: str | None = None) -> bool:
        return self.kind == kind and (text is None or self.text == text)


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
    line, line_start, depth, pos = 1, 0, 0, 0
    first = True
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            src = text[line_start:].split("\n", 1)[0]
            raise ParseError(f"unexpected character {text[pos]!r}", line, col, src)
        kind = m.lastgroup or ""
        tok = m.group()
        pos = m.end()
        if kind == "nl":
            if depth == 0 and toks and not toks[-1].is_("nl") and not first:
                toks.append(Tok("nl", "\n", line, col))
            line, line_start, first = line + 1, pos, True
            continue
        if kind == "ws":
            continue
        if kind == "op":
            if tok in _OPEN:
                depth += 1
            elif tok in _CLOSE:
                depth = max(0, depth - 1)
        toks.append(Tok(kind, tok, line, col, first and kind != "comment"))
        if kind != "comment":
            first = False
    if toks and not toks[-1].is_("nl"):
        toks.append(Tok("nl", "\n", line, len(text) - line_start + 1))
    toks.append(Tok("end", "", line + 1, 1, True))
    return toks


def _split_suffix(text: str) -> tuple[str, int]:
    """``name~2`` -> ("name", 2); quoted names unquoted."""
    k = 0
    m = re.search(r"~(\d+)\Z", text)
    if m:
        text, k = text[: m.start()], int(m.group(1))
    if text[:1] in "'\"":
        text = ast.literal_eval(text)
    return text, k


# ------------------------------------------------------------------------------------------------- parser
class _Scope:
    """Names -> objects, lexically nested."""

    def __init__(self) -> None:
        self.frames: list[dict[tuple[str, int], Any]] = [{}]

    def push(self) -> None:
        self.frames.append({})

    def pop(self) -> None:
        self.frames.pop()

    def bind(self, key: tuple[str, int], obj: Any) -> bool:
        if key in self.frames[-1]:
            return False
        self.frames[-1][key] = obj
        return True

    def get(self, key: tuple[str, int]) -> Any:
        for f in reversed(self.frames):
            if key in f:
                return f[key]
        return None


class _Parser:
    def __init__(self, text: str, constants: Mapping[str, np.ndarray] | None) -> None:
        self.lines = text.split("\n")
        self.toks = tokenize(text)
        self.i = 0
        self.table = constants or {}
        self.consts: dict[tuple[str, int], Constant] = {}
        self.vars: _Scope | None = None  # the graph function being parsed
        self.graph_keys: dict[str, dict[int, tuple[str, int]]] = {}  # top-level graph -> var uid -> its key

    # token helpers ---------------------------------------------------------------------------------------
    def peek(self, ahead: int = 0, comments: bool = False) -> Tok:
        j, seen = self.i, 0
        while True:
            t = self.toks[j]
            if t.kind != "comment" or comments:
                if seen == ahead:
                    return t
                seen += 1
            j += 1

    def next(self) -> Tok:
        while self.toks[self.i].kind == "comment":
            self.i += 1
        t = self.toks[self.i]
        if t.kind != "end":
            self.i += 1
        return t

    def error(self, msg: str, tok: Tok | None = None) -> ParseError:
        t = tok or self.peek()
        src = self.lines[t.line - 1] if 0 < t.line <= len(self.lines) else ""
        return ParseError(msg, t.line, t.col, src)

    def expect(self, kind: str, text: str | None = None) -> Tok:
        t = self.peek()
        if not t.is_(kind, text):
            want = repr(text) if text is not None else kind
            got = "end of input" if t.kind == "end" else ("end of line" if t.kind == "nl" else repr(t.text))
            raise self.error(f"expected {want}, found {got}", t)
        return self.next()

    def accept(self, kind: str, text: str | None = None) -> Tok | None:
        return self.next() if self.peek().is_(kind, text) else None

    def skip_nl(self) -> None:
        while self.peek().kind == "nl":
            self.next()

    def trailing_comment(self) -> str | None:
        """The comment ending the current line, if any (consumed)."""
        t = self.toks[self.i]
        if t.kind == "comment":
            self.i += 1
            return t.text[1:].strip()
        return None

    def name(self) -> tuple[str, int]:
        t = self.peek()
        if t.kind not in ("name", "string"):
            raise self.error(f"expected a name, found {t.text!r}", t)
        self.next()
        return _split_suffix(t.text)

    def ref(self) -> tuple[str, tuple[str, int], Tok]:
        t = self.expect("ref")
        return t.text[0], _split_suffix(t.text[1:]), t

    # module ----------------------------------------------------------------------------------------------
    def module(self) -> Module:
        functions: dict[str, GraphFunction | TensorFunction] = {}
        attrs: dict[str, Any] = {}
        self.skip_nl()
        while self.peek().kind != "end":
            t = self.peek()
            if not t.first or t.col != 1:
                raise self.error("expected 'const', 'graph', 'tensor' or 'attr' at the start of a line", t)
            if t.is_("name", "const"):
                self.const_decl()
            elif t.is_("name", "graph"):
                f = self.graph()
                self.add_function(functions, f, t)
            elif t.is_("name", "tensor"):
                tf = self.tensor()
                self.add_function(functions, tf, t)
            elif t.is_("name", "attr"):
                self.next()
                key, _ = self.name()
                self.expect("op", "=")
                main = functions.get("main")
                self.vars = _Scope()
                if isinstance(main, GraphFunction):  # module attributes may name main's values
                    for v in [*main.params, *(o for n in main.nodes for o in n.outputs)]:
                        self.vars.bind(self.graph_keys["main"][v.uid], v)
                attrs[key] = self.value()
                self.vars = None
                self.end_line()
            else:
                raise self.error(f"expected 'const', 'graph', 'tensor' or 'attr', found {t.text!r}", t)
            self.skip_nl()
        return Module(functions, module_attrs_with_uids(attrs))

    def add_function(self, fs: dict[str, Any], f: GraphFunction | TensorFunction, t: Tok) -> None:
        if f.name in fs:
            raise self.error(f"function {f.name!r} is defined twice", t)
        fs[f.name] = f

    def end_line(self) -> None:
        self.trailing_comment()
        t = self.peek()
        if t.kind not in ("nl", "end"):
            raise self.error(f"unexpected {t.text!r} at the end of the line", t)
        self.skip_nl()

    # types and constants ---------------------------------------------------------------------------------
    def dtype(self) -> str:
        t = self.expect("name")
        if t.text not in DTYPES:
            raise self.error(f"unknown element type {t.text!r}; kiln has {', '.join(DTYPES)}", t)
        return t.text

    def ttype(self) -> TensorType:
        dt = self.dtype()
        self.expect("op", "[")
        dims: list[int | Sym] = []
        while not self.peek().is_("op", "]"):
            t = self.peek()
            if t.kind == "number" and t.text.isdigit():
                dims.append(int(self.next().text))
            elif t.kind in ("name", "string"):
                dims.append(Sym(self.name()[0]))
            else:
                raise self.error(f"expected a dimension (a size or a name), found {t.text!r}", t)
            if not self.accept("op", ","):
                break
        self.expect("op", "]")
        return TensorType(tuple(dims), dt)

    def ints(self) -> tuple[int, ...]:
        self.expect("op", "[")
        out = []
        while not self.peek().is_("op", "]"):
            neg = self.accept("op", "-")
            t = self.expect("number")
            if not t.text.isdigit():
                raise self.error(f"expected an integer, found {t.text!r}", t)
            out.append(-int(t.text) if neg else int(t.text))
            if not self.accept("op", ","):
                break
        self.expect("op", "]")
        return tuple(out)

    def const_decl(self) -> None:
        self.expect("name", "const")
        sigil, key, t = self.ref()
        if sigil != "@":
            raise self.error("a constant's name starts with '@'", t)
        self.expect("op", ":")
        typ = self.ttype()
        self.expect("op", "=")
        data = self.data(typ)
        if key in self.consts:
            raise self.error(f"constant @{key[0]} is declared twice", t)
        self.consts[key] = Constant(key[0], data)
        self.end_line()

    def data(self, typ: TensorType) -> np.ndarray:
        t = self.peek()
        if not typ.is_static:
            raise self.error(f"constant data needs a static shape, not {typ}", t)
        shape, dt = typ.static_shape, np_dtype(typ.dtype)
        if t.is_("name", "elided") or t.is_("name", "base64"):
            self.next()
            self.expect("op", "(")
            s = self.expect("string")
            self.expect("op", ")")
            text = ast.literal_eval(s.text)
            if t.text == "base64":
                raw = base64.b64decode(text)
                if len(raw) != typ.nbytes:
                    raise self.error(f"base64 data has {len(raw)} bytes, {typ} needs {typ.nbytes}", s)
                return np.frombuffer(raw, dt.newbyteorder("<")).astype(dt).reshape(shape)
            if text not in self.table:
                raise self.error(f"constant data {text!r} is elided and not in the constants table given", s)
            arr = np.asarray(self.table[text])
            if arr.shape != shape or arr.dtype != dt:
                raise self.error(
                    f"constants table entry {text!r} is {arr.dtype}{list(arr.shape)}, declared {typ}", s
                )
            return arr
        value = self.value()
        try:
            arr = np.array(value, dtype=dt)
        except (TypeError, ValueError, OverflowError) as e:
            raise self.error(f"constant data is not {typ}: {e}", t) from None
        if arr.shape != shape:
            raise self.error(f"constant data has shape {list(arr.shape)}, declared {typ}", t)
        return arr

    def const_ref(self, key: tuple[str, int], t: Tok) -> Constant:
        c = self.consts.get(key)
        if c is None:
            raise self.error(f"unknown constant @{key[0]}{f'~{key[1]}' if key[1] else ''}", t)
        return c

    # attribute values ------------------------------------------------------------------------------------
    def number(self, neg: bool = False) -> int | float:
        t = self.next()
        text = ("-" if neg else "") + t.text
        if t.kind == "name" and t.text in ("inf", "nan"):
            return float(text)
        if t.kind != "number" or t.text.endswith("f"):
            raise self.error(f"expected a number, found {t.text!r}", t)
        return float(text) if any(c in t.text for c in ".eE") else int(text)

    def value(self) -> Any:
        t = self.peek()
        if t.kind == "number" or t.is_("name", "inf") or t.is_("name", "nan"):
            return self.number()
        if t.is_("op", "-"):
            self.next()
            return self.number(neg=True)
        if t.kind == "string":
            self.next()
            return ast.literal_eval(t.text)
        if t.kind == "ref":
            sigil, key, rt = self.ref()
            if sigil == "@":
                return self.const_ref(key, rt)
            v = self.vars.get(key) if self.vars is not None else None
            if v is None:
                raise self.error(f"unknown value %{key[0]}", rt)
            return v
        if t.is_("op", "["):
            self.next()
            items = self.items("]")
            return items
        if t.is_("op", "("):
            self.next()
            items, trailing = [], False
            while not self.peek().is_("op", ")"):
                items.append(self.value())
                trailing = bool(self.accept("op", ","))
                if not trailing:
                    break
            self.expect("op", ")")
            if len(items) == 1 and not trailing:
                return items[0]
            return tuple(items)
        if t.is_("op", "{"):
            self.next()
            d: dict[Any, Any] = {}
            while not self.peek().is_("op", "}"):
                kt = self.peek()
                k = self.value()
                try:
                    hash(k)
                except TypeError:
                    raise self.error("a dictionary key must be hashable", kt) from None
                self.expect("op", ":")
                d[k] = self.value()
                if not self.accept("op", ","):
                    break
            self.expect("op", "}")
            return d
        if t.kind == "name":
            word = t.text
            if word in ("None", "True", "False"):
                self.next()
                return {"None": None, "True": True, "False": False}[word]
            if word == "graph":
                return self.graph()
            if word == "opaque" and self.peek(1).is_("op", "("):
                raise self.error(
                    "an opaque value (an attribute of a type the IR cannot print) does not parse back", t
                )
            if word == "array":
                self.next()
                self.expect("op", "(")
                typ = self.ttype()
                self.expect("op", ",")
                arr = self.data(typ)
                self.expect("op", ")")
                return arr
            if word in DTYPES and self.peek(1).is_("op", "["):
                return self.ttype()
            if word in DTYPES and self.peek(1).is_("op", "("):
                self.next()
                self.next()
                neg = bool(self.accept("op", "-"))
                if self.peek().is_("name", "True") or self.peek().is_("name", "False"):
                    x: Any = self.next().text == "True"
                else:
                    x = self.number(neg)
                self.expect("op", ")")
                return np_dtype(word).type(x)
            dotted, ahead = word, 1
            while self.peek(ahead).is_("op", ".") and self.peek(ahead + 1).kind == "name":
                dotted += "." + self.peek(ahead + 1).text
                ahead += 2
            if self.peek(ahead).is_("op", "("):
                cls = _record_class(dotted)
                if cls is None:
                    raise self.error(f"unknown record type {dotted!r} (kiln.ir.register_record adds one)", t)
                for _ in range(ahead + 1):
                    self.next()
                kwargs: dict[str, Any] = {}
                while not self.peek().is_("op", ")"):
                    k, _ = self.name()
                    self.expect("op", "=")
                    kwargs[k] = self.value()
                    if not self.accept("op", ","):
                        break
                self.expect("op", ")")
                try:
                    return cls(**kwargs)
                except (TypeError, ValueError) as e:
                    raise self.error(f"invalid {dotted}: {e}", t) from None
        raise self.error(f"expected a value, found {t.text!r}", t)

    def items(self, close: str) -> list[Any]:
        out = []
        while not self.peek().is_("op", close):
            out.append(self.value())
            if not self.accept("op", ","):
                break
        self.expect("op", close)
        return out

    def attrs(self, close: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while not self.peek().is_("op", close):
            kt = self.peek()
            k, _ = self.name()
            if k in out:
                raise self.error(f"attribute {k!r} given twice", kt)
            self.expect("op", "=")
            out[k] = self.value()
            if not self.accept("op", ","):
                break
        return out

    # graph functions -------------------------------------------------------------------------------------
    def graph(self) -> GraphFunction:
        self.expect("name", "graph")
        fname, _ = self.name()
        outer = self.vars
        self.vars = scope = _Scope()
        keys: dict[int, tuple[str, int]] = {}
        self.expect("op", "(")
        params = []
        while not self.peek().is_("op", ")"):
            params.append(self.var_def(scope, keys))
            if not self.accept("op", ","):
                break
        self.expect("op", ")")
        fattrs: dict[str, Any] = {}
        if self.accept("op", "["):
            fattrs = self.attrs("]")
            self.expect("op", "]")
        self.expect("op", "{")
        self.skip_nl()
        nodes: list[Node] = []
        while not self.peek().is_("name", "return"):
            if self.peek().kind == "end" or self.peek().is_("op", "}"):
                raise self.error(f"graph {fname!r} has no 'return'")
            nodes.append(self.node(scope, keys))
            self.skip_nl()
        self.expect("name", "return")
        outputs: list[Value] = []
        while self.peek().kind == "ref":
            outputs.append(self.use())
            if not self.accept("op", ","):
                break
        self.skip_nl()
        self.expect("op", "}")
        self.vars = outer
        if outer is None:
            self.graph_keys[fname] = keys
        return GraphFunction(fname, tuple(params), tuple(nodes), tuple(outputs), fattrs)

    def var_def(self, scope: _Scope, keys: dict[int, tuple[str, int]]) -> Var:
        sigil, key, t = self.ref()
        if sigil != "%":
            raise self.error("a value defined here is a variable: its name starts with '%'", t)
        self.expect("op", ":")
        v = Var(key[0], self.ttype())
        if not scope.bind(key, v):
            raise self.error(f"%{key[0]} is defined twice", t)
        keys[v.uid] = key
        return v

    def use(self) -> Value:
        sigil, key, t = self.ref()
        if sigil == "@":
            return self.const_ref(key, t)
        assert self.vars is not None
        v = self.vars.get(key)
        if v is None:
            raise self.error(f"%{key[0]}{f'~{key[1]}' if key[1] else ''} is used before it is defined", t)
        return v  # type: ignore[no-any-return]

    def node(self, scope: _Scope, keys: dict[int, tuple[str, int]]) -> Node:
        outs: list[tuple[tuple[str, int], TensorType, Tok]] = []
        if self.peek().kind == "ref":
            while True:
                sigil, key, t = self.ref()
                if sigil != "%":
                    raise self.error("a node's result is a variable: its name starts with '%'", t)
                self.expect("op", ":")
                outs.append((key, self.ttype(), t))
                if not self.accept("op", ","):
                    break
            self.expect("op", "=")
        opt = self.peek()
        if opt.kind not in ("name", "string"):
            raise self.error(f"expected an operator name, found {opt.text!r}", opt)
        op = self.next().text
        op = ast.literal_eval(op) if opt.kind == "string" else op
        self.expect("op", "(")
        inputs: list[Value] = []
        while self.peek().kind == "ref":
            inputs.append(self.use())
            if not self.accept("op", ","):
                break
        attrs: dict[str, Any] = {}
        if self.accept("op", ";"):
            attrs = self.attrs(")")
        self.expect("op", ")")
        name = ""
        if self.peek().is_("name", "loc") and self.peek(1).is_("op", "("):
            self.next()
            self.next()
            name = ast.literal_eval(self.expect("string").text)
            self.expect("op", ")")
        results = []
        for key, typ, t in outs:
            v = Var(key[0], typ)
            if not scope.bind(key, v):
                raise self.error(f"%{key[0]} is defined twice", t)
            keys[v.uid] = key
            results.append(v)
        if op == "fused" and isinstance(attrs.get("body"), GraphFunction):
            attrs["body"] = _share_outputs(attrs["body"], results)
        return Node(op, tuple(inputs), tuple(results), attrs, name)

    # tensor functions ------------------------------------------------------------------------------------
    def tensor(self) -> TensorFunction:
        self.expect("name", "tensor")
        fname, _ = self.name()
        self.bufs, self.loopvars = _Scope(), _Scope()
        self.expect("op", "(")
        ins = self.buf_params(")")
        self.expect("op", "->")
        self.expect("op", "(")
        outs = self.buf_params(")")
        fattrs: dict[str, Any] = {}
        if self.accept("op", "["):
            fattrs = self.attrs("]")
            self.expect("op", "]")
        self.expect("op", ":")
        comment = self.trailing_comment()
        if comment is not None and comment.startswith("ops:"):
            ops = [o.strip() for o in comment[4:].split(",") if o.strip()]
            fattrs = {"ops": ops, **fattrs}
        self.expect("nl")
        body = self.block(0)
        return TensorFunction(fname, (*ins, *outs), body, len(outs), fattrs)

    def buf_params(self, close: str) -> list[Buffer]:
        out = []
        while not self.peek().is_("op", close):
            t = self.peek()
            key, b = self.buf_decl(allow_scope=True)
            if not self.bufs.bind(key, b):
                raise self.error(f"buffer {key[0]} is declared twice", t)
            out.append(b)
            if not self.accept("op", ","):
                break
        self.expect("op", close)
        return out

    def buf_decl(self, allow_scope: bool) -> tuple[tuple[str, int], Buffer]:
        key = self.name()
        self.expect("op", ":")
        dt = self.dtype()
        shape = self.ints()
        strides: tuple[int, ...] = ()
        scope = "param"
        while self.peek().is_("op", ",") and self.peek(2).is_("op", "="):
            opt = self.peek(1)
            if opt.is_("name", "strides"):
                self.next()
                self.next()
                self.next()
                strides = self.ints()
            elif opt.is_("name", "scope") and allow_scope:
                self.next()
                self.next()
                self.next()
                scope = self.expect("name").text
            else:
                break
        return key, Buffer(key[0], shape, dt, strides, scope)

    def line_indent(self) -> int | None:
        t = self.peek()
        return None if t.kind == "end" or not t.first else t.col - 1

    def block(self, parent: int) -> Stmt:
        ind = self.line_indent()
        if ind is None or ind <= parent:
            raise self.error("expected an indented block")
        return self.stmts(ind)

    def stmts(self, ind: int) -> Stmt:
        out: list[Stmt] = []
        while self.line_indent() == ind:
            s = self.stmt(ind)
            if s is not None:
                out.append(s)
        nxt = self.line_indent()
        if nxt is not None and nxt > ind:
            raise self.error("unexpected indentation")
        return out[0] if len(out) == 1 else Seq(tuple(out))

    def stmt(self, ind: int) -> Stmt | None:
        t = self.peek()
        if t.is_("name", "pass"):
            self.next()
            self.end_stmt()
            return None
        if t.is_("name", "for"):
            return self.for_stmt(ind)
        if t.is_("name", "if"):
            self.next()
            cond = self.expr()
            self.expect("op", ":")
            self.end_stmt()
            then = self.block(ind)
            else_ = None
            if self.line_indent() == ind and self.peek().is_("name", "else"):
                self.next()
                self.expect("op", ":")
                self.end_stmt()
                else_ = self.block(ind)
            return IfThenElse(cond, then, else_)
        if t.kind in ("name", "string") and self.peek(1).is_("op", ":"):
            key, buf = self.buf_decl(allow_scope=False)
            self.expect("op", "=")
            self.expect("name", "alloc")
            self.expect("op", "(")
            scope = self.expect("name")
            if scope.text not in ("local", "workspace"):
                raise self.error(
                    f"an allocation's scope is 'local' or 'workspace', not {scope.text!r}", scope
                )
            self.expect("op", ")")
            buf = buf.with_(scope=scope.text)
            self.bufs.push()
            self.bufs.bind(key, buf)
            if self.accept("op", ":"):
                self.end_stmt()
                body = self.block(ind)
            else:
                self.end_stmt()
                body = self.stmts(ind)  # the rest of the block
            self.bufs.pop()
            return Allocate(buf, body)
        if t.kind in ("name", "string") and (self.peek(1).is_("op", "[") or self.peek(1).is_("op", "{")):
            buf = self.buffer_ref()
            idx = self.indices()
            self.expect("op", "=")
            value = self.expr()
            self.end_stmt()
            return Store(buf, idx, value)
        raise self.error(f"expected a statement, found {t.text!r}", t)

    def end_stmt(self) -> None:
        self.trailing_comment()
        t = self.peek()
        if t.kind == "end":
            return
        if t.kind != "nl":
            raise self.error(f"unexpected {t.text!r} at the end of the statement", t)
        self.next()

    def for_stmt(self, ind: int) -> Stmt:
        self.expect("name", "for")
        vt = self.peek()
        key = self.name()
        dtype = "int64"
        if self.accept("op", ":"):
            dtype = self.dtype()
        self.expect("name", "in")
        self.expect("name", "range")
        self.expect("op", "(")
        first = self.expr()
        second = self.expr() if self.accept("op", ",") else None
        self.expect("op", ")")
        self.expect("op", ":")
        comment = self.trailing_comment()
        kind = comment if comment in LOOP_KINDS else "serial"
        self.end_stmt()
        start: Expr
        if second is None:
            start, extent = IntImm(0), first
        else:
            start, extent = first, _extent(first, second)
        var = LoopVar(key[0], dtype)
        self.loopvars.push()
        if not self.loopvars.bind(key, var):
            raise self.error(f"loop variable {key[0]} is bound twice", vt)
        body = self.block(ind)
        self.loopvars.pop()
        return For(var, extent, body, kind, start)

    def buffer_ref(self) -> Buffer:
        t = self.peek()
        key = self.name()
        b: Buffer | None = self.bufs.get(key)
        if b is None:
            raise self.error(f"unknown buffer {key[0]}{f'~{key[1]}' if key[1] else ''}", t)
        if self.accept("op", "{"):  # a view of b: its memory (its uid) with another shape, dtype or layout
            dt = self.dtype()
            shape = self.ints()
            changes: dict[str, Any] = {"dtype": dt, "shape": shape, "strides": ()}
            while self.accept("op", ","):
                opt = self.expect("name")
                self.expect("op", "=")
                if opt.text == "strides":
                    changes["strides"] = self.ints()
                elif opt.text == "name":
                    changes["name"] = ast.literal_eval(self.expect("string").text)
                elif opt.text == "scope":
                    changes["scope"] = self.expect("name").text
                else:
                    raise self.error(f"a buffer view has strides, name and scope, not {opt.text!r}", opt)
            self.expect("op", "}")
            b = b.with_(**changes)
        return b

    def indices(self) -> tuple[Expr, ...]:
        self.expect("op", "[")
        out = []
        while not self.peek().is_("op", "]"):
            out.append(self.expr())
            if not self.accept("op", ","):
                break
        self.expect("op", "]")
        return tuple(out)

    # expressions: Python precedence, no folding (the text is the structure) ------------------------------
    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("or",),
        ("and",),
        ("<", "<=", ">", ">=", "==", "!="),
        ("+", "-"),
        ("*", "/", "//", "%"),
    )

    def expr(self, level: int = 0) -> Expr:
        if level == len(self._LEVELS):
            return self.unary()
        ops = self._LEVELS[level]
        e = self.expr(level + 1)
        while self.peek().kind in ("op", "name") and self.peek().text in ops:
            op = self.next().text
            rhs = self.expr(level + 1)
            e = BinOp(op, e, rhs)
            if level == 2:
                break  # comparisons do not chain
        return e

    def unary(self) -> Expr:
        t = self.peek()
        if t.is_("op", "-"):
            self.next()
            n = self.peek()
            if n.kind == "number" or n.is_("name", "inf"):
                return self.literal(neg=True)
            return Call("neg", (x := self.unary(),), x.dtype)
        return self.atom()

    def literal(self, neg: bool = False, dtype: str | None = None) -> Expr:
        t = self.next()
        text = ("-" if neg else "") + t.text
        if t.kind == "name" and t.text in ("inf", "nan"):
            return FloatImm(float(text), dtype or "float32")
        if t.kind != "number":
            raise self.error(f"expected a number, found {t.text!r}", t)
        if text.endswith("f"):
            if dtype is not None:
                raise self.error("a typed literal has no 'f' suffix", t)
            return FloatImm(float(np.float32(text[:-1])), "float32")  # the float32 nearest the decimal
        is_int = not any(c in text for c in ".eE")
        if dtype is None:
            return IntImm(int(text)) if is_int else FloatImm(float(text), "float32")
        if dtype.startswith("float"):
            return FloatImm(float(text), dtype)
        if not is_int:
            raise self.error(f"{dtype} literal {text!r} is not an integer", t)
        return IntImm(int(text), dtype)

    def atom(self) -> Expr:
        t = self.peek()
        if t.kind == "number":
            return self.literal()
        if t.is_("op", "("):
            self.next()
            e = self.expr()
            self.expect("op", ")")
            return e
        if t.kind not in ("name", "string"):
            raise self.error(f"expected an expression, found {t.text!r}", t)
        nxt = self.peek(1)
        if t.kind == "name" and nxt.is_("op", "("):
            return self.call_like()
        if nxt.is_("op", "[") or nxt.is_("op", "{"):
            buf = self.buffer_ref()
            return Load(buf, self.indices())
        key = _split_suffix(t.text)
        v = self.loopvars.get(key)
        if v is not None:
            self.next()
            return v  # type: ignore[no-any-return]
        if t.is_("name", "inf") or t.is_("name", "nan"):
            return self.literal()
        raise self.error(f"unknown loop variable {key[0]}{f'~{key[1]}' if key[1] else ''}", t)

    def call_like(self) -> Expr:
        t = self.next()
        fn = t.text
        self.expect("op", "(")
        if fn in DTYPES:  # dtype(literal) is a typed literal, dtype(expression) a cast
            neg = self.peek().is_("op", "-")
            lit, after = self.peek(1 if neg else 0), self.peek(2 if neg else 1)
            is_lit = (lit.kind == "number" and not lit.text.endswith("f")) or (
                lit.kind == "name" and lit.text in ("inf", "nan")
            )
            if is_lit and after.is_("op", ")"):
                if neg:
                    self.next()
                e = self.literal(neg=neg, dtype=fn)
                self.expect("op", ")")
                return e
            e = Cast(fn, self.expr())
            self.expect("op", ")")
            return e
        args: list[Expr] = []
        while not self.peek().is_("op", ")") and not self.peek().is_("op", ";"):
            args.append(self.expr())
            if not self.accept("op", ","):
                break
        dtype = None
        if self.accept("op", ";"):
            self.expect("name", "dtype")
            self.expect("op", "=")
            dtype = self.dtype()
        self.expect("op", ")")
        if fn == "select":
            if len(args) != 3:
                raise self.error("select takes (condition, if_true, if_false)", t)
            return Select(*args)
        if fn in ("min", "max"):
            if len(args) != 2:
                raise self.error(f"{fn} takes two arguments", t)
            return BinOp(fn, args[0], args[1])
        if fn in INTRINSICS:
            if not args and dtype is None:
                raise self.error(f"{fn} needs arguments", t)
            return Call(fn, tuple(args), dtype or args[0].dtype)
        raise self.error(
            f"unknown function {fn!r}: expressions call {', '.join(INTRINSICS)}, select, min, max and casts",
            t,
        )


def _extent(start: Expr, stop: Expr) -> Expr:
    """The extent of ``range(start, stop)`` as the printer wrote ``stop = start + extent``."""
    if isinstance(start, IntImm) and isinstance(stop, IntImm) and start.dtype == stop.dtype == "int64":
        return IntImm(stop.value - start.value)
    if isinstance(stop, BinOp) and stop.op == "+" and expr_equal(stop.a, start):
        return stop.b
    if expr_equal(stop, start):
        return IntImm(0)
    return BinOp("-", stop, start)


def _share_outputs(body: GraphFunction, outs: list[Var]) -> GraphFunction:
    """A fused node's body defines the node's own result vars (as fuse-ops builds it): the parsed body's
    result vars are replaced by the node's."""
    if len(body.outputs) != len(outs):
        return body
    mapping: dict[int, Var] = {}
    for b, o in zip(body.outputs, outs, strict=True):
        if not isinstance(b, Var) or b.type != o.type or b.name != o.name:
            return body
        mapping[b.uid] = o
    if any(p.uid in mapping for p in body.params):
        return body

    def sub(v: Any) -> Any:
        return mapping.get(v.uid, v) if isinstance(v, Var) else v

    nodes = tuple(
        n.with_(inputs=tuple(sub(v) for v in n.inputs), outputs=tuple(sub(v) for v in n.outputs))
        for n in body.nodes
    )
    return body.with_(nodes=nodes, outputs=tuple(sub(v) for v in body.outputs))


def parse_module(text: str, constants: Mapping[str, np.ndarray] | None = None) -> Module:
    """The module that ``text`` (as :func:`kiln.ir.print_module` prints it, or written by hand) describes.

    ``constants`` resolves elided constant data (``elided('<key>')``): the table
    :func:`kiln.ir.constant_table` gives for the printed module, or any mapping from the keys written in the
    text to arrays. Raises :class:`ParseError` (with line and column) on malformed text; the result is not
    verified (call :func:`kiln.ir.verify`)."""
    return _Parser(text, constants).module()


__all__ = ["ParseError", "parse_module", "register_record"]
