"""Build models directly with kiln's operators (no ONNX file needed): module classes in the style of
torch.nn (:class:`Module`, :class:`Linear`, :class:`Conv2d`, :class:`LayerNorm`, :class:`Embedding`,
:class:`MultiheadAttention`, :class:`Sequential`, activations; ``model.export(input_specs)``, :func:`bind`
for weights from NumPy or safetensors; docs/how-to/build-a-model-with-nn.md), over the functional
:class:`GraphBuilder`:

    from kiln.frontend.nn import GraphBuilder
    g = GraphBuilder("mlp")
    x = g.input("x", (1, 64))
    h = g.relu(g.add(g.matmul(x, g.const(w1)), g.const(b1)))
    g.output(g.softmax(g.matmul(h, g.const(w2)), axis=-1), name="probs")
    mod = g.build()            # a kiln.ir.Module; kiln.compile(mod, "aarch64-linux") compiles it

Any registered operator is available as a method (``g.conv2d(x, w, pads=(1, 1, 1, 1))``), custom ones too
(:func:`kiln.ops.script.operator`); result types come from the operator's shape inference, so mistakes
surface where they are made. :meth:`GraphBuilder.call_tensor` calls a tensor function directly (a
:class:`kiln.ops.script.Kernel` or a :class:`kiln.ir.TensorFunction`): a ``call_tensor`` node in the graph.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from ..ir import Constant, GraphFunction, Node, Sym, TensorFunction, TensorType, Value, Var
from ..ir import Module as IRModule
from ..ops import get_op
from ..ops.script import Kernel


class GraphBuilder:
    def __init__(self, name: str = "model") -> None:
        self.name = name
        self.params: list[Var] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.functions: dict[str, TensorFunction] = {}
        self._ids = itertools.count()

    def input(self, name: str, shape: tuple[int | str | Sym, ...], dtype: str = "float32") -> Var:
        dims = tuple(Sym(d) if isinstance(d, str) else d if isinstance(d, Sym) else int(d) for d in shape)
        v = Var(name, TensorType(dims, dtype))
        self.params.append(v)
        return v

    def const(self, data: Any, name: str | None = None) -> Constant:
        return Constant(name or f"c{next(self._ids)}", np.asarray(data))

    def op(self, op_name: str, *inputs: Value, name: str | None = None, **attrs: Any) -> Any:
        """Apply ``op_name``; returns the result var (a tuple when the operator has several results)."""
        types = get_op(op_name).infer([v.type for v in inputs], attrs)
        node_name = name or f"{op_name}_{next(self._ids)}"
        outs = tuple(
            Var(node_name if len(types) == 1 else f"{node_name}_{i}", t) for i, t in enumerate(types)
        )
        self.nodes.append(Node(op_name, tuple(inputs), outs, attrs, node_name))
        return outs[0] if len(outs) == 1 else outs

    def call_tensor(
        self,
        func: Kernel | TensorFunction,
        *inputs: Value,
        outputs: TensorType | list[TensorType] | None = None,
        name: str | None = None,
        **attrs: Any,
    ) -> Any:
        """Call a tensor function on ``inputs``: a :class:`~kiln.ir.TensorFunction` (its output buffers give
        the result types) or a script :class:`~kiln.ops.script.Kernel`, built for these inputs with
        ``attrs`` and result types ``outputs`` (default: one result like the first input)."""
        if isinstance(func, Kernel):
            outs_t = (
                [inputs[0].type] if outputs is None else outputs if isinstance(outputs, list) else [outputs]
            )
            base = name or func.__name__
            fname = f"{base}_{next(self._ids)}"
            func = func.tensor_function([v.type for v in inputs], outs_t, attrs, name=fname)
        elif attrs:
            raise TypeError("attributes are for script kernels; a TensorFunction is already built")
        if func.name in self.functions and self.functions[func.name] is not func or func.name == "main":
            raise ValueError(f"another tensor function is already called {func.name!r}")
        self.functions[func.name] = func
        node_name = name or f"{func.name}_call"
        types = [TensorType(b.shape, b.dtype) for b in func.outputs]
        outs = tuple(
            Var(node_name if len(types) == 1 else f"{node_name}_{i}", t) for i, t in enumerate(types)
        )
        self.nodes.append(Node("call_tensor", tuple(inputs), outs, {"func": func.name}, node_name))
        return outs[0] if len(outs) == 1 else outs

    def __getattr__(self, op_name: str) -> Callable[..., Any]:
        if op_name.startswith("_"):
            raise AttributeError(op_name)
        get_op(op_name)  # unknown operators fail here, by name
        return lambda *inputs, **attrs: self.op(op_name, *inputs, **attrs)

    def output(self, v: Value, name: str | None = None) -> None:
        if name is not None and isinstance(v, Var) and v.name != name and v not in self.params:
            renamed = Var(name, v.type)  # rename the value itself (vars are immutable: substitute it)
            self.nodes = [
                n.with_(
                    inputs=tuple(renamed if x is v else x for x in n.inputs),
                    outputs=tuple(renamed if x is v else x for x in n.outputs),
                )
                for n in self.nodes
            ]
            self.outputs = [renamed if x is v else x for x in self.outputs]
            v = renamed
        elif name is not None and v.name != name:
            v2 = Var(name, v.type)
            self.nodes.append(Node("identity", (v,), (v2,), {}, name))
            v = v2
        self.outputs.append(v)

    def build(self) -> IRModule:
        if not self.outputs:
            raise ValueError(f"model {self.name!r} has no outputs; call .output(value) first")
        main = GraphFunction(
            "main", tuple(self.params), tuple(self.nodes), tuple(self.outputs), {"model_name": self.name}
        )
        return IRModule({"main": main, **self.functions})


# ================================================================================ modules in the style of torch.nn
#
#     from kiln.frontend import nn
#     class MLP(nn.Module):
#         def __init__(self):
#             super().__init__()
#             self.body = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 10))
#         def forward(self, x):
#             return self.body(x).softmax(axis=-1)
#     mod = MLP().export({"x": (1, 64)})                 # a kiln.ir.Module; parameters are named constants
#     mod = nn.bind(mod, "weights.safetensors")          # or a dict of NumPy arrays
#
# A module's forward runs once, at export, on Tensors that record graph nodes through a GraphBuilder.

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed the generator that initializes new parameters (as ``torch.manual_seed`` does)."""
    global _rng
    _rng = np.random.default_rng(seed)


