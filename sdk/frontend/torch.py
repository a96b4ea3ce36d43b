"""PyTorch -> kiln Module, through torch.export.

:func:`from_torch` exports an ``nn.Module`` with :func:`torch.export.export` and imports the program;
:func:`from_exported_program` imports a :class:`torch.export.ExportedProgram` directly, and
:func:`load_exported_program` reads one saved with :func:`torch.export.save` (a ``.pt2`` file).

How a program is imported:

* It is decomposed first (``ep.run_decompositions``) with torch's default table *minus every operator this
  importer maps itself*: operators kiln has whole (``linear``, ``matmul``, ``layer_norm``,
  ``scaled_dot_product_attention``, ``silu``, ``hardswish``, ``pad``...) stay whole, the rest becomes core
  ATen, which :data:`CONVERTERS` covers for CNNs and transformers.
* Parameters, buffers and lifted constants become :class:`~kiln.ir.Constant` (copies).
* Each ATen operator maps onto kiln operators through one converter in :data:`CONVERTERS`. A node whose
  tensor inputs are all constants (or that has none: ``arange``, ``full``, ``ones``...) is evaluated with
  torch itself at import, whatever the operator: rotary tables, causal masks and transposed weights become
  constants.
* Every result is checked against the shape and dtype torch.export recorded for the node.
* Half precision: float16 and bfloat16 weights are widened to float32 at import and the model computes in
  float32 (kiln has no half-precision kernels, so this holds on every target). Float16 inputs and outputs
  stay float16 at the package interface (cast on entry and exit); bfloat16 ones become float32 (NumPy has no
  bfloat16).
* Symbolic dimensions (``dynamic_shapes``): ``shapes={"x": (1, 3, 224, 224)}`` binds them to sizes (checked
  against the ranges the program was exported for); unbound ones stay symbolic (:class:`~kiln.ir.Sym`, named
  after the input and axis they come from, e.g. ``x_d0``) where kiln's operators allow it.

Errors: :class:`~kiln.frontend.onnx.UnsupportedOperatorError` lists every ATen operator kiln cannot import
with the source lines and module paths torch.export recorded for it (and any supported operator used in a way
kiln cannot import); :class:`~kiln.frontend.onnx.ModelLoadError` for a file that is not an exported program.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sympy
import torch
from torch import fx

from ..ir import Constant, GraphFunction, Module, Node, Sym, TensorType, Value, Var
from ..ir.types import Dim, np_dtype
from ..ops import OpError, get_op
from ..ops.base import broadcast_shapes
from .onnx import ModelLoadError, UnsupportedOperatorError, parse_dynamic_dim

aten = torch.ops.aten

#: torch element types -> kiln dtypes (half precision computes in float32, see the module docstring)
DTYPES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float32",
    torch.bfloat16: "float32",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.bool: "bool",
}

_BIG = 2**62  # "to the end" for slices (torch writes sys.maxsize)


class _Unsupported(Exception):
    """A converter cannot import this use of its operator (the message says why)."""


def kiln_dtype(dt: torch.dtype) -> str:
    try:
        return DTYPES[dt]
    except KeyError:
        known = ", ".join(sorted(set(DTYPES.values())))
        raise _Unsupported(f"element type {dt} is not supported (kiln computes in {known})") from None


# ------------------------------------------------------------------------------------------------ entry points
def from_torch(
    module: torch.nn.Module,
    example_inputs: Sequence[Any],
    dynamic_shapes: Any = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    shapes: Mapping[str, Sequence[int | str]] | None = None,
    name: str | None = None,
    strict: bool = False,
) -> Module:
    """Export ``module`` with ``torch.export.export(module, example_inputs, kwargs, dynamic_shapes=...)`` and
    import the program (:func:`from_exported_program`). The module is exported as it is: put it in
    inference mode (``module.eval()``) first."""
    try:
        ep = torch.export.export(
            module,
            tuple(example_inputs),
            kwargs=dict(kwargs) if kwargs else None,
            dynamic_shapes=dynamic_shapes,
            strict=strict,
        )
    except Exception as e:  # noqa: BLE001 - torch raises many types; say it was the export that failed
        raise ValueError(f"torch.export could not export {type(module).__name__}: {e}") from e
    return from_exported_program(ep, shapes=shapes, name=name or type(module).__name__)


def load_exported_program(path: str | Path) -> torch.export.ExportedProgram:
    """Read a program saved with ``torch.export.save`` (a ``.pt2`` file)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such file")
    try:
        return torch.export.load(str(p))
    except Exception as e:  # noqa: BLE001 - zip, pickle and schema errors all mean "not a program"
        raise ModelLoadError(f"{p} is not an exported program saved with torch.export.save: {e}") from None


def from_exported_program(
    program: torch.export.ExportedProgram | str | Path,
    shapes: Mapping[str, Sequence[int | str]] | None = None,
    name: str | None = None,
) -> Module:
    """Import an exported program (or a ``.pt2`` file) into a kiln Module with graph function ``main``."""
    if isinstance(program, (str, Path)):
        name = name or Path(program).stem
        program = load_exported_program(program)
    try:
        ep = program.run_decompositions(decomposition_table())
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"torch could not decompose the exported program: {e}") from e
    return _Importer(ep, dict(shapes or {})).run(name or "model")


def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """torch's default decompositions without the operators :data:`CONVERTERS` maps whole."""
    table = torch.export.default_decompositions()
    for op in CONVERTERS:
        if op in table:
            del table[op]
    return table  # type: ignore[return-value]


def supported_operators() -> dict[str, list[str]]:
    """The ATen operators :data:`CONVERTERS` maps: operator name -> overload names."""
    out: dict[str, list[str]] = {}
    for op in CONVERTERS:
        out.setdefault(f"{op.namespace}.{op._opname}", []).append(op._overloadname)
    return {k: sorted(v) for k, v in sorted(out.items())}


def supported_operators_markdown() -> str:
    """The list in docs/how-to/import-from-pytorch.md (generated: tests check that the page carries it)."""
    return "".join(
        f"- `{name}`: {', '.join(overloads)}\n" for name, overloads in supported_operators().items()
    )


# ------------------------------------------------------------------------------------------------ the importer
def location(node: fx.Node) -> str:
    """Where ``node`` came from: the innermost source line torch.export recorded and the module path."""
    parts = []
    frame = None  # the innermost frame: (file, line, function, source line)
    for text in (node.meta.get("stack_trace") or "").splitlines():
        m = re.match(r'\s*File "(.+)", line (\d+), in (.+)$', text)
        if m:
            frame = (*m.groups(), "")
        elif frame is not None and text.strip() and not frame[3]:
            frame = (*frame[:3], text.strip())
    if frame is not None:
        f, line, fn, code = frame
        parts.append(f"{f}:{line} in {fn}" + (f": {code}" if code else ""))
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        if path:
            parts.append(f"module {path} ({cls_name.rsplit('.', 1)[-1]})")
    return ", ".join(parts) or "no source location recorded"


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return (
            f"aten.{target.__name__}"
            if target.namespace == "aten"
            else f"{target.namespace}.{target.__name__}"
        )
    return getattr(target, "__name__", str(target))


_SKIP = {
    aten._assert_tensor_metadata.default,
    aten._assert_scalar.default,
    aten.sym_constrain_range_for_size.default,
    aten.sym_constrain_range.default,
    aten._assert_async.msg,
}


