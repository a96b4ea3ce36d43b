"""Rewrites: take operators (or matched subgraphs) away from kiln's own lowering.

A rewrite is a pass made from a pattern (:mod:`kiln.transform.patterns`) and a function that, given a
:class:`~kiln.transform.patterns.Match`, returns what computes the match's results instead, or None to leave
the match to kiln:

* a call into a C library (:meth:`CLibrary.call`): the match becomes a ``call_extern`` node; the library's
  sources and headers go with the module (``externs``) and are compiled for the target and linked into the
  package; kiln generates a small adapter per call site, so library functions keep their own signatures
  (sizes as arguments) while ``call_extern`` keeps kiln's convention (pointers only);
* a tensor function (:class:`kiln.ir.TensorFunction`, for example from :mod:`kiln.ops.script`), or a
  :class:`TensorCall` of one on chosen inputs: the match becomes a ``call_tensor`` node.

    from kiln.transform.dispatch import CLibrary, lowering
    lib = CLibrary("myconv", sources=["myconv.c"], headers=["myconv.h"])

    @lowering("conv2d")                     # every 2D convolution, before legalize takes it
    def conv_in_c(m):
        x, w = m.root.inputs[:2]
        return lib.call("myconv_f32", x, w, OUT, *x.type.shape, *w.type.shape)

:func:`rewrite` declares the phase and place (``before``/``after`` the phase's own passes) where the pass
belongs; :func:`lowering` is a rewrite of one operator that runs just before ``legalize``. Either can be named
in a target's hooks (``hooks = { legalize = ["my_hooks:conv_in_c"] }``), registered with
:func:`kiln.transform.register_hook`, or put into any pipeline; it prints as ``module:function``.

Rewrites see the graph unfused: ``fused`` groups are expanded before matching and fused again after, so a
lowering override takes a convolution out of its group and the rest of the group is lowered as before. A
match whose inner results are used outside it (or are graph outputs) is left alone; roots are tried last
node first, so a larger pattern (conv2d+add+relu) takes its nodes before a smaller one could.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ir import Constant, GraphFunction, Module, Node, TensorFunction, Value, Var
from ..ir.extern import ExternSource, add_extern, get_extern
from .codegen_override import C_TYPES
from .patterns import Match, Op, Pattern, match_at, op
from .pipeline import PHASES, WHEN

# -------------------------------------------------------------------------------------------------- replacements


@dataclass(frozen=True)
class Out:
    """Marks where output ``index`` goes in a library call's arguments (:data:`OUT` is output 0)."""

    index: int = 0

    def __getitem__(self, i: int) -> Out:
        return Out(i)


OUT = Out(0)


@dataclass(frozen=True, eq=False)
class ExternCall:
    """A call of C function ``function`` of ``library``: ``args`` are graph values (passed as pointers to
    their data), :class:`Out` markers (pointers to the results), numbers (``int64_t`` or ``double``) and
    None (``NULL``). With no :class:`Out` among ``args``, the results' pointers follow the values and come
    before the numbers."""

    library: CLibrary
    function: str
    args: tuple[Any, ...]


@dataclass(frozen=True, eq=False)
class TensorCall:
    """Call tensor function ``func`` on ``inputs`` (the match's results are its outputs)."""

    func: TensorFunction
    inputs: tuple[Value, ...]


Replacement = ExternCall | TensorCall | TensorFunction