def _uniform(bound: float, *shape: int) -> np.ndarray:
    return _rng.uniform(-bound, bound, shape).astype("float32")


class Parameter:
    """A named weight of a module: its current value, a NumPy array (``data``). At export it becomes a constant
    of the graph named by its path in the model (``blocks.0.attn.in_proj_weight``)."""

    def __init__(self, data: Any, dtype: str | None = None) -> None:
        self.data = np.asarray(data, dtype=dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> str:
        return str(self.data.dtype)

    def __repr__(self) -> str:
        return f"Parameter({self.dtype}{list(self.shape)})"

    def tensor(self) -> Tensor:
        """This parameter as a value of the model being exported (its constant)."""
        t = _trace()
        return Tensor(t.param(self), t.g)

    @property
    def T(self) -> Tensor:  # noqa: N802 - as NumPy and torch spell it
        return self.tensor().T

    def op(self, op_name: str, *others: Any, **attrs: Any) -> Any:
        return self.tensor().op(op_name, *others, **attrs)


def _arithmetic(op_name: str) -> tuple[Callable[[Tensor, Any], Tensor], Callable[[Tensor, Any], Tensor]]:
    """The forward and reflected methods of a binary Python operator (``x + o``, ``o + x``) adding ``op_name``."""

    def forward(self: Tensor, other: Any) -> Tensor:
        return _apply(self.g, op_name, [self.value, self._lift(other)], {})  # type: ignore[no-any-return]

    def reflected(self: Tensor, other: Any) -> Tensor:
        return _apply(self.g, op_name, [self._lift(other), self.value], {})  # type: ignore[no-any-return]

    return forward, reflected


class Tensor:
    """A value of the graph being traced by :meth:`Module.export`: arithmetic operators (``+ - * / @``, unary
    ``-``) and methods add nodes. Any kiln operator is a method (``x.softmax(axis=-1)``,
    ``x.conv2d(w, pads=(1, 1, 1, 1))``): other tensors, parameters and NumPy arrays as further inputs,
    attributes as keywords. Numbers and arrays mixed in become constants of this tensor's dtype."""

    __slots__ = ("g", "value")

    def __init__(self, value: Value, g: GraphBuilder) -> None:
        self.value, self.g = value, g

    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def shape(self) -> tuple[Any, ...]:
        return tuple(self.value.type.shape)

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    @property
    def ndim(self) -> int:
        return self.value.type.ndim

    def __repr__(self) -> str:
        return f"Tensor({self.value!r})"

    def _lift(self, other: Any) -> Value:
        if isinstance(other, Tensor):
            return other.value
        if isinstance(other, Parameter):
            return _trace().param(other)
        return self.g.const(np.asarray(other, dtype=self.dtype), name=_trace().node_name("const"))

    def op(self, op_name: str, *others: Any, **attrs: Any) -> Any:
        """``op_name(self, *others, **attrs)``: a Tensor, or a tuple for operators with several results."""
        return _apply(self.g, op_name, [self.value, *(self._lift(o) for o in others)], attrs)

    __add__, __radd__ = _arithmetic("add")
    __sub__, __rsub__ = _arithmetic("sub")
    __mul__, __rmul__ = _arithmetic("mul")
    __truediv__, __rtruediv__ = _arithmetic("div")
    __matmul__, __rmatmul__ = _arithmetic("matmul")

    def __neg__(self) -> Tensor:
        return self.op("neg")  # type: ignore[no-any-return]

    def reshape(self, *shape: int) -> Tensor:
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
        return self.op("reshape", shape=tuple(int(d) for d in dims))  # type: ignore[no-any-return]

    def transpose(self, *axes: Any) -> Tensor:
        """``transpose(a, b)`` swaps two axes (as torch's); a permutation of all the axes is given as one
        list or tuple, or as three or more axes (``transpose(0, 2, 1, 3)``)."""
        if len(axes) == 2 and all(isinstance(a, int) for a in axes):
            a, b = (d % self.ndim for d in axes)
            p = list(range(self.ndim))
            p[a], p[b] = p[b], p[a]
        else:
            p = [int(d) for d in (axes[0] if len(axes) == 1 else axes)]
        return self.op("transpose", perm=p)  # type: ignore[no-any-return]

    @property
    def T(self) -> Tensor:  # noqa: N802 - as NumPy and torch spell it
        """The last two axes swapped."""
        return self.transpose(-2, -1) if self.ndim > 1 else self

    def __getattr__(self, op_name: str) -> Callable[..., Any]:
        if op_name.startswith("_"):
            raise AttributeError(op_name)
        get_op(op_name)  # unknown operators fail here, by name
        return lambda *others, **attrs: self.op(op_name, *others, **attrs)


def _apply(g: GraphBuilder, op_name: str, inputs: list[Value], attrs: dict[str, Any]) -> Any:
    out = g.op(op_name, *inputs, name=_trace().node_name(op_name), **attrs)
    return tuple(Tensor(o, g) for o in out) if isinstance(out, tuple) else Tensor(out, g)


class _Trace:
    """The export in progress: the builder, each parameter's constant, the module path being called."""

    def __init__(self, g: GraphBuilder, paths: dict[int, str], params: dict[int, str]) -> None:
        self.g, self.paths, self.params = g, paths, params
        self.consts: dict[int, Constant] = {}
        self.scope: list[str] = []
        self.counts: dict[str, int] = {}

    def param(self, p: Parameter) -> Constant:
        if id(p) not in self.consts:
            if id(p) not in self.params:
                raise ValueError(f"{p!r} does not belong to the model being exported (assign it to a module)")
            self.consts[id(p)] = Constant(self.params[id(p)], p.data)
        return self.consts[id(p)]

    def node_name(self, op_name: str) -> str:
        prefix = self.scope[-1] if self.scope else ""  # the path of the module being called
        base = f"{prefix}.{op_name}" if prefix else op_name
        n = self.counts.get(base, 0)
        self.counts[base] = n + 1
        return f"{base}_{n}"


_TRACES: list[_Trace] = []


def _trace() -> _Trace:
    if not _TRACES:
        raise RuntimeError("tensors exist only while a model is exported (Module.export)")
    return _TRACES[-1]


InputSpec = TensorType | tuple[int | str, ...] | tuple[tuple[int | str, ...], str]


def _spec_type(spec: Any) -> TensorType:
    if isinstance(spec, TensorType):
        return spec
    if (
        isinstance(spec, tuple)
        and len(spec) == 2
        and isinstance(spec[0], tuple | list)
        and isinstance(spec[1], str)
    ):
        shape, dtype = spec
    else:
        shape, dtype = spec, "float32"
    return TensorType(tuple(Sym(d) if isinstance(d, str) else int(d) for d in shape), dtype)


class Module:
    """The base of models built from parts, as ``torch.nn.Module``: assign parameters and submodules as
    attributes in ``__init__`` (their names are their paths: ``encoder.layers.0.linear1.weight``), compute in
    ``forward`` on :class:`Tensor` values. :meth:`export` traces ``forward`` into a kiln module whose
    parameters are constants named by their paths, to bind later (:func:`bind`) from NumPy arrays or a
    safetensors file."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"call super().__init__() in {type(self).__name__}.__init__ before assigning"
            )
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if name in d.get("_parameters", {}):
            p = d["_parameters"][name]
            return Tensor(_TRACES[-1].param(p), _TRACES[-1].g) if _TRACES else p
        if name in d.get("_modules", {}):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        """``self.name = value``; None (no parameter, e.g. no bias) is a plain attribute."""
        if value is None:
            self._parameters.pop(name, None)
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, value)

    def forward(self, *inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        if not _TRACES:
            raise RuntimeError(
                f"{type(self).__name__} computes on kiln tensors while it is exported: call .export(inputs)"
            )
        t = _TRACES[-1]
        t.scope.append(t.paths.get(id(self), ""))
        try:
            return self.forward(*inputs, **kwargs)
        finally:
            t.scope.pop()

    # parameters and submodules -----------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        seen: set[int] = set()

        def walk(m: Module, path: str) -> Iterator[tuple[str, Module]]:
            if id(m) in seen:
                return
            seen.add(id(m))
            yield path, m
            for name, child in m._modules.items():
                yield from walk(child, f"{path}.{name}" if path else name)

        yield from walk(self, prefix)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every parameter with its path, each once (shared ones under their first path), in definition order."""
        seen: set[int] = set()
        for path, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{path}.{name}" if path else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter's value by path (the arrays themselves, not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, weights: Mapping[str, Any] | str | Path, strict: bool = True) -> None:
        """Set parameters from arrays by path, or from a safetensors file. With ``strict``, every parameter
        must be given and every name must be a parameter; shapes must match, dtypes are converted."""
        arrays = load_weights(weights)
        params = dict(self.named_parameters())
        _check_names(set(params), set(arrays), strict)
        for name, a in arrays.items():
            if name in params:
                p = params[name]
                a = np.asarray(a)
                if a.shape != p.shape:
                    raise ValueError(f"parameter {name}: expected shape {list(p.shape)}, got {list(a.shape)}")
                p.data = a.astype(p.data.dtype, copy=False)

    def save_safetensors(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in self.state_dict().items()}, str(path))

    # export ------------------------------------------------------------------------------------------------
    def export(
        self,
        input_specs: Mapping[str, InputSpec] | Sequence[InputSpec] | InputSpec,
        name: str | None = None,
        output_names: Sequence[str] | None = None,
        weights: Mapping[str, Any] | str | Path | None = None,
    ) -> IRModule:
        """The kiln module computing ``forward`` on inputs of ``input_specs``: ``{"x": (1, 64)}``, a shape
        with a dtype (``((1, 8), "int64")``), a :class:`~kiln.ir.TensorType`, or a list of them (named
        ``input0``, ...); strings in a shape are symbolic dimensions. Inputs are passed to ``forward`` in
        order. Results are named ``output_names``, or by the keys of a dict ``forward`` returns, or
        ``output`` (``output0``, ... for several). Parameters become constants named by their path and listed
        in ``main.attrs["parameters"]``; ``weights`` binds them right away (see :func:`bind`)."""
        if isinstance(input_specs, Mapping):
            specs = dict(input_specs)
        elif isinstance(input_specs, list) or (
            isinstance(input_specs, tuple)
            and input_specs
            and not isinstance(input_specs[0], int | str)
            and not (len(input_specs) == 2 and isinstance(input_specs[1], str))
        ):
            specs = {f"input{i}": s for i, s in enumerate(input_specs)}  # type: ignore[arg-type]
        else:
            specs = {"input": input_specs}  # type: ignore[dict-item]
        g = GraphBuilder(name or type(self).__name__)
        paths = {id(m): p for p, m in self.named_modules()}
        params = {id(p): n for n, p in self.named_parameters()}
        trace = _Trace(g, paths, params)
        _TRACES.append(trace)
        try:
            ins = [
                Tensor(g.input(k, tuple(_spec_type(s).shape), _spec_type(s).dtype), g)
                for k, s in specs.items()
            ]
            result = self(*ins)
        finally:
            _TRACES.pop()
        if isinstance(result, Mapping):
            outs = list(result.items())
        else:
            vals = list(result) if isinstance(result, tuple | list) else [result]
            names = (
                list(output_names)
                if output_names
                else (["output"] if len(vals) == 1 else [f"output{i}" for i in range(len(vals))])
            )
            if len(names) != len(vals):
                raise ValueError(f"{len(names)} output names for {len(vals)} results")
            outs = list(zip(names, vals, strict=True))
        for out_name, v in outs:
            if not isinstance(v, Tensor):
                raise TypeError(f"forward returned {type(v).__name__} for {out_name!r}, not a kiln Tensor")
            g.output(v.value, name=out_name)
        mod = g.build()
        used = tuple(n for n, p in self.named_parameters() if id(p) in trace.consts)
        mod = mod.with_function(mod.main.with_(attrs={**mod.main.attrs, "parameters": used}))
        return bind(mod, weights) if weights is not None else mod

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        if not self._modules:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}("] + ([f"  {extra}"] if extra else [])
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"


# ----------------------------------------------------------------------------------------------- weights
def load_weights(weights: Mapping[str, Any] | str | Path) -> dict[str, np.ndarray]:
    """Arrays by name: a mapping as given, or the tensors of a safetensors file (its NumPy API)."""
    if isinstance(weights, str | Path):
        from safetensors.numpy import load_file

        return dict(load_file(str(weights)))
    return {k: np.asarray(v) for k, v in weights.items()}


def _check_names(params: set[str], given: set[str], strict: bool) -> None:
    if not strict:
        return
    missing, unknown = sorted(params - given), sorted(given - params)
    if missing or unknown:
        raise KeyError(
            "weights do not match the parameters:"
            + (f" missing {', '.join(missing)}" if missing else "")
            + (f"; not parameters: {', '.join(unknown)}" if unknown else "")
        )


def bind(mod: IRModule, weights: Mapping[str, Any] | str | Path, strict: bool = True) -> IRModule:
    """``mod`` (as :meth:`Module.export` gives it) with its parameters' constants holding ``weights``: arrays
    by parameter path, or a safetensors file. Shapes must match; values are converted to the parameter's
    dtype. With ``strict``, every parameter must be given and every name must be a parameter. Bind before
    compiling: the passes fold constants into others."""
    main = mod.main
    params = set(main.attrs.get("parameters", ()))
    arrays = load_weights(weights)
    _check_names(params, set(arrays), strict)
    new: dict[int, Constant] = {}
    for c in main.constants():
        if c.name in params and c.name in arrays:
            a = np.asarray(arrays[c.name])
            if a.shape != c.data.shape:
                raise ValueError(
                    f"parameter {c.name}: expected shape {list(c.data.shape)}, got {list(a.shape)}"
                )
            new[c.uid] = Constant(c.name, np.ascontiguousarray(a.astype(c.data.dtype, copy=False)))

    def sub(v: Value) -> Value:
        return new.get(v.uid, v) if isinstance(v, Constant) else v

    nodes = tuple(n.with_(inputs=tuple(sub(v) for v in n.inputs)) for n in main.nodes)
    return mod.with_function(main.with_(nodes=nodes, outputs=tuple(sub(v) for v in main.outputs)))


# ----------------------------------------------------------------------------------------------- layers
def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Linear(Module):
    """``y = x @ weight.T + bias``; ``weight`` is (out_features, in_features), as in PyTorch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(bound, out_features, in_features))
        self.register_parameter("bias", Parameter(_uniform(bound, out_features)) if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight.T
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Conv2d(Module):
    """2-D convolution over NCHW inputs; ``weight`` is (out, in / groups, kh, kw); ``padding`` an int, a pair
    (symmetric) or ``"same"`` (stride 1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{in_channels} in and {out_channels} out channels do not divide into {groups} groups"
            )
        self.stride, self.dilation, self.groups = _pair(stride), _pair(dilation), groups
        if padding == "same":
            th, tw = self.dilation[0] * (kh - 1), self.dilation[1] * (kw - 1)
            self.pads = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
        elif isinstance(padding, str):
            raise ValueError(f"padding {padding!r}: an int, a pair or 'same'")
        else:
            ph, pw = _pair(padding)
            self.pads = (ph, pw, ph, pw)
        bound = 1 / math.sqrt(in_channels // groups * kh * kw)
        self.weight = Parameter(_uniform(bound, out_channels, in_channels // groups, kh, kw))
        self.register_parameter("bias", Parameter(_uniform(bound, out_channels)) if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        extra = [self.bias] if self.bias is not None else []
        return x.op(  # type: ignore[no-any-return]
            "conv2d",
            self.weight,
            *extra,
            strides=self.stride,
            pads=self.pads,
            dilations=self.dilation,
            groups=self.groups,
        )


class LayerNorm(Module):
    """Normalization over the last ``len(normalized_shape)`` axes, with ``weight`` and ``bias``."""

    def __init__(
        self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True
    ) -> None:
        super().__init__()
        self.shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.shape, "float32"))
            self.bias = Parameter(np.zeros(self.shape, "float32"))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.weight is not None else np.ones(self.shape, x.dtype)
        b = self.bias if self.bias is not None else np.zeros(self.shape, x.dtype)
        return x.op("layer_norm", w, b, axis=-len(self.shape), epsilon=float(self.eps))  # type: ignore[no-any-return]


class Embedding(Module):
    """Rows of ``weight`` (num_embeddings, embedding_dim) picked by integer ids."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = Parameter(_rng.standard_normal((num_embeddings, embedding_dim)).astype("float32"))

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight.op("gather", ids, axis=0)  # type: ignore[no-any-return]


class MultiheadAttention(Module):
    """Multi-head attention with PyTorch's parameters (``in_proj_weight`` (3E, E), ``in_proj_bias``,
    ``out_proj``), so its state dicts load as they are. ``forward(query, key=None, value=None,
    attn_mask=None)`` returns the attention output only (not the weights); ``key`` and ``value`` default to
    ``query`` (self-attention). ``attn_mask`` (target x source) is added to the scores, or, if boolean, marks
    the pairs that may not attend (True), as in PyTorch. Inputs are (batch, sequence, embed) with
    ``batch_first`` (the default here), else (sequence, batch, embed)."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} does not divide into {num_heads} heads")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        bound = math.sqrt(6 / (embed_dim + embed_dim))  # xavier_uniform over each of q, k, v
        self.in_proj_weight = Parameter(_uniform(bound, 3 * embed_dim, embed_dim))
        self.register_parameter(
            "in_proj_bias", Parameter(np.zeros(3 * embed_dim, "float32")) if bias else None
        )
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        if bias:
            self.out_proj.bias = Parameter(np.zeros(embed_dim, "float32"))

    def forward(
        self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, attn_mask: Any = None
    ) -> Tensor:
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e, h = self.embed_dim, self.num_heads
        d = e // h
        w, b = self.in_proj_weight, self.in_proj_bias

        def project(x: Tensor, i: int) -> Tensor:
            wi = w.op("slice", starts=[i * e], ends=[(i + 1) * e], axes=[0])
            y = x @ wi.T
            if b is not None:
                y = y + b.op("slice", starts=[i * e], ends=[(i + 1) * e], axes=[0])
            n, s = y.shape[0], y.shape[1]
            return y.reshape(n, s, h, d).transpose(0, 2, 1, 3)  # (batch, heads, seq, head_dim)

        q, k, v = project(query, 0), project(key, 1), project(value, 2)
        scores = (q @ k.transpose(0, 1, 3, 2)) * (1 / math.sqrt(d))
        if attn_mask is not None:
            mask = attn_mask
            if not isinstance(mask, Tensor):
                m = np.asarray(mask)
                mask = (
                    np.where(m, np.float32(-1e9), np.float32(0))
                    if m.dtype == np.bool_
                    else m.astype("float32")
                )
            scores = scores + mask
        att = scores.softmax(axis=-1) @ v  # (batch, heads, seq, head_dim)
        n, s = att.shape[0], att.shape[2]
        out = self.out_proj(att.transpose(0, 2, 1, 3).reshape(n, s, e))
        return out.transpose(0, 1) if not self.batch_first else out

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"


class _Container(Module):
    """Modules named ``0``, ``1``, ... in order: indexing, length, iteration, ``append``."""

    def append(self, m: Module) -> Self:
        setattr(self, str(len(self._modules)), m)
        return self

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(_Container):
    """Modules applied in order; named ``0``, ``1``, ... (or by the keys of a dict given)."""

    def __init__(self, *modules: Module | Mapping[str, Module]) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            for name, sub in modules[0].items():
                setattr(self, name, sub)
        else:
            for m in modules:
                self.append(m)  # type: ignore[arg-type]

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(_Container):
    """A list of modules (named ``0``, ``1``, ...) that ``forward`` of the owner calls as it likes."""

    def __init__(self, modules: Sequence[Module] = ()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)


# ----------------------------------------------------------------------------------------------- activations
class _Activation(Module):
    op_name = ""

    def forward(self, x: Tensor) -> Tensor:
        return x.op(self.op_name)  # type: ignore[no-any-return]


class ReLU(_Activation):
    op_name = "relu"


class Sigmoid(_Activation):
    op_name = "sigmoid"


class Tanh(_Activation):
    op_name = "tanh"


class GELU(Module):
    """GELU, exact (erf) or ``approximate="tanh"``."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return x.op("gelu", approximate=self.approximate)  # type: ignore[no-any-return]


class SiLU(Module):
    """``x * sigmoid(x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * x.op("sigmoid")


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return x.op("leaky_relu", alpha=float(self.negative_slope))  # type: ignore[no-any-return]


class Softmax(Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x.op("softmax", axis=self.dim)  # type: ignore[no-any-return]


class Identity(Module):
    def forward(self, x: Any) -> Any:
        return x


class Dropout(Identity):
    """Nothing at inference (exported models are for inference)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p


class Flatten(Module):
    """Axes ``start_dim`` to the end merged into one."""

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x: Tensor) -> Tensor:
        keep = [int(d) for d in x.shape[: self.start_dim]]
        rest = 1
        for d in x.shape[self.start_dim :]:
            rest *= int(d)
        return x.reshape(*keep, rest)