class _Importer:
    def __init__(self, ep: torch.export.ExportedProgram, shapes: dict[str, Sequence[int | str]]) -> None:
        self.ep = ep
        self.shapes = shapes
        self.env: dict[fx.Node, Any] = {}
        self.nodes: list[Node] = []
        self.node: fx.Node | None = None
        self.count = 0
        self.bind: dict[sympy.Symbol, sympy.Integer] = {}
        self.sym_names: dict[sympy.Symbol, sympy.Symbol] = {}
        self.bounds: dict[str, int] = {}  # unbound sizes: the largest value each may take (dynamic shapes)

    # ---- shapes and types
    def dim(self, d: Any) -> Dim:
        """A torch size (int or SymInt) as a kiln dimension."""
        if isinstance(d, int):
            return d
        expr = d.node.expr if isinstance(d, torch.SymInt) else d
        expr = sympy.sympify(sympy.sympify(expr).xreplace(self.bind))
        if expr.is_Integer:
            return int(expr)
        return self._sym(expr.xreplace(self.sym_names))

    def _sym(self, expr: Any) -> Dim:
        """A sympy size expression as a kiln dimension (:class:`~kiln.ir.Sym` arithmetic, so that sizes
        computed two ways compare equal and the package can compute them at run time)."""
        if expr.is_Integer:
            return int(expr)
        if isinstance(expr, sympy.Symbol):
            return Sym(expr.name)
        args = [self._sym(a) for a in expr.args]
        kind = type(expr).__name__
        out: Any
        if isinstance(expr, sympy.Add):
            out = 0
            for a in args:
                out = out + a
            return out
        if isinstance(expr, sympy.Mul):
            out = 1
            for a in args:
                out = out * a
            return out
        if kind in ("FloorDiv", "floor") and len(args) == 2:
            return args[0] // args[1]
        if kind in ("Mod", "PythonMod") and len(args) == 2:
            return args[0] % args[1]
        raise _Unsupported(f"the size {expr} ({kind}) is not an expression kiln computes at run time")

    def ttype(self, val: Any) -> TensorType:
        return TensorType(tuple(self.dim(d) for d in val.shape), kiln_dtype(val.dtype))

    @property
    def target(self) -> Any:
        """The operator of the node being converted."""
        assert self.node is not None
        return self.node.target

    def out_val(self, i: int | None = None) -> Any:
        assert self.node is not None
        val: Any = self.node.meta.get("val")
        return val[i] if i is not None else val

    def out_type(self, i: int | None = None) -> TensorType:
        return self.ttype(self.out_val(i))

    def scalar(self, v: Any) -> Any:
        """A Python scalar argument (SymInts resolved)."""
        if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            d = self.dim(v)
            if isinstance(d, Sym):
                raise _Unsupported(f"the value {d} depends on symbolic sizes; bind them with shapes=")
            return d
        return v

    # ---- building
    def fresh(self) -> str:
        assert self.node is not None
        # the node's first value takes its name, the others name.1, name.2... (never an fx name)
        self.count += 1
        return self.node.name if self.count == 1 else f"{self.node.name}.{self.count - 1}"

    def emit_n(self, op: str, inputs: Sequence[Value], **attrs: Any) -> list[Value]:
        """Apply kiln operator ``op``; folded right away (with its reference) when every input is constant."""
        opdef = get_op(op)
        if inputs and all(isinstance(v, Constant) for v in inputs):
            values = opdef.reference([v.data for v in inputs], attrs)  # type: ignore[union-attr]
            return [Constant(self.fresh(), np.ascontiguousarray(v)) for v in values]
        types = opdef.infer([v.type for v in inputs], attrs)
        outs = tuple(Var(self.fresh(), t) for t in types)
        assert self.node is not None
        self.nodes.append(Node(op, tuple(inputs), outs, attrs, self.node.name))
        return list(outs)

    def emit(self, op: str, inputs: Sequence[Value], **attrs: Any) -> Value:
        return self.emit_n(op, inputs, **attrs)[0]

    def const(self, value: Any, dtype: str) -> Constant:
        return Constant(self.fresh(), np.asarray(value, dtype=np_dtype(dtype)))

    def tensor(self, v: Any, dtype: str) -> Value:
        """``v`` (a value or a Python scalar) as a tensor of ``dtype``."""
        if isinstance(v, (Var, Constant)):
            return self.cast(v, dtype)
        return self.const(self.scalar(v), dtype)

    def cast(self, v: Value, dtype: str) -> Value:
        return v if v.type.dtype == dtype else self.emit("cast", [v], to=dtype)

    def reshape(self, v: Value, shape: Sequence[Dim]) -> Value:
        return v if tuple(v.type.shape) == tuple(shape) else self.emit("reshape", [v], shape=tuple(shape))

    # ---- the program
    def run(self, name: str) -> Module:
        ep = self.ep
        sig = ep.graph_signature
        mutated = [s for s in sig.output_specs if s.kind.name != "USER_OUTPUT"]
        if mutated:
            what = ", ".join(
                f"{s.target or s.arg.name} ({s.kind.name.lower().replace('_', ' ')})" for s in mutated
            )
            raise ValueError(
                f"the program mutates state: {what}; kiln compiles pure inference functions (a module in "
                "training mode updates its batch-norm statistics: call module.eval() before exporting)"
            )
        specs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
        user = [n for n in placeholders if specs[n.name].kind.name == "USER_INPUT"]
        self._bind_shapes(user)
        params: list[Var] = []
        for n in placeholders:
            spec = specs[n.name]
            self.node, self.count = n, 0
            if spec.kind.name == "USER_INPUT":
                val = n.meta.get("val")
                if not isinstance(val, torch.Tensor):
                    if n.users:
                        raise ValueError(
                            f"input {n.name!r} is not a tensor ({val!r}); kiln's inputs are tensors"
                        )
                    continue  # a constant argument torch.export specialized on
                try:
                    t = self.ttype(val)
                except _Unsupported as e:
                    raise ValueError(f"input {n.name!r}: {e}") from None
                if val.dtype == torch.float16:
                    p = Var(n.name, TensorType(t.shape, "float16"))
                    self.count = 1
                    self.env[n] = self.emit("cast", [p], to="float32")
                else:
                    p = Var(n.name, t)
                    self.env[n] = p
                params.append(p)
            elif spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                src = ep.state_dict if spec.target in ep.state_dict else ep.constants
                self.env[n] = Constant(spec.target or n.name, _np(src[spec.target]))
            else:
                raise ValueError(f"input {n.name!r} is a {spec.kind.name.lower()}, which kiln cannot import")
        unknown = sorted(set(self.shapes) - {p.name for p in params})
        if unknown:
            raise ValueError(
                f"shapes given for unknown inputs {unknown}; the program's inputs are {[p.name for p in params]}"
            )
        problems: dict[str, list[str]] = {}  # unsupported operator -> locations
        misuse: list[str] = []
        for n in ep.graph.nodes:
            if n.op != "call_function":
                continue
            self.node, self.count = n, 0
            try:
                self._convert(n)
            except _Unsupported as e:
                if e.args and e.args[0] == "__op__":
                    problems.setdefault(_op_name(n.target), []).append(location(n))
                else:
                    misuse.append(f"{_op_name(n.target)} ({n.name}): {e} [at {location(n)}]")
                self._placeholder(n)
            except (OpError, ValueError, KeyError, IndexError, TypeError) as e:
                misuse.append(f"{_op_name(n.target)} ({n.name}): {e} [at {location(n)}]")
                self._placeholder(n)
            except Exception as e:  # noqa: BLE001 - a bug here still gets a report naming the node, not a crash
                misuse.append(
                    f"{_op_name(n.target)} ({n.name}): the importer failed ({type(e).__name__}: {e}; please "
                    f"report it) [at {location(n)}]"
                )
                self._placeholder(n)
        if problems or misuse:
            parts = []
            if problems:
                ops = "; ".join(
                    f"{op} at {' | '.join(dict.fromkeys(locs))}" for op, locs in sorted(problems.items())
                )
                parts.append(f"unsupported aten operators: {ops}")
            if misuse:
                parts.append("operators used in ways kiln cannot import: " + "; ".join(misuse))
            raise UnsupportedOperatorError(". ".join(parts))
        out_node = next(n for n in ep.graph.nodes if n.op == "output")
        results = [self.env[a] if isinstance(a, fx.Node) else a for a in out_node.args[0]]
        return self._finish(name, params, results, out_node)

    def _bind_shapes(self, user: list[fx.Node]) -> None:
        """Name the program's size symbols after the inputs they come from, and bind those given in shapes."""
        ranges = self.ep.range_constraints
        for n in user:
            val = n.meta.get("val")
            if not isinstance(val, torch.Tensor):
                continue
            given = self.shapes.get(n.name)
            if given is not None and len(given) != val.ndim:
                raise ValueError(
                    f"shapes[{n.name!r}] = {tuple(given)} has rank {len(given)}; the input has {val.ndim}"
                )
            for axis, d in enumerate(val.shape):
                expr = sympy.sympify(d.node.expr) if isinstance(d, torch.SymInt) else sympy.Integer(int(d))
                if isinstance(expr, sympy.Symbol) and expr not in self.sym_names:
                    self.sym_names[expr] = sympy.Symbol(f"{n.name}_d{axis}")
                r = ranges.get(expr) if isinstance(expr, sympy.Symbol) else None
                if isinstance(expr, sympy.Symbol) and (given is None or isinstance(given[axis], str)):
                    # a size known at run time: its bound from shapes ("?:512") or the exported range
                    label = self.sym_names[expr].name
                    if given is not None:
                        label, bound = parse_dynamic_dim(str(given[axis]), label)
                        if label != self.sym_names[expr].name:
                            raise ValueError(
                                f"shapes[{n.name!r}] axis {axis}: write ?:{bound} (named by the program)"
                            )
                        if r is not None and r.upper.is_Integer and bound > int(r.upper):
                            raise ValueError(
                                f"shapes[{n.name!r}] axis {axis} bound {bound} is past the range [{r.lower}, "
                                f"{r.upper}] the program was exported for"
                            )
                        self.bounds[label] = bound
                    elif r is not None and r.upper.is_Integer:
                        self.bounds.setdefault(label, int(r.upper))
                    continue
                if given is None:
                    continue
                size = int(given[axis])
                if isinstance(expr, sympy.Symbol):
                    if expr in self.bind and self.bind[expr] != size:
                        raise ValueError(
                            f"shapes[{n.name!r}] gives axis {axis} size {size}, but the program ties it to a "
                            f"dimension already bound to {self.bind[expr]}"
                        )
                    r = ranges.get(expr)
                    if r is not None and (bool(size < r.lower) or bool(size > r.upper)):
                        upper = r.upper if r.upper.is_Integer else "inf"
                        raise ValueError(
                            f"shapes[{n.name!r}] axis {axis} = {size} is outside the range [{r.lower}, {upper}] "
                            "the program was exported for"
                        )
                    self.bind[expr] = sympy.Integer(size)
                elif expr.is_Integer and int(expr) != size:
                    raise ValueError(
                        f"shapes[{n.name!r}] axis {axis} = {size}, but the program was exported with size "
                        f"{int(expr)} there (mark it dynamic with dynamic_shapes= when exporting)"
                    )

    def _placeholder(self, n: fx.Node) -> None:
        """After an error: a var of the type torch recorded, so that the rest of the graph still converts and
        every problem is reported at once."""
        val = n.meta.get("val")

        def fake(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                try:
                    return Var(f"{n.name}_unsupported", self.ttype(v))
                except _Unsupported:
                    return Var(f"{n.name}_unsupported", TensorType(tuple(self.dim(d) for d in v.shape)))
            return v

        self.env[n] = tuple(fake(v) for v in val) if isinstance(val, (tuple, list)) else fake(val)

    def _convert(self, n: fx.Node) -> None:
        target = n.target
        if target in _SKIP:
            return
        if target is operator.getitem:
            seq, i = n.args
            self.env[n] = self.env[seq][i]  # type: ignore[index]
            return
        val = n.meta.get("val")
        if isinstance(val, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)):
            d = self.dim(val) if isinstance(val, (torch.SymInt, int)) else val
            self.env[n] = d
            return
        args = [self._arg(a) for a in n.args]
        kwargs = {k: self._arg(v) for k, v in n.kwargs.items()}
        if isinstance(target, torch._ops.OpOverload) and self._foldable(target, args, kwargs):
            self.env[n] = self._fold(target, args, kwargs)
            return
        conv = CONVERTERS.get(target)
        if conv is None:
            if isinstance(target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in target.tags:
                raise _Unsupported("it draws random numbers, and compiled models are deterministic")
            syms = sorted({str(a) for a in _leaves([args, kwargs]) if isinstance(a, Sym)})
            if syms and not any(isinstance(a, Var) for a in _leaves([args, kwargs])):
                raise _Unsupported(
                    f"it is computed from the symbolic sizes {', '.join(syms)}, and kiln evaluates it while "
                    "importing once they are known: bind them with shapes="
                )
            raise _Unsupported("__op__")
        result = conv(self, _bind(target, args, kwargs))
        self.env[n] = result
        self._check(n, result)

    def _arg(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env.get(a)
        if isinstance(a, (list, tuple)):
            return [self._arg(x) for x in a]
        return a

    def _foldable(self, target: Any, args: list[Any], kwargs: dict[str, Any]) -> bool:
        if torch.Tag.nondeterministic_seeded in target.tags or target in (aten.empty.memory_format,):
            return False
        leaves = _leaves([args, kwargs])
        if any(isinstance(a, (Var, Sym)) for a in leaves):
            return False
        val = self.out_val()
        vals = val if isinstance(val, (tuple, list)) else [val]
        # do not materialize huge constants (a broadcast of a scalar to an activation-sized tensor)
        return all(not isinstance(v, torch.Tensor) or v.numel() <= 1 << 24 for v in vals)

    def _fold(self, target: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        def to_torch(a: Any) -> Any:
            if isinstance(a, Constant):
                return torch.from_numpy(np.array(a.data))
            if isinstance(a, list):
                return [to_torch(x) for x in a]
            return a

        with torch.no_grad():
            out = target(*to_torch(args), **{k: to_torch(v) for k, v in kwargs.items()})
        if isinstance(out, (tuple, list)):
            return tuple(Constant(self.fresh(), _np(o)) if isinstance(o, torch.Tensor) else o for o in out)
        return Constant(self.fresh(), _np(out)) if isinstance(out, torch.Tensor) else out

    def _check(self, n: fx.Node, result: Any) -> None:
        """The converted value has the static shape and the dtype torch recorded for the node."""
        val: Any = n.meta.get("val")
        pairs = zip(result, val, strict=False) if isinstance(result, tuple) else [(result, val)]
        for got, want in pairs:
            if not isinstance(got, (Var, Constant)) or not isinstance(want, torch.Tensor):
                continue
            t = self.ttype(want)
            same = t.dtype == got.type.dtype and len(t.shape) == len(got.type.shape)
            same = same and all(
                a == b
                for a, b in zip(t.shape, got.type.shape, strict=True)
                if isinstance(a, int) and isinstance(b, int)
            )
            if not same:
                raise ValueError(
                    f"kiln computed {got.type} where torch has {t} (an importer bug: please report it)"
                )

    def _finish(self, name: str, params: list[Var], results: list[Any], out_node: fx.Node) -> Module:
        """Outputs named ``output`` (``output_0``, ``output_1``... for several), float16 ones cast back."""
        vals: Any = out_node.args[0]
        outs: list[Value] = []
        names = ["output"] if len(results) == 1 else [f"output_{i}" for i in range(len(results))]
        self.node = out_node
        for k, (v, fxn) in enumerate(zip(results, vals, strict=True)):
            self.count = 0
            if not isinstance(v, (Var, Constant)):
                raise ValueError(f"output {k} is not a tensor ({v!r}); kiln's outputs are tensors")
            meta = fxn.meta.get("val") if isinstance(fxn, fx.Node) else None
            if isinstance(meta, torch.Tensor) and meta.dtype == torch.float16:
                v = self.emit("cast", [v], to="float16")
            outs.append(v)
        # rename each output var (in its producer and its users) rather than copying it
        producers = {o: i for i, n in enumerate(self.nodes) for o in n.outputs}
        rename: dict[Value, Var] = {}
        final: list[Value] = []
        for v, nm in zip(outs, names, strict=True):
            if isinstance(v, Var) and v in producers and v not in rename:
                rename[v] = Var(nm, v.type)
                final.append(rename[v])
            elif isinstance(v, Var):  # an input, or a value already returned: a copy under the output's name
                out = Var(nm, v.type)
                self.nodes.append(Node("identity", (v,), (out,), {}, nm))
                final.append(out)
            else:
                final.append(Constant(nm, v.data))
        nodes = [
            n.with_(
                inputs=tuple(rename.get(x, x) for x in n.inputs),  # type: ignore[arg-type]
                outputs=tuple(rename.get(x, x) for x in n.outputs),
            )
            if any(x in rename for x in (*n.inputs, *n.outputs))
            else n
            for n in self.nodes
        ]
        main = GraphFunction("main", tuple(params), tuple(nodes), tuple(final), {"model_name": name})
        return Module({"main": main}, {"dim_bounds": dict(self.bounds)} if self.bounds else {})


def _leaves(a: Any) -> list[Any]:
    """The scalars and values in nested lists, tuples and dicts of arguments."""
    if isinstance(a, dict):
        a = list(a.values())
    if isinstance(a, (list, tuple)):
        return [x for v in a for x in _leaves(v)]
    return [a]


def _np(t: torch.Tensor) -> np.ndarray:
    """A NumPy copy of ``t`` (half precision widened to float32)."""
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    kiln_dtype(t.dtype)
    return np.array(t.contiguous().numpy(), copy=True)


def _bind(target: Any, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in."""
    out: dict[str, Any] = {}
    for i, a in enumerate(target._schema.arguments):
        if not a.kwarg_only and i < len(args):
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        else:
            out[a.name] = a.default_value if a.has_default_value() else None
    return out


# -------------------------------------------------------------------------------------------------- converters
Converter = Callable[[_Importer, dict[str, Any]], Any]
CONVERTERS: dict[Any, Converter] = {}


def converter(*ops: Any) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn

    return deco


def _ints(v: Any, n: int | None = None) -> list[int]:
    vals = [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]
    if n is not None and len(vals) == 1:
        vals = vals * n
    return vals


def _axes(dims: Any, ndim: int) -> list[int]:
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return list(range(ndim))
    return sorted(int(d) % max(ndim, 1) for d in _ints(dims))


def _promote(a: Any, b: Any) -> str:
    """torch's type promotion of two operands (values or Python scalars), as a kiln dtype."""

    def dummy(v: Any) -> Any:
        if isinstance(v, (Var, Constant)):
            dt = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}.get(
                v.type.dtype, getattr(torch, v.type.dtype)
            )
            return torch.empty((1,) if v.type.ndim else (), dtype=dt)
        return v

    return kiln_dtype(torch.result_type(dummy(a), dummy(b)))


# ---- elementwise
def _binary(op: str, compare: bool = False) -> Converter:
    def conv(im: _Importer, a: dict[str, Any]) -> Value:
        x, y = a["self"], a["other"]
        dt = _promote(x, y) if compare else im.out_type().dtype
        xt, yt = im.tensor(x, dt), im.tensor(y, dt)
        alpha = a.get("alpha")
        if alpha is not None and alpha != 1:
            yt = im.emit("mul", [yt, im.const(alpha, dt)])
        return im.emit(op, [xt, yt])

    return conv


for _ops, _kop, _cmp in (
    ((aten.add.Tensor, aten.add.Scalar), "add", False),
    ((aten.sub.Tensor, aten.sub.Scalar), "sub", False),
    ((aten.mul.Tensor, aten.mul.Scalar), "mul", False),
    ((aten.div.Tensor, aten.div.Scalar), "div", False),
    ((aten.pow.Tensor_Tensor,), "pow", False),
    ((aten.maximum.default, aten.max.other), "maximum", False),
    ((aten.minimum.default, aten.min.other), "minimum", False),
    ((aten.eq.Tensor, aten.eq.Scalar), "equal", True),
    ((aten.lt.Tensor, aten.lt.Scalar), "less", True),
    ((aten.le.Tensor, aten.le.Scalar), "less_equal", True),
    ((aten.gt.Tensor, aten.gt.Scalar), "greater", True),
    ((aten.ge.Tensor, aten.ge.Scalar), "greater_equal", True),
):
    converter(*_ops)(_binary(_kop, _cmp))
CONVERTERS[aten.fmod.Tensor] = CONVERTERS[aten.fmod.Scalar] = lambda im, a: im.emit(
    "mod", [im.tensor(a["self"], im.out_type().dtype), im.tensor(a["other"], im.out_type().dtype)], fmod=1
)


@converter(aten.ne.Tensor, aten.ne.Scalar)
def _ne(im: _Importer, a: dict[str, Any]) -> Value:
    return im.emit("not", [_binary("equal", True)(im, a)])


@converter(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    x, y = im.tensor(a["self"], dt), im.tensor(a["other"], dt)
    if a.get("alpha") not in (None, 1):
        x = im.emit("mul", [x, im.const(a["alpha"], dt)])
    return im.emit("sub", [y, x])


@converter(aten.div.Tensor_mode, aten.div.Scalar_mode, aten.floor_divide.default, aten.floor_divide.Scalar)
def _div_mode(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    x, y = im.tensor(a["self"], dt), im.tensor(a["other"], dt)
    mode = a.get("rounding_mode", "floor")
    if mode is None:
        return im.emit("div", [x, y])
    if dt.startswith("float"):
        q = im.emit("div", [x, y])
        return im.emit("floor", [q]) if mode == "floor" else _trunc(im, q)
    if mode == "trunc":
        return im.emit("div", [x, y])  # integer division truncates
    # floor: (x - x mod y) / y is exact, with Python's mod (the divisor's sign)
    return im.emit("div", [im.emit("sub", [x, im.emit("mod", [x, y])]), y])


@converter(aten.remainder.Tensor, aten.remainder.Scalar)
def _remainder(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    return im.emit("mod", [im.tensor(a["self"], dt), im.tensor(a["other"], dt)])


def _trunc(im: _Importer, x: Value) -> Value:
    zero = im.const(0, x.type.dtype)
    return im.emit("where", [im.emit("less", [x, zero]), im.emit("ceil", [x]), im.emit("floor", [x])])


@converter(aten.pow.Tensor_Scalar)
def _pow_scalar(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    x, e = im.cast(a["self"], dt), float(im.scalar(a["exponent"]))
    if e == 1:
        return x
    if e == 2:
        return im.emit("mul", [x, x])
    if e == 0.5 and dt.startswith("float"):
        return im.emit("sqrt", [x])
    if e == -1 and dt.startswith("float"):
        return im.emit("reciprocal", [x])
    if e == -0.5 and dt.startswith("float"):
        return im.emit("reciprocal", [im.emit("sqrt", [x])])
    return im.emit("pow", [x, im.const(e, dt)])


@converter(aten.pow.Scalar)
def _pow_base(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    return im.emit("pow", [im.const(im.scalar(a["self"]), dt), im.cast(a["exponent"], dt)])


_aops: tuple[Any, ...]


def _unary(op: str, **attrs: Any) -> Converter:
    def conv(im: _Importer, a: dict[str, Any]) -> Value:
        x = a["self"] if "self" in a else a["input"]
        return im.emit(op, [im.cast(x, im.out_type().dtype)], **attrs)

    return conv


for _aop, _kop in (
    (aten.relu.default, "relu"),
    (aten.neg.default, "neg"),
    (aten.abs.default, "abs"),
    (aten.exp.default, "exp"),
    (aten.log.default, "log"),
    (aten.sqrt.default, "sqrt"),
    (aten.tanh.default, "tanh"),
    (aten.sigmoid.default, "sigmoid"),
    (aten.erf.default, "erf"),
    (aten.floor.default, "floor"),
    (aten.ceil.default, "ceil"),
    (aten.round.default, "round"),
    (aten.sin.default, "sin"),
    (aten.cos.default, "cos"),
    (aten.tan.default, "tan"),
    (aten.asin.default, "asin"),
    (aten.acos.default, "acos"),
    (aten.atan.default, "atan"),
    (aten.sinh.default, "sinh"),
    (aten.cosh.default, "cosh"),
    (aten.asinh.default, "asinh"),
    (aten.acosh.default, "acosh"),
    (aten.atanh.default, "atanh"),
    (aten.sign.default, "sign"),
    (aten.reciprocal.default, "reciprocal"),
    (aten.silu.default, "swish"),
    (aten.mish.default, "mish"),
    (aten.hardswish.default, "hard_swish"),
):
    converter(_aop)(_unary(_kop))
converter(aten.hardsigmoid.default)(_unary("hard_sigmoid", alpha=1 / 6, beta=0.5))


@converter(aten.isnan.default, aten.isinf.default)
def _isnan(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    if not x.type.dtype.startswith("float"):
        return im.const(np.zeros(x.type.static_shape, bool), "bool")
    return im.emit("is_nan" if im.target == aten.isnan.default else "is_inf", [x])


@converter(aten.logical_not.default, aten.bitwise_not.default)
def _not(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    if im.target == aten.bitwise_not.default and x.type.dtype != "bool":
        raise _Unsupported("bitwise_not of integers is not supported (of booleans it is)")
    return im.emit("not", [im.cast(x, "bool")])


def _logical(op: str) -> Converter:
    def conv(im: _Importer, a: dict[str, Any]) -> Value:
        x, y = a["self"], a["other"]
        if "bitwise" in str(im.target) and _promote(x, y) != "bool":
            raise _Unsupported(f"bitwise {op} of integers is not supported (of booleans it is)")
        return im.emit(op, [im.tensor(x, "bool"), im.tensor(y, "bool")])

    return conv


for _aops, _kop in (
    ((aten.logical_and.default, aten.bitwise_and.Tensor, aten.bitwise_and.Scalar), "and"),
    ((aten.logical_or.default, aten.bitwise_or.Tensor, aten.bitwise_or.Scalar), "or"),
    ((aten.logical_xor.default, aten.bitwise_xor.Tensor, aten.bitwise_xor.Scalar), "xor"),
):
    converter(*_aops)(_logical(_kop))


@converter(aten.rsqrt.default)
def _rsqrt(im: _Importer, a: dict[str, Any]) -> Value:
    return im.emit("reciprocal", [im.emit("sqrt", [im.cast(a["self"], im.out_type().dtype)])])


@converter(aten.log1p.default, aten.log2.default, aten.log10.default, aten.expm1.default, aten.exp2.default)
def _log_variants(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    x = im.cast(a["self"], dt)
    t = im.target  # type: ignore[union-attr]
    if t == aten.log1p.default:
        return im.emit("log", [im.emit("add", [x, im.const(1.0, dt)])])
    if t == aten.expm1.default:
        return im.emit("sub", [im.emit("exp", [x]), im.const(1.0, dt)])
    if t == aten.exp2.default:
        return im.emit("exp", [im.emit("mul", [x, im.const(math.log(2.0), dt)])])
    base = 2.0 if t == aten.log2.default else 10.0
    return im.emit("mul", [im.emit("log", [x]), im.const(1 / math.log(base), dt)])


@converter(aten.trunc.default)
def _trunc_conv(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    return _trunc(im, x) if x.type.dtype.startswith("float") else x


@converter(aten.square.default)
def _square(im: _Importer, a: dict[str, Any]) -> Value:
    x = im.cast(a["self"], im.out_type().dtype)
    return im.emit("mul", [x, x])


@converter(aten.round.decimals)
def _round_decimals(im: _Importer, a: dict[str, Any]) -> Value:
    x, k = a["self"], int(a["decimals"])
    scale = im.const(10.0**k, x.type.dtype)
    return im.emit("div", [im.emit("round", [im.emit("mul", [x, scale])]), scale])


def _clamp_values(im: _Importer, x: Value, lo: Any, hi: Any) -> Value:
    dt = im.out_type().dtype
    x = im.cast(x, dt)
    tensors = isinstance(lo, (Var, Constant)) or isinstance(hi, (Var, Constant))
    if dt.startswith("float") and not tensors:
        return im.emit(
            "clip",
            [x],
            min=float(im.scalar(lo)) if lo is not None else -math.inf,
            max=float(im.scalar(hi)) if hi is not None else math.inf,
        )
    if lo is not None:
        x = im.emit("maximum", [x, im.tensor(lo, dt)])
    if hi is not None:
        x = im.emit("minimum", [x, im.tensor(hi, dt)])
    return x


@converter(aten.clamp.default, aten.clamp.Tensor)
def _clamp(im: _Importer, a: dict[str, Any]) -> Value:
    return _clamp_values(im, a["self"], a["min"], a["max"])


@converter(aten.clamp_min.default, aten.clamp_min.Tensor)
def _clamp_min(im: _Importer, a: dict[str, Any]) -> Value:
    return _clamp_values(im, a["self"], a["min"], None)


@converter(aten.clamp_max.default, aten.clamp_max.Tensor)
def _clamp_max(im: _Importer, a: dict[str, Any]) -> Value:
    return _clamp_values(im, a["self"], None, a["max"])


@converter(aten.hardtanh.default)
def _hardtanh(im: _Importer, a: dict[str, Any]) -> Value:
    return _clamp_values(im, a["self"], a["min_val"], a["max_val"])


@converter(aten.relu6.default)
def _relu6(im: _Importer, a: dict[str, Any]) -> Value:
    return _clamp_values(im, a["self"], 0.0, 6.0)


@converter(aten.leaky_relu.default)
def _leaky_relu(im: _Importer, a: dict[str, Any]) -> Value:
    return im.emit("leaky_relu", [a["self"]], alpha=float(a["negative_slope"]))


@converter(aten.elu.default)
def _elu(im: _Importer, a: dict[str, Any]) -> Value:
    alpha, scale, input_scale = (float(a[k]) for k in ("alpha", "scale", "input_scale"))
    if input_scale != 1.0:
        raise _Unsupported(f"elu with input_scale {input_scale} is not supported (1 is)")
    if scale == 1.0:
        return im.emit("elu", [a["self"]], alpha=alpha)
    return im.emit("selu", [a["self"]], alpha=alpha, gamma=scale)


@converter(aten.gelu.default)
def _gelu(im: _Importer, a: dict[str, Any]) -> Value:
    return im.emit("gelu", [a["self"]], approximate=str(a["approximate"]))


@converter(aten.softplus.default)
def _softplus(im: _Importer, a: dict[str, Any]) -> Value:
    x, beta = a["self"], float(a["beta"])
    if beta == 1.0:
        return im.emit("softplus", [x])
    b = im.const(beta, x.type.dtype)
    return im.emit("div", [im.emit("softplus", [im.emit("mul", [x, b])]), b])


@converter(aten._prelu_kernel.default, aten.prelu.default)
def _prelu(im: _Importer, a: dict[str, Any]) -> Value:
    x, w = a["self"], a["weight"]
    if im.target == aten.prelu.default and w.type.ndim == 1 and x.type.ndim >= 2:
        w = im.reshape(w, (w.type.shape[0],) + (1,) * (x.type.ndim - 2))
    return im.emit("prelu", [x, w])


@converter(aten.where.self)
def _where(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    return im.emit(
        "where", [im.cast(a["condition"], "bool"), im.tensor(a["self"], dt), im.tensor(a["other"], dt)]
    )


@converter(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    return im.emit("where", [im.cast(a["mask"], "bool"), im.tensor(a["value"], x.type.dtype), x])


# ---- copies and casts
@converter(
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.contiguous.default,
    aten.lift_fresh_copy.default,
    aten._to_copy.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten.to.device,
    aten.type_as.default,
    aten.dropout.default,
    aten.feature_dropout.default,
    aten.alpha_dropout.default,
)
def _copy_or_cast(im: _Importer, a: dict[str, Any]) -> Value:
    x: Value = a["self"] if "self" in a else a["input"]
    if a.get("train"):
        raise _Unsupported("dropout in training mode; call module.eval() before exporting")
    return im.cast(x, im.out_type().dtype)


@converter(aten.native_dropout.default)
def _native_dropout(im: _Importer, a: dict[str, Any]) -> tuple[Value, Value]:
    if a["train"]:
        raise _Unsupported("dropout in training mode; call module.eval() before exporting")
    x = a["input"]
    return x, im.const(np.ones(x.type.static_shape, bool), "bool")


@converter(aten.copy.default)
def _copy(im: _Importer, a: dict[str, Any]) -> Value:
    t = im.out_type()
    return im.emit("expand", [im.cast(a["src"], t.dtype)], shape=t.shape)


# ---- shapes
@converter(
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.view_copy.default,
    aten.flatten.using_ints,
    aten.unflatten.int,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.unsqueeze.default,
)
def _reshape(im: _Importer, a: dict[str, Any]) -> Value:
    return im.reshape(a["self"], im.out_type().shape)


@converter(aten.permute.default)
def _permute(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    perm = tuple(int(d) % max(x.type.ndim, 1) for d in a["dims"])
    return x if perm == tuple(range(x.type.ndim)) else im.emit("transpose", [x], perm=perm)


@converter(aten.transpose.int, aten.t.default, aten.numpy_T.default)
def _transpose(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    nd = x.type.ndim
    if nd < 2:
        return x
    if "dim0" in a:
        d0, d1 = int(a["dim0"]) % nd, int(a["dim1"]) % nd
        perm = list(range(nd))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    else:
        perm = list(reversed(range(nd)))
    return x if perm == sorted(perm) else im.emit("transpose", [x], perm=tuple(perm))


@converter(aten.expand.default, aten.expand_as.default, aten.broadcast_to.default)
def _expand(im: _Importer, a: dict[str, Any]) -> Value:
    x, t = a["self"], im.out_type()
    if tuple(x.type.shape) == tuple(t.shape):
        return x
    return im.emit("expand", [x], shape=t.shape)


@converter(aten.repeat.default)
def _repeat(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    reps = [int(im.scalar(r)) for r in a["repeats"]]
    x = im.reshape(x, (1,) * (len(reps) - x.type.ndim) + tuple(x.type.shape))
    return x if all(r == 1 for r in reps) else im.emit("tile", [x], repeats=tuple(reps))


@converter(aten.cat.default, aten.concat.default, aten.concatenate.default)
def _cat(im: _Importer, a: dict[str, Any]) -> Value:
    t = im.out_type()
    # torch (like NumPy before it) skips 1-D empty tensors in a concatenation
    vals = [im.cast(v, t.dtype) for v in a["tensors"] if not (v.type.ndim == 1 and v.type.shape[0] == 0)]
    if len(vals) == 1:
        return vals[0]
    return im.emit("concat", vals, axis=int(a["dim"]) % t.ndim)


@converter(aten.stack.default)
def _stack(im: _Importer, a: dict[str, Any]) -> Value:
    t = im.out_type()
    axis = int(a["dim"]) % t.ndim
    vals = [
        im.reshape(im.cast(v, t.dtype), t.shape[:axis] + (1,) + t.shape[axis + 1 :]) for v in a["tensors"]
    ]
    return vals[0] if len(vals) == 1 else im.emit("concat", vals, axis=axis)


def _split(im: _Importer, x: Value, sizes: list[int], axis: int) -> tuple[Value, ...]:
    if len(sizes) == 1:
        return (x,)
    return tuple(im.emit_n("split", [x], axis=axis, sizes=tuple(sizes)))


@converter(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int)
def _split_conv(im: _Importer, a: dict[str, Any]) -> tuple[Value, ...]:
    x = a["self"]
    axis = int(a["dim"]) % x.type.ndim
    vals = im.out_val()
    sizes = [im.ttype(v).shape[axis] if im.target != aten.unbind.int else 1 for v in vals]
    if not all(isinstance(d, int) for d in sizes):
        raise _Unsupported(f"splitting symbolic dimension {x.type.shape[axis]}; bind it with shapes=")
    parts = _split(im, x, sizes, axis)  # type: ignore[arg-type]
    if im.target == aten.unbind.int:
        return tuple(im.reshape(p, im.ttype(v).shape) for p, v in zip(parts, vals, strict=True))
    return parts


@converter(aten.slice.Tensor)
def _slice(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    axis = int(a["dim"]) % x.type.ndim
    start = 0 if a["start"] is None else int(im.scalar(a["start"]))
    end = _BIG if a["end"] is None else min(int(im.scalar(a["end"])), _BIG)
    step = int(a["step"])
    size = x.type.shape[axis]
    if start == 0 and step == 1 and (end >= _BIG or (isinstance(size, int) and end >= size)):
        return x
    return im.emit("slice", [x], starts=(start,), ends=(end,), axes=(axis,), steps=(step,))


@converter(aten.select.int)
def _select(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    axis = int(a["dim"]) % x.type.ndim
    i = int(im.scalar(a["index"]))
    size = x.type.shape[axis]
    if i < 0:
        if not isinstance(size, int):
            raise _Unsupported("a negative index into a symbolic dimension; bind it with shapes=")
        i += size
    y = im.emit("slice", [x], starts=(i,), ends=(i + 1,), axes=(axis,), steps=(1,))
    return im.reshape(y, im.out_type().shape)


@converter(aten.narrow.default)
def _narrow(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    axis = int(a["dim"]) % x.type.ndim
    start, length = int(im.scalar(a["start"])), int(im.scalar(a["length"]))
    return im.emit("slice", [x], starts=(start,), ends=(start + length,), axes=(axis,), steps=(1,))


@converter(aten.slice_scatter.default)
def _slice_scatter(im: _Importer, a: dict[str, Any]) -> Value:
    x, src = a["self"], a["src"]
    axis = int(a["dim"]) % x.type.ndim
    size = x.type.shape[axis]
    if not isinstance(size, int):
        raise _Unsupported("slice_scatter along a symbolic dimension; bind it with shapes=")
    start = 0 if a["start"] is None else int(im.scalar(a["start"]))
    end = size if a["end"] is None else min(int(im.scalar(a["end"])), size)
    start, end = start % size if start < 0 else start, end + size if end < 0 else end
    if int(a["step"]) != 1:
        raise _Unsupported("slice_scatter with a step other than 1")
    parts = []
    if start > 0:
        parts.append(im.emit("slice", [x], starts=(0,), ends=(start,), axes=(axis,), steps=(1,)))
    parts.append(im.cast(src, x.type.dtype))
    if end < size:
        parts.append(im.emit("slice", [x], starts=(end,), ends=(size,), axes=(axis,), steps=(1,)))
    return parts[0] if len(parts) == 1 else im.emit("concat", parts, axis=axis)


@converter(aten.select_scatter.default)
def _select_scatter(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    axis = int(a["dim"]) % x.type.ndim
    i = int(im.scalar(a["index"]))
    i = i + int(x.type.shape[axis]) if i < 0 else i  # type: ignore[arg-type]
    src = im.reshape(a["src"], x.type.shape[:axis] + (1,) + x.type.shape[axis + 1 :])
    return _slice_scatter(im, {"self": x, "src": src, "dim": axis, "start": i, "end": i + 1, "step": 1})


@converter(aten.index_select.default)
def _index_select(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    return im.emit("gather", [x, a["index"]], axis=int(a["dim"]) % x.type.ndim)


@converter(aten.index.Tensor)
def _index(im: _Importer, a: dict[str, Any]) -> Value:
    """Advanced indexing ``x[..., i, j, ...]``: one index tensor is a gather; several (broadcast together)
    are a gather_nd over the indexed axes, moved to the front and back, with NumPy's placement rule (the
    broadcast index shape replaces adjacent indexed axes in place, and goes first otherwise)."""
    x, indices = a["self"], list(a["indices"])
    used = [i for i, v in enumerate(indices) if v is not None]
    if any(indices[i].type.dtype == "bool" for i in used):
        raise _Unsupported("indexing with a boolean mask (its result size depends on the data)")
    if len(used) == 1:
        return im.emit("gather", [x, indices[used[0]]], axis=used[0])
    t = im.out_type()
    bshape = broadcast_shapes(*(indices[i].type.shape for i in used))
    parts = [
        im.reshape(
            im.emit("expand", [im.cast(indices[i], "int64")], shape=bshape)
            if tuple(indices[i].type.shape) != tuple(bshape)
            else im.cast(indices[i], "int64"),
            (*bshape, 1),
        )
        for i in used
    ]
    ind = im.emit("concat", parts, axis=len(bshape))
    rest = [d for d in range(x.type.ndim) if d not in used]
    perm = (*used, *rest)
    xt = x if perm == tuple(range(x.type.ndim)) else im.emit("transpose", [x], perm=perm)
    y = im.emit("gather_nd", [xt, ind], batch_dims=0)  # shape: bshape + the other axes in order
    adjacent = used == list(range(used[0], used[-1] + 1))
    if adjacent and used[0] > 0:  # the index shape goes where the indexed axes were
        nb, lead = len(bshape), used[0]
        order = (*range(nb, nb + lead), *range(nb), *range(nb + lead, y.type.ndim))
        y = im.emit("transpose", [y], perm=order)
    return im.reshape(y, t.shape)


@converter(aten.gather.default)
def _gather_elements(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    return im.emit("gather_elements", [x, a["index"]], axis=int(a["dim"]) % x.type.ndim)


_SCATTER_REDUCTIONS = {
    "sum": "add",
    "add": "add",
    "prod": "mul",
    "multiply": "mul",
    "amax": "max",
    "amin": "min",
}


@converter(
    aten.scatter.src,
    aten.scatter.value,
    aten.scatter_add.default,
    aten.scatter.reduce,
    aten.scatter_reduce.two,
)
def _scatter(im: _Importer, a: dict[str, Any]) -> Value:
    x, index = a["self"], a["index"]
    axis = int(a["dim"]) % x.type.ndim
    reduction = "add" if im.target == aten.scatter_add.default else "none"
    if a.get("reduce") is not None:
        if a["reduce"] not in _SCATTER_REDUCTIONS or not a.get("include_self", True):
            raise _Unsupported(
                f"scatter with reduce={a['reduce']!r} (sum, prod, amax and amin are supported)"
            )
        reduction = _SCATTER_REDUCTIONS[a["reduce"]]
    if "src" in a:
        src = im.cast(a["src"], x.type.dtype)
        if tuple(src.type.shape) != tuple(
            index.type.shape
        ):  # torch reads only the index-shaped corner of src
            src = im.emit(
                "slice",
                [src],
                starts=(0,) * src.type.ndim,
                ends=tuple(index.type.shape),
                axes=tuple(range(src.type.ndim)),
                steps=(1,) * src.type.ndim,
            )
    else:
        if not index.type.is_static:
            raise _Unsupported("scatter of a value with a symbolic index shape; bind it with shapes=")
        src = im.const(np.full(index.type.static_shape, im.scalar(a["value"])), x.type.dtype)
    return im.emit("scatter_elements", [x, index, src], axis=axis, reduction=reduction)


@converter(aten.sort.default, aten.sort.stable, aten.argsort.default)
def _sort(im: _Importer, a: dict[str, Any]) -> Any:
    x = a["self"]
    axis = int(a["dim"]) % x.type.ndim
    n = x.type.shape[axis]
    if not isinstance(n, int):
        raise _Unsupported("sorting along a symbolic dimension; bind it with shapes=")
    values, indices = im.emit_n("top_k", [x], k=n, axis=axis, largest=int(bool(a["descending"])))
    return indices if im.target == aten.argsort.default else (values, indices)


@converter(aten.embedding.default)
def _embedding(im: _Importer, a: dict[str, Any]) -> Value:
    return im.emit("gather", [a["weight"], a["indices"]], axis=0)


@converter(aten.flip.default)
def _flip(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    axes = _axes(a["dims"], x.type.ndim)
    n = len(axes)
    return im.emit("slice", [x], starts=(-1,) * n, ends=(-_BIG,) * n, axes=tuple(axes), steps=(-1,) * n)


@converter(aten.roll.default)
def _roll(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    shifts, dims = _ints(a["shifts"]), _ints(a["dims"]) if a["dims"] else []
    if not dims:
        flat = im.reshape(x, (x.type.numel,))
        return im.reshape(_roll(im, {"self": flat, "shifts": shifts, "dims": [0]}), x.type.shape)
    for s, d in zip(shifts, dims, strict=True):
        d %= x.type.ndim
        size = int(x.type.shape[d])  # type: ignore[arg-type]
        s %= size
        if s:
            tail = im.emit("slice", [x], starts=(size - s,), ends=(size,), axes=(d,), steps=(1,))
            head = im.emit("slice", [x], starts=(0,), ends=(size - s,), axes=(d,), steps=(1,))
            x = im.emit("concat", [tail, head], axis=d)
    return x


def _pad_values(pad: Sequence[int], ndim: int) -> tuple[int, ...]:
    """torch's pad list (last dimension first, begin/end pairs) as kiln's (begins..., ends...)."""
    begins, ends = [0] * ndim, [0] * ndim
    for i in range(len(pad) // 2):
        begins[ndim - 1 - i], ends[ndim - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    return tuple(begins + ends)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@converter(aten.constant_pad_nd.default, aten.pad.default)
def _pad(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    mode = _PAD_MODES.get(str(a.get("mode", "constant")))
    if mode is None:
        raise _Unsupported(f"pad mode {a['mode']!r} is not supported ({', '.join(_PAD_MODES)} are)")
    value = a.get("value") or 0.0
    return im.emit("pad", [x], pads=_pad_values(_ints(a["pad"]), x.type.ndim), mode=mode, value=float(value))


def _pad_kind(mode: str) -> Converter:
    def conv(im: _Importer, a: dict[str, Any]) -> Value:
        x = a["self"]
        return im.emit("pad", [x], pads=_pad_values(_ints(a["padding"]), x.type.ndim), mode=mode, value=0.0)

    return conv


for _aops, _kop in (
    (
        (aten.reflection_pad1d.default, aten.reflection_pad2d.default, aten.reflection_pad3d.default),
        "reflect",
    ),
    (
        (aten.replication_pad1d.default, aten.replication_pad2d.default, aten.replication_pad3d.default),
        "edge",
    ),
):
    converter(*_aops)(_pad_kind(_kop))


def _tri(upper: bool) -> Converter:
    def conv(im: _Importer, a: dict[str, Any]) -> Value:
        x, k = a["self"], int(a["diagonal"])
        n, m = x.type.shape[-2:]
        if not isinstance(n, int) or not isinstance(m, int):
            raise _Unsupported(f"{'triu' if upper else 'tril'} needs static matrix dimensions, got {x.type}")
        diff = np.arange(m)[None, :] - np.arange(n)[:, None]
        mask = diff >= k if upper else diff <= k
        return im.emit("where", [im.const(mask, "bool"), x, im.const(0, x.type.dtype)])

    return conv


converter(aten.tril.default)(_tri(False))
converter(aten.triu.default)(_tri(True))


@converter(aten.pixel_shuffle.default, aten.pixel_unshuffle.default)
def _pixel_shuffle(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    if x.type.ndim != 4 or not x.type.is_static:
        raise _Unsupported(f"needs a static NCHW input, got {x.type}")
    n, c, h, w = x.type.static_shape
    if im.target == aten.pixel_shuffle.default:
        b = int(a["upscale_factor"])
        t = im.reshape(x, (n, c // (b * b), b, b, h, w))
        t = im.emit("transpose", [t], perm=(0, 1, 4, 2, 5, 3))
    else:
        b = int(a["downscale_factor"])
        t = im.reshape(x, (n, c, h // b, b, w // b, b))
        t = im.emit("transpose", [t], perm=(0, 1, 3, 5, 2, 4))
    return im.reshape(t, im.out_type().shape)


# ---- creation (folded at import when static; these handle what is left)
@converter(aten.zeros_like.default, aten.ones_like.default, aten.full_like.default, aten.empty_like.default)
def _like(im: _Importer, a: dict[str, Any]) -> Value:
    t = im.out_type()
    if not t.is_static:
        raise _Unsupported(f"a constant of symbolic shape {t}; bind the sizes with shapes=")
    value = {aten.zeros_like.default: 0, aten.ones_like.default: 1, aten.empty_like.default: 0}.get(
        im.target,
        a.get("fill_value"),  # type: ignore[union-attr, arg-type]
    )
    return im.const(np.full(t.static_shape, im.scalar(value)), t.dtype)


# ---- reductions
def _reduce(op: str) -> Converter:
    def conv(im: _Importer, a: dict[str, Any]) -> Value:
        t = im.out_type()
        x = im.cast(a["self"], t.dtype)
        axes = _axes(a.get("dim"), x.type.ndim)
        if not axes and x.type.ndim == 0:
            return x
        return im.emit(op, [x], axes=tuple(axes), keepdims=int(bool(a.get("keepdim", False))))

    return conv


for _aops, _kop in (
    ((aten.mean.dim, aten.mean.default), "reduce_mean"),
    ((aten.sum.dim_IntList, aten.sum.default), "reduce_sum"),
    ((aten.amax.default, aten.max.default), "reduce_max"),
    ((aten.amin.default, aten.min.default), "reduce_min"),
    ((aten.prod.dim_int, aten.prod.default), "reduce_prod"),
    ((aten.logsumexp.default,), "reduce_log_sum_exp"),
):
    converter(*_aops)(_reduce(_kop))


@converter(aten.linalg_vector_norm.default)
def _vector_norm(im: _Importer, a: dict[str, Any]) -> Value:
    t = im.out_type()
    x = im.cast(a["self"], t.dtype)
    order = float(im.scalar(a["ord"]))
    axes = tuple(_axes(a["dim"], x.type.ndim))
    keep = int(bool(a["keepdim"]))
    ops = {
        2.0: ("reduce_l2", x),
        1.0: ("reduce_l1", x),
        math.inf: ("reduce_max", None),
        -math.inf: ("reduce_min", None),
    }
    if order not in ops:
        raise _Unsupported(f"vector norm of order {order} is not supported (1, 2, inf and -inf are)")
    op, arg = ops[order]
    return im.emit(op, [arg if arg is not None else im.emit("abs", [x])], axes=axes, keepdims=keep)


@converter(aten.any.dim, aten.any.dims, aten.any.default, aten.all.dim, aten.all.dims, aten.all.default)
def _any_all(im: _Importer, a: dict[str, Any]) -> Value:
    x = im.cast(im.cast(a["self"], "bool"), "float32")
    op = "reduce_max" if "any" in str(im.target) else "reduce_min"
    axes = _axes(a.get("dim"), x.type.ndim)
    y = im.emit(op, [x], axes=tuple(axes), keepdims=int(bool(a.get("keepdim", False))))
    return im.emit("greater", [y, im.const(0.0, "float32")])


@converter(aten.max.dim, aten.min.dim)
def _max_dim(im: _Importer, a: dict[str, Any]) -> tuple[Value, Value]:
    x = a["self"]
    axis, keep = int(a["dim"]) % max(x.type.ndim, 1), int(bool(a["keepdim"]))
    is_max = im.target == aten.max.dim
    values = im.emit("reduce_max" if is_max else "reduce_min", [x], axes=(axis,), keepdims=keep)
    indices = im.emit("arg_max" if is_max else "arg_min", [x], axis=axis, keepdims=keep)
    return values, indices


@converter(aten.argmax.default, aten.argmin.default)
def _argmax(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["self"]
    op = "arg_max" if im.target == aten.argmax.default else "arg_min"
    if a["dim"] is None:
        flat = im.reshape(x, (x.type.numel,))
        return im.reshape(im.emit(op, [flat], axis=0, keepdims=0), im.out_type().shape)
    return im.emit(op, [x], axis=int(a["dim"]) % x.type.ndim, keepdims=int(bool(a["keepdim"])))


def _variance(im: _Importer, x: Value, dims: Any, correction: Any, keep: bool) -> tuple[Value, Value]:
    """(variance, mean) over ``dims`` with Bessel's ``correction``."""
    axes = tuple(_axes(dims, x.type.ndim))
    mean = im.emit("reduce_mean", [x], axes=axes, keepdims=1)
    xc = im.emit("sub", [x, mean])
    var = im.emit("reduce_mean", [im.emit("mul", [xc, xc])], axes=axes, keepdims=int(keep))
    sizes = [x.type.shape[d] for d in axes]
    if not all(isinstance(d, int) for d in sizes):
        raise _Unsupported(f"variance over symbolic dimensions of {x.type}; bind them with shapes=")
    n = math.prod(d for d in sizes if isinstance(d, int))
    c = 1.0 if correction is None else float(im.scalar(correction))
    if c:
        var = im.emit("mul", [var, im.const(n / max(n - c, 0), x.type.dtype)])
    return var, (mean if keep else im.reshape(mean, var.type.shape))


@converter(aten.var.correction, aten.var_mean.correction, aten.std.correction)
def _var(im: _Importer, a: dict[str, Any]) -> Any:
    var, mean = _variance(im, a["self"], a["dim"], a["correction"], bool(a["keepdim"]))
    t = im.target  # type: ignore[union-attr]
    if t == aten.var_mean.correction:
        return var, mean
    return im.emit("sqrt", [var]) if t == aten.std.correction else var


@converter(aten.cumsum.default, aten.cumprod.default)
def _cumsum(im: _Importer, a: dict[str, Any]) -> Value:
    x = im.cast(a["self"], im.out_type().dtype)
    op = "cumsum" if im.target == aten.cumsum.default else "cumprod"
    return im.emit(op, [x], axis=int(a["dim"]) % x.type.ndim)


@converter(aten.topk.default)
def _topk(im: _Importer, a: dict[str, Any]) -> tuple[Value, ...]:
    x = a["self"]
    vals = im.emit_n(
        "top_k",
        [x],
        k=int(im.scalar(a["k"])),
        axis=int(a["dim"]) % x.type.ndim,
        largest=int(bool(a["largest"])),
    )
    return tuple(vals)


@converter(aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default)
def _softmax(im: _Importer, a: dict[str, Any]) -> Value:
    t = im.out_type()
    x = im.cast(a["self"], t.dtype)
    op = "log_softmax" if "log_softmax" in str(im.target) else "softmax"
    return im.emit(op, [x], axis=int(a["dim"]) % max(x.type.ndim, 1))


# ---- linear algebra
@converter(aten.matmul.default, aten.mm.default, aten.bmm.default)
def _matmul(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    x = a["self"]
    y = a["other"] if "other" in a else a["mat2"]
    return im.emit("matmul", [im.cast(x, dt), im.cast(y, dt)])


@converter(aten.linear.default)
def _linear(im: _Importer, a: dict[str, Any]) -> Value:
    x, w, b = a["input"], a["weight"], a["bias"]
    wt = im.emit("transpose", [w], perm=(1, 0)) if w.type.ndim == 2 else w
    y = im.emit("matmul", [x, wt])
    return y if b is None else im.emit("add", [y, b])


@converter(aten.addmm.default, aten.baddbmm.default, aten.addmv.default)
def _addmm(im: _Importer, a: dict[str, Any]) -> Value:
    dt = im.out_type().dtype
    m1: Value = next(a[k] for k in ("mat1", "batch1", "mat") if k in a)
    m2: Value = next(a[k] for k in ("mat2", "batch2", "vec") if k in a)
    y = im.emit("matmul", [m1, m2])
    beta, alpha = im.scalar(a["beta"]), im.scalar(a["alpha"])
    if alpha != 1:
        y = im.emit("mul", [y, im.const(alpha, dt)])
    if beta == 0:
        return y
    c = a["self"] if beta == 1 else im.emit("mul", [a["self"], im.const(beta, dt)])
    return im.emit("add", [c, y])


# ---- convolution, normalization, pooling
def _conv_nd(im: _Importer, a: dict[str, Any], transposed: bool) -> Value:
    """A 1-D or 2-D convolution (``transposed``: its transpose) from any of aten's convolution schemas (their
    arguments by name; ``output_padding`` only matters transposed)."""
    x, w, b, padding, groups = a["input"], a["weight"], a["bias"], a["padding"], int(a["groups"])
    nd = w.type.ndim - 2
    if nd not in (1, 2):
        raise _Unsupported(f"{nd}-D convolution is not supported (1-D and 2-D are)")
    s, d = _ints(a["stride"], nd), _ints(a["dilation"], nd)
    k = [int(v) for v in w.type.shape[2:]]  # type: ignore[arg-type]
    if isinstance(padding, str):
        if padding == "valid":
            p = [0] * nd
            pe = p
        else:  # "same" (stride 1): the extra pixel goes to the end, as in torch
            total = [d[i] * (k[i] - 1) for i in range(nd)]
            p = [t // 2 for t in total]
            pe = [t - t // 2 for t in total]
    else:
        p = _ints(padding, nd)
        pe = p
    op = _ints(a["output_padding"], nd) if transposed and a["output_padding"] else [0] * nd
    tail = [b] if b is not None else []
    if nd == 1:
        x2 = im.reshape(x, (*x.type.shape[:2], 1, x.type.shape[2]))
        w2 = im.reshape(w, (*w.type.shape[:2], 1, w.type.shape[2]))
        attrs: dict[str, Any] = dict(
            strides=(1, s[0]), pads=(0, p[0], 0, pe[0]), dilations=(1, d[0]), groups=groups
        )
        if transposed:
            attrs["output_padding"] = (0, op[0])
        y = im.emit("conv_transpose2d" if transposed else "conv2d", [x2, w2, *tail], **attrs)
        return im.reshape(y, (y.type.shape[0], y.type.shape[1], y.type.shape[3]))
    attrs = dict(strides=tuple(s), pads=(p[0], p[1], pe[0], pe[1]), dilations=tuple(d), groups=groups)
    if transposed:
        attrs["output_padding"] = tuple(op)
    return im.emit("conv_transpose2d" if transposed else "conv2d", [x, w, *tail], **attrs)


@converter(aten.convolution.default, aten._convolution.default)
def _convolution(im: _Importer, a: dict[str, Any]) -> Value:
    return _conv_nd(im, a, bool(a["transposed"]))


@converter(aten.conv2d.default, aten.conv1d.default, aten.conv2d.padding, aten.conv1d.padding)
def _conv(im: _Importer, a: dict[str, Any]) -> Value:
    return _conv_nd(im, a, transposed=False)


@converter(aten.conv_transpose2d.input, aten.conv_transpose1d.default)
def _conv_transpose(im: _Importer, a: dict[str, Any]) -> Value:
    return _conv_nd(im, a, transposed=True)


def _ones(im: _Importer, v: Value | None, n: Dim, dtype: str, fill: float) -> Value:
    if v is not None:
        return v
    if not isinstance(n, int):
        raise _Unsupported("a normalization without weights over a symbolic dimension; bind it with shapes=")
    return im.const(np.full((n,), fill), dtype)


def _batch_norm(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["input"]
    c, dt = x.type.shape[1], x.type.dtype
    w, b = _ones(im, a["weight"], c, dt, 1.0), _ones(im, a["bias"], c, dt, 0.0)
    mean, var = a["running_mean"], a["running_var"]
    if mean is None or var is None:
        raise _Unsupported(
            "batch norm without running statistics (track_running_stats=False) normalizes each "
            "batch by its own statistics, which kiln does not support"
        )
    return im.emit("batch_norm", [x, w, b, mean, var], epsilon=float(a["eps"]))


@converter(aten._native_batch_norm_legit_no_training.default)
def _bn_no_training(im: _Importer, a: dict[str, Any]) -> tuple[Value, ...]:
    y = _batch_norm(im, a)
    return (y,) + _unused(im, 1)


@converter(aten.batch_norm.default, aten.native_batch_norm.default, aten._native_batch_norm_legit.default)
def _bn(im: _Importer, a: dict[str, Any]) -> Any:
    if a.get("training"):
        raise _Unsupported("batch norm in training mode; call module.eval() before exporting")
    y = _batch_norm(im, a)
    return y if im.target == aten.batch_norm.default else (y,) + _unused(im, 1)


@converter(aten._native_batch_norm_legit.no_stats)
def _bn_batch_stats(im: _Importer, a: dict[str, Any]) -> tuple[Any, ...]:
    """Normalization by the batch's own statistics (what ``instance_norm`` becomes): over every axis but 1."""
    x = a["input"]
    if not a["training"]:
        raise _Unsupported("batch norm in inference mode without running statistics")
    axes = tuple(d for d in range(x.type.ndim) if d != 1)
    mean = im.emit("reduce_mean", [x], axes=axes, keepdims=1)
    xc = im.emit("sub", [x, mean])
    var = im.emit("reduce_mean", [im.emit("mul", [xc, xc])], axes=axes, keepdims=1)
    std = im.emit("sqrt", [im.emit("add", [var, im.const(float(a["eps"]), x.type.dtype)])])
    y = im.emit("div", [xc, std])
    per_channel = (x.type.shape[1],) + (1,) * (x.type.ndim - 2)
    if a["weight"] is not None:
        y = im.emit("mul", [y, im.reshape(a["weight"], per_channel)])
    if a["bias"] is not None:
        y = im.emit("add", [y, im.reshape(a["bias"], per_channel)])
    return (y,) + _unused(im, 1)


def _unused(im: _Importer, first: int) -> tuple[Any, ...]:
    """Placeholders for a node's secondary outputs (statistics, indices) that kiln does not compute: an error
    if something uses them."""
    node = im.node
    assert node is not None
    used = {u.args[1] for u in node.users if u.target is operator.getitem}
    vals = im.out_val()
    bad = sorted(i for i in used if isinstance(i, int) and i >= first)
    if bad:
        raise _Unsupported(
            f"output {bad[0]} of {_op_name(node.target)} is used, and kiln does not compute it"
        )
    return tuple(None for _ in range(first, len(vals)))


@converter(aten.layer_norm.default, aten.native_layer_norm.default)
def _layer_norm(im: _Importer, a: dict[str, Any]) -> Any:
    x = a["input"]
    shape = _ints(a["normalized_shape"])
    axis = x.type.ndim - len(shape)
    w = a["weight"]
    if w is None:
        w = im.const(np.ones(shape), x.type.dtype)
    args = [x, w] + ([a["bias"]] if a["bias"] is not None else [])
    y = im.emit("layer_norm", args, axis=axis, epsilon=float(a["eps"]))
    return y if im.target == aten.layer_norm.default else (y,) + _unused(im, 1)


@converter(aten.native_group_norm.default, aten.group_norm.default)
def _group_norm(im: _Importer, a: dict[str, Any]) -> Any:
    x = a["input"]
    if not x.type.is_static:
        raise _Unsupported(f"group norm needs a static input shape, got {x.type}; bind it with shapes=")
    shape = x.type.static_shape
    g = int(a["group"] if "group" in a else a["num_groups"])
    flat = im.reshape(x, (shape[0], g, int(np.prod(shape[1:])) // g))
    y = im.emit("layer_norm", [flat, im.const(np.ones((1,)), x.type.dtype)], axis=2, epsilon=float(a["eps"]))
    y = im.reshape(y, shape)
    per_channel = (shape[1],) + (1,) * (len(shape) - 2)
    if a["weight"] is not None:
        y = im.emit("mul", [y, im.reshape(a["weight"], per_channel)])
    if a["bias"] is not None:
        y = im.emit("add", [y, im.reshape(a["bias"], per_channel)])
    return y if im.target == aten.group_norm.default else (y,) + _unused(im, 1)


@converter(aten.rms_norm.default)
def _rms_norm(im: _Importer, a: dict[str, Any]) -> Value:
    x = a["input"]
    n = len(_ints(a["normalized_shape"]))
    dt = x.type.dtype
    eps = a["eps"] if a["eps"] is not None else float(np.finfo(np_dtype(dt)).eps)
    axes = tuple(range(x.type.ndim - n, x.type.ndim))
    ms = im.emit("reduce_mean", [im.emit("mul", [x, x])], axes=axes, keepdims=1)
    r = im.emit("reciprocal", [im.emit("sqrt", [im.emit("add", [ms, im.const(eps, dt)])])])
    y = im.emit("mul", [x, r])
    return y if a["weight"] is None else im.emit("mul", [y, a["weight"]])


def _pool_params(
    a: dict[str, Any],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], tuple[int, int], int]:
    k = _ints(a["kernel_size"], 2)
    s = _ints(a["stride"], 2) if a.get("stride") else k
    p = _ints(a["padding"], 2)
    d = _ints(a.get("dilation", 1), 2)
    return (k[0], k[1]), (s[0], s[1]), (p[0], p[1], p[0], p[1]), (d[0], d[1]), int(bool(a["ceil_mode"]))


def _pool2d(im: _Importer, op: str, a: dict[str, Any], **extra: Any) -> Value:
    x = a["self"]
    k, s, p, d, ceil = _pool_params(a)
    squeeze = x.type.ndim == 3  # an unbatched (C, H, W) input
    if squeeze:
        x = im.reshape(x, (1, *x.type.shape))
    y = im.emit(op, [x], kernel=k, strides=s, pads=p, dilations=d, ceil_mode=ceil, **extra)
    return im.reshape(y, y.type.shape[1:]) if squeeze else y


@converter(aten.max_pool2d.default)
def _max_pool(im: _Importer, a: dict[str, Any]) -> Value:
    return _pool2d(im, "max_pool2d", a)


@converter(aten.max_pool2d_with_indices.default)
def _max_pool_indices(im: _Importer, a: dict[str, Any]) -> tuple[Any, ...]:
    return (_pool2d(im, "max_pool2d", a),) + _unused(im, 1)


@converter(aten.avg_pool2d.default)
def _avg_pool(im: _Importer, a: dict[str, Any]) -> Value:
    if a["divisor_override"] is not None:
        raise _Unsupported("avg_pool2d with divisor_override is not supported")
    return _pool2d(
        im, "avg_pool2d", {**a, "dilation": 1}, count_include_pad=int(bool(a["count_include_pad"]))
    )


def _adaptive(im: _Importer, a: dict[str, Any], is_max: bool) -> Value:
    x = a["self"]
    out = _ints(a["output_size"], 2)
    h, w = x.type.shape[-2:]
    if not is_max and out == [1, 1]:
        return im.emit("reduce_mean", [x], axes=(x.type.ndim - 2, x.type.ndim - 1), keepdims=1)
    if is_max and out == [1, 1]:
        return im.emit("reduce_max", [x], axes=(x.type.ndim - 2, x.type.ndim - 1), keepdims=1)
    if not isinstance(h, int) or not isinstance(w, int):
        raise _Unsupported(f"adaptive pooling of {x.type}: needs static H and W; bind them with shapes=")
    if h % out[0] or w % out[1]:
        if is_max:
            raise _Unsupported(
                f"adaptive max pooling of {x.type} to {tuple(out)}: supported when the output size divides the "
                "input size"
            )
        # windows of unequal sizes: the average is separable, P_h @ x @ P_w^T with averaging matrices
        ph, pw = _adaptive_weights(h, out[0], x.type.dtype), _adaptive_weights(w, out[1], x.type.dtype)
        y = im.emit("matmul", [im.const(ph, x.type.dtype), x])
        return im.emit("matmul", [y, im.const(pw.T.copy(), x.type.dtype)])
    k = (h // out[0], w // out[1])
    args = {"self": x, "kernel_size": list(k), "stride": list(k), "padding": [0, 0], "ceil_mode": False}
    if is_max:
        return _pool2d(im, "max_pool2d", args)
    return _pool2d(im, "avg_pool2d", {**args, "dilation": 1}, count_include_pad=0)


def _adaptive_weights(size: int, out: int, dtype: str) -> np.ndarray:
    """(out, size): row i averages torch's window ``floor(i * size / out) : ceil((i + 1) * size / out)``."""
    m = np.zeros((out, size), np.float64)
    for i in range(out):
        lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m.astype(np_dtype(dtype))


@converter(aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)
def _adaptive_avg(im: _Importer, a: dict[str, Any]) -> Value:
    return _adaptive(im, a, False)


@converter(aten.adaptive_max_pool2d.default)
def _adaptive_max(im: _Importer, a: dict[str, Any]) -> tuple[Any, ...]:
    return (_adaptive(im, a, True),) + _unused(im, 1)


def _resize(im: _Importer, a: dict[str, Any], mode: str, ctm: str, nearest: str = "floor") -> Value:
    x = a["input"] if "input" in a else a["self"]
    if x.type.ndim != 4 or not all(isinstance(d, int) for d in x.type.shape[2:]):
        raise _Unsupported(f"resizing needs an NCHW input with static H and W, got {x.type}")
    h, w, oh, ow = (int(d) for d in (*x.type.shape[2:], *im.out_type().shape[2:]))  # type: ignore[misc]
    factors = a.get("scale_factors")
    # torch maps coordinates with 1 / scale_factor when one is given, with in / out otherwise
    scales = (float(factors[0]), float(factors[1])) if factors else (oh / h, ow / w)
    return im.emit(
        "resize",
        [x],
        scales=scales,
        sizes=(oh, ow),
        mode=mode,
        coordinate_transformation_mode=ctm,
        nearest_mode=nearest,
    )


@converter(aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)
def _upsample_nearest(im: _Importer, a: dict[str, Any]) -> Value:
    return _resize(im, a, "nearest", "asymmetric", "floor")


@converter(aten._upsample_nearest_exact2d.vec, aten._upsample_nearest_exact2d.default)
def _upsample_nearest_exact(im: _Importer, a: dict[str, Any]) -> Value:
    return _resize(im, a, "nearest", "half_pixel", "round_prefer_ceil")


@converter(aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default)
def _upsample_bilinear(im: _Importer, a: dict[str, Any]) -> Value:
    return _resize(im, a, "linear", "align_corners" if a["align_corners"] else "pytorch_half_pixel")


# ---- attention
@converter(aten.scaled_dot_product_attention.default)
def _sdpa(im: _Importer, a: dict[str, Any]) -> Value:
    """``softmax(q @ k^T * scale + mask) @ v`` as torch's math backend computes it: a boolean mask keeps the
    ``True`` positions, a float mask is added, ``is_causal`` keeps the lower triangle (top-left aligned), and a
    row with every position masked gives zeros (not NaN)."""
    q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
    if float(a["dropout_p"] or 0.0) != 0.0:
        raise _Unsupported("attention dropout (dropout_p > 0) draws random numbers; export in eval mode")
    dt = q.type.dtype
    L, S, E = q.type.shape[-2], k.type.shape[-2], q.type.shape[-1]
    if not isinstance(E, int):
        raise _Unsupported("attention with a symbolic head size")
    if a.get("enable_gqa") and q.type.ndim >= 3 and q.type.shape[-3] != k.type.shape[-3]:
        k, v = (_repeat_heads(im, t, q.type.shape[-3]) for t in (k, v))
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(E)
    kt = im.emit("transpose", [k], perm=(*range(k.type.ndim - 2), k.type.ndim - 1, k.type.ndim - 2))
    s = im.emit("mul", [im.emit("matmul", [q, kt]), im.const(scale, dt)])
    ninf = im.const(-math.inf, dt)
    if a["is_causal"]:
        if not isinstance(L, int) or not isinstance(S, int):
            raise _Unsupported("causal attention over a symbolic sequence length; bind it with shapes=")
        causal = np.tril(np.ones((L, S), bool))
        s = im.emit("where", [im.const(causal, "bool"), s, ninf])
    if mask is not None:
        bool_mask = mask.type.dtype == "bool"
        s = im.emit("where", [mask, s, ninf]) if bool_mask else im.emit("add", [s, im.cast(mask, dt)])
    if mask is None:
        p = im.emit("softmax", [s], axis=-1)
    else:  # rows where everything is masked give zeros, as torch does (and no NaN on the way)
        row_max = im.emit("reduce_max", [s], axes=(s.type.ndim - 1,), keepdims=1)
        empty = im.emit("equal", [row_max, ninf])
        zero = im.const(0.0, dt)
        p = im.emit("softmax", [im.emit("where", [empty, zero, s])], axis=-1)
        p = im.emit("where", [empty, zero, p])
    return im.emit("matmul", [p, v])


def _repeat_heads(im: _Importer, t: Value, heads: Dim) -> Value:
    """Grouped-query attention: each of ``t``'s heads repeated for the query heads that share it."""
    shape = t.type.shape
    hk = shape[-3]
    if not isinstance(heads, int) or not isinstance(hk, int):
        raise _Unsupported("grouped-query attention with a symbolic number of heads")
    g = heads // hk
    t5 = im.reshape(t, (*shape[:-2], 1, *shape[-2:]))
    t5 = im.emit("expand", [t5], shape=(*shape[:-2], g, *shape[-2:]))
    return im.reshape(t5, (*shape[:-3], heads, *shape[-2:]))