class CLibrary:
    """C sources and headers compiled for the target and linked into the package of every model that calls
    them. ``sources``/``headers`` are paths (read now) or ``(file name, text)`` pairs; ``include_dirs`` and
    ``flags`` are added to the compiler's command line (the compiler runs with kiln's warnings, errors off).
    """

    def __init__(
        self,
        name: str,
        sources: Sequence[str | Path | tuple[str, str]] = (),
        headers: Sequence[str | Path | tuple[str, str]] = (),
        include_dirs: Sequence[str | Path] = (),
        flags: Sequence[str] = (),
    ) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"library name {name!r} must be a C identifier")
        self.name = name
        self.sources = tuple(_read(s) for s in sources)
        self.headers = tuple(_read(h) for h in headers)
        self.include_dirs = tuple(str(Path(d).resolve()) for d in include_dirs)
        self.flags = tuple(flags)

    def call(self, function: str, *args: Any) -> ExternCall:
        """A replacement that calls ``function(args...)`` (see :class:`ExternCall`)."""
        for a in args:
            if a is not None and (
                not isinstance(a, Var | Constant | Out | int | float) or isinstance(a, bool)
            ):
                raise TypeError(f"{self.name}.{function}: argument {a!r} is not a value, OUT or a number")
        return ExternCall(self, function, tuple(args))

    def extern_source(self) -> ExternSource:
        return ExternSource(self.name, "c", (*self.sources, *self.headers), (), self.include_dirs, self.flags)

    def __repr__(self) -> str:
        return f"CLibrary({self.name!r}, sources={[n for n, _ in self.sources]})"


def _read(f: str | Path | tuple[str, str]) -> tuple[str, str]:
    if isinstance(f, tuple):
        return f
    p = Path(f)
    return p.name, p.read_text()


# ------------------------------------------------------------------------------------------------------ rewrites
class Rewrite:
    """A pass: every match of ``patterns`` whose function returns a replacement is replaced (see module doc)."""

    def __init__(
        self,
        fn: Callable[[Match], Replacement | None],
        patterns: Sequence[Pattern],
        phase: str,
        when: str,
    ) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
        if when not in WHEN:
            raise ValueError(f"when must be 'before' or 'after', got {when!r}")
        roots = [p for alt in patterns for p in (alt.options if hasattr(alt, "options") else (alt,))]
        if not all(isinstance(p, Op) for p in roots):
            raise TypeError("a rewrite's pattern must be rooted at an operator: op(...)")
        self.fn = fn
        self.roots: list[Op] = roots  # type: ignore[assignment]
        self.kiln_phase = phase
        self.kiln_when = when
        functools.update_wrapper(self, fn)  # __module__, __qualname__, __name__, __doc__: prints as module:fn

    def __call__(self, mod: Module) -> Module:
        return apply_rewrites(mod, [self])

    def __repr__(self) -> str:
        return f"<rewrite {self.__module__}:{self.__qualname__}>"  # type: ignore[attr-defined]


def rewrite(
    *patterns: Pattern, phase: str = "legalize", when: str = "before"
) -> Callable[[Callable[[Match], Replacement | None]], Rewrite]:
    """Decorator: a rewrite pass of ``phase`` (default: just before ``legalize``) over ``patterns``."""
    if not patterns:
        raise TypeError("rewrite() needs at least one pattern")

    def deco(fn: Callable[[Match], Replacement | None]) -> Rewrite:
        return Rewrite(fn, patterns, phase, when)

    return deco


def lowering(*ops: str | Pattern) -> Callable[[Callable[[Match], Replacement | None]], Rewrite]:
    """Decorator: a per-operator lowering override, run just before ``legalize``. ``ops`` are operator names
    (the match is that one node, ``m.root``) or patterns. The function returns a replacement, or None to
    leave the node to kiln's lowering."""
    return rewrite(*(op(o) if isinstance(o, str) else o for o in ops), phase="legalize", when="before")


def apply_rewrites(mod: Module, rewrites: Sequence[Rewrite]) -> Module:
    main = mod.main
    had_fused = any(n.op == "fused" for n in main.nodes)
    nodes = expand_fused(main.nodes)
    producers = {id(o): n for n in nodes for o in n.outputs}
    uses: dict[int, list[Node]] = {}
    for n in nodes:
        for v in n.inputs:
            uses.setdefault(id(v), []).append(n)
    outputs = {id(v) for v in main.outputs}
    taken: set[int] = set()
    placed: dict[int, Node] = {}  # root id -> replacement node
    state = _RewriteState(mod)
    target = mod.attrs.get("target")
    for root in reversed(nodes):
        if id(root) in taken or root.op in ("call_tensor", "call_extern", "view", "fused"):
            continue
        for rw in rewrites:
            m = next((x for p in rw.roots if (x := match_at(p, root, producers, taken, target))), None)
            if m is None or not _self_contained(m, uses, outputs):
                continue
            rep = rw.fn(m)
            if rep is None:
                continue
            placed[id(root)] = state.node_for(m, rep, rw)
            taken.update(id(n) for n in m.nodes)
            break
    if not placed:
        return mod
    new_nodes = [placed.get(id(n), n) for n in nodes if id(n) not in taken or id(n) in placed]
    new_main = main.with_(nodes=tuple(new_nodes))
    out = state.module.with_function(new_main)
    if had_fused:
        from .fuse_ops import fuse_ops

        out = fuse_ops(out)
    return out


def _self_contained(m: Match, uses: dict[int, list[Node]], outputs: set[int]) -> bool:
    inside = {id(n) for n in m.nodes}
    for n in m.nodes:
        if n is m.root:
            continue
        for o in n.outputs:
            if id(o) in outputs or any(id(u) not in inside for u in uses.get(id(o), [])):
                return False
    return True


def expand_fused(nodes: Sequence[Node]) -> list[Node]:
    """``nodes`` with every ``fused`` group replaced by its member nodes (on the group's actual inputs)."""
    out: list[Node] = []
    for n in nodes:
        if n.op != "fused":
            out.append(n)
            continue
        body: GraphFunction = n.attrs["body"]
        actual = {id(p): v for p, v in zip(body.params, n.inputs, strict=True)}
        out += [m.with_(inputs=tuple(actual.get(id(v), v) for v in m.inputs)) for m in body.nodes]
    return out


class _RewriteState:
    """The module being rewritten: tensor functions and library adapters added so far."""

    def __init__(self, mod: Module) -> None:
        self.module = mod

    def node_for(self, m: Match, rep: Replacement, rw: Rewrite) -> Node:
        name = m.root.name
        if isinstance(rep, TensorFunction):
            rep = TensorCall(rep, tuple(m.inputs))
        if isinstance(rep, TensorCall):
            fname = self._add_function(rep.func, rw)
            _check_buffers(rep.func, [*rep.inputs, *m.outputs], rw)
            return Node("call_tensor", tuple(rep.inputs), m.outputs, {"func": fname}, name)
        if isinstance(rep, ExternCall):
            symbol, values = self._adapter(rep, m.outputs)
            attrs = {"symbol": symbol, "library": rep.library.name, "function": rep.function}
            return Node("call_extern", tuple(values), m.outputs, attrs, name)
        raise TypeError(
            f"rewrite {rw!r} returned {type(rep).__name__}; expected a library call (CLibrary.call), a "
            "TensorFunction, a TensorCall or None"
        )

    def _add_function(self, f: TensorFunction, rw: Rewrite) -> str:
        funcs = self.module.functions
        for fname, existing in funcs.items():
            if existing is f:
                return fname
        base = re.sub(r"[^A-Za-z0-9_]", "_", f.name) or "custom"
        name, k = base, 0
        while name in funcs:
            k += 1
            name = f"{base}_{k}"
        attrs = {"ops": [f.name], "flops": 0, **f.attrs, "rewrite": rw.__qualname__}  # type: ignore[attr-defined]
        self.module = self.module.with_function(f.with_(name=name, attrs=attrs))
        return name

    def _adapter(self, call: ExternCall, outputs: Sequence[Var]) -> tuple[str, list[Value]]:
        """The adapter symbol for ``call`` (one per distinct call; shared like kernels) and its inputs."""
        lib = call.library
        args = list(call.args)
        if not any(isinstance(a, Out) for a in args):
            k = max((i + 1 for i, a in enumerate(args) if isinstance(a, Var | Constant)), default=0)
            args[k:k] = [Out(j) for j in range(len(outputs))]
        values: list[Value] = []
        params: list[str] = []
        exprs: list[str] = []
        protos: list[str] = []
        for a in args:
            if isinstance(a, Out):
                if not 0 <= a.index < len(outputs):
                    raise ValueError(
                        f"{lib.name}.{call.function}: OUT[{a.index}] but the match has {len(outputs)}"
                    )
                params.append(f"void *out{a.index}")
                exprs.append(f"out{a.index}")
                protos.append(f"{C_TYPES[outputs[a.index].type.dtype]} *")
            elif isinstance(a, Var | Constant):
                i = next((j for j, v in enumerate(values) if v is a), None)
                if i is None:
                    values.append(a)
                    i = len(values) - 1
                    params.append(f"void *in{i}")
                exprs.append(f"in{i}")
                protos.append(f"const {C_TYPES[a.type.dtype]} *")
            elif a is None:
                exprs.append("NULL")
                protos.append("const void *")
            elif isinstance(a, int):
                exprs.append(f"INT64_C({int(a)})")
                protos.append("int64_t")
            else:
                if not math.isfinite(a):
                    raise ValueError(f"{lib.name}.{call.function}: argument {a} is not finite")
                exprs.append(repr(float(a)))
                protos.append("double")
        outs_in_order = sorted({p for p in params if p.startswith("void *out")})
        params = [p for p in params if p.startswith("void *in")] + outs_in_order
        if len(outs_in_order) != len(outputs):
            raise ValueError(f"{lib.name}.{call.function}: every result needs an OUT argument")
        signature = ", ".join(params) or "void"
        key_text = "\n".join([call.function, signature, *exprs, *protos])
        key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
        src = get_extern(self.module.attrs, lib.name) or lib.extern_source()
        file = f"kiln_adapters_{lib.name}.c"
        text = dict(src.files).get(file) or _adapter_header(lib)
        found = re.search(rf"/\* kiln adapter {key} \*/\nvoid (\w+)\(", text)
        if found:
            return found.group(1), values
        n = text.count("/* kiln adapter ")
        base = call.function if call.function.startswith(lib.name) else f"{lib.name}_{call.function}"
        symbol = f"{base}_{n}"
        if not lib.headers and f" {call.function}(" not in text:
            text += f"void {call.function}({', '.join(protos) or 'void'});\n"
        text += (
            f"\n/* kiln adapter {key} */\nvoid {symbol}({signature});\n"
            f"void {symbol}({signature}) {{\n    {call.function}({', '.join(exprs)});\n}}\n"
        )
        self.module = self.module.with_attrs(
            **add_extern(self.module.attrs, src.with_file(file, text, symbol))
        )
        return symbol, values


def _adapter_header(lib: CLibrary) -> str:
    includes = "".join(f'#include "{n}"\n' for n, _ in lib.headers)
    return (
        f"/* Generated by kiln: adapters from kiln's call_extern convention (pointers: inputs, then outputs)\n"
        f" * to the functions of library {lib.name}. Do not edit. */\n"
        f"#include <stddef.h>\n#include <stdint.h>\n{includes}\n"
    )


def _check_buffers(f: TensorFunction, values: Sequence[Value], rw: Rewrite) -> None:
    if len(values) != len(f.params):
        raise ValueError(
            f"rewrite {rw!r}: tensor function {f.name} takes {len(f.params)} buffers, the match gives "
            f"{len(values)} (inputs and results)"
        )
    for v, b in zip(values, f.params, strict=True):
        if v.type.numel != b.numel or v.type.dtype != b.dtype:
            raise ValueError(f"rewrite {rw!r}: {v.name} {v.type} does not fit buffer {b!r} of {f.name}")


__all__ = [
    "OUT",
    "CLibrary",
    "ExternCall",
    "Out",
    "Rewrite",
    "TensorCall",
    "apply_rewrites",
    "expand_fused",
    "lowering",
    "rewrite",
]
