"""legalize: turn every graph operator (or fused group) of ``main`` into a tensor function and a call to it.

Expects: graph-level operators and ``fused`` groups with static shapes; ``attrs["target"]`` on the module
(vector width for the schedules the lowerings choose). Guarantees: ``main`` holds only ``call_tensor``,
``call_extern`` and ``view`` nodes; every graph output is written by a kernel into its own output buffer
(copies are added where an output is an input, a constant, or the same value twice); identical kernels
(same operators, attributes, shapes) are shared, so the profile shows them as one kernel with several calls.
``call_tensor`` nodes already in the graph (a script kernel called from kiln.frontend.nn, a lowering
override) are kept with their tensor functions. A target that takes chosen operators over does so with a
lowering override (:func:`kiln.transform.dispatch.lowering`), which runs just before this pass.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

from ..ir import Constant, GraphFunction, Module, Node, Sym, TensorFunction, TensorType, Value, Var
from ..ir import tensor as T
from ..ops import LowerContext, get_op
from ..ops.base import OpError, broadcast_index, elementwise_copy
from ..runtime_c import abi
from .pipeline import register_pass


def _key_attr(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ("array", v.shape, str(v.dtype), hashlib.sha256(v.tobytes()).hexdigest())
    if isinstance(v, dict):
        return tuple(sorted((k, _key_attr(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return tuple(_key_attr(x) for x in v)
    return v


def _is_scalar_const(v: Value) -> bool:
    return isinstance(v, Constant) and v.data.size == 1


def _ident(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else f"t_{s}"


class _Legalizer:
    def __init__(self, mod: Module) -> None:
        self.mod = mod
        self.target = mod.attrs.get("target")
        self.funcs: dict[str, TensorFunction] = {}
        self.by_key: dict[Any, str] = {}
        # dynamic shapes: the table of run-time dimensions (the inputs' named sizes first, then every size
        # computed from them that a kernel uses) and the graph value that stands for it in kernel calls
        self.dims: list[Sym] = []
        for p in mod.main.params:
            for d in p.type.shape:
                if isinstance(d, Sym) and d not in self.dims:
                    if len(d.terms) != 1 or d.terms[0] != ((d.name,), 1):
                        raise OpError(
                            f"input {p.name!r} has dimension {d}: a run-time dimension of an input must be a "
                            "named size (like seq), not an expression"
                        )
                    self.dims.append(d)
        self.named = len(self.dims)
        self.dims_var = Var("dims", TensorType((abi.MAX_DIMS,), "int64"))

    def dim_index(self, d: Sym) -> int:
        if d not in self.dims:
            self.dims.append(d)
            if len(self.dims) > abi.MAX_DIMS:
                raise OpError(
                    f"the model uses more than {abi.MAX_DIMS} distinct run-time dimensions "
                    f"({', '.join(map(str, self.dims))}); fix some of them with --shape"
                )
        return self.dims.index(d)

    def buffers(self, prefix: str, types: list[TensorType], dims: T.Buffer | None) -> list[T.Buffer]:
        """Kernel parameters for values of ``types``; a run-time dimension is a load of the dimension table
        (one expression object per table entry, so buffers of equal shapes have equal shape tuples)."""
        loads: dict[int, T.Expr] = {}

        def dim(d: Any) -> Any:
            if isinstance(d, int):
                return d
            assert dims is not None
            k = self.dim_index(d)
            return loads.setdefault(k, dims[k])

        return [
            T.Buffer(f"{prefix}{i}", tuple(dim(d) for d in t.shape), t.dtype) for i, t in enumerate(types)
        ]

    def kernel(self, chain: list[Node], outputs: tuple[Var, ...]) -> tuple[str, list[Value]]:
        """Tensor function for ``chain`` (anchor + elementwise epilogue); returns its name and call inputs."""
        anchor, rest = chain[0], chain[1:]
        call_inputs: list[Value] = []

        def slot(v: Value) -> int:
            for i, x in enumerate(call_inputs):
                if x is v:
                    return i
            call_inputs.append(v)
            return len(call_inputs) - 1

        anchor_slots = [slot(v) for v in anchor.inputs]
        prev: Value = anchor.outputs[0]
        earlier: list[Value] = []  # results of the chain before ``prev`` (fuse-ops: used again, as in SiLU)
        chain_sig = []
        for n in rest:
            args: list[Any] = []
            for v in n.inputs:
                if v is prev:
                    args.append("acc")
                elif any(v is e for e in earlier):
                    args.append(("val", next(k for k, e in enumerate(earlier) if e is v)))
                elif _is_scalar_const(v):
                    args.append(("imm", v.type.dtype, v.data.reshape(()).item()))  # type: ignore[union-attr]
                else:
                    args.append(slot(v))
            chain_sig.append((n.op, _key_attr(n.attrs), tuple(args)))
            earlier.append(prev)
            prev = n.outputs[0]
        key = (
            anchor.op,
            _key_attr(anchor.attrs),
            tuple(anchor_slots),
            tuple(chain_sig),
            tuple((v.type.shape, v.type.dtype) for v in call_inputs),
            tuple((o.type.shape, o.type.dtype) for o in outputs),
        )
        dynamic = not all(v.type.is_static for v in (*call_inputs, *outputs))
        if key in self.by_key:
            return self.by_key[key], [*call_inputs, self.dims_var] if dynamic else call_inputs
        name = _ident("_".join(n.op for n in chain))
        k = 0
        while f"{name}_{k}" in self.funcs or f"{name}_{k}" in self.mod.functions:
            k += 1
        fname = f"{name}_{k}"
        dims = T.Buffer("dims", (abi.MAX_DIMS,), "int64") if dynamic else None
        in_bufs = self.buffers("in", [v.type for v in call_inputs], dims)
        out_bufs = self.buffers("out", [o.type for o in outputs], dims)
        op = get_op(anchor.op)
        if dynamic:
            slow = [n.op for n in chain if not get_op(n.op).dynamic_shapes]
            if slow:
                raise OpError(
                    f"node {anchor.name or anchor.op!r}: operator {', '.join(slow)} has no lowering for run-time "
                    f"dimensions yet (shapes {', '.join(str(v.type) for v in (*call_inputs, *outputs))}); "
                    "compile with fixed sizes (--shape NAME=1x3x224x224)"
                )
        read = sorted({a for _, _, args in chain_sig for a in args if isinstance(a, int)})
        ctx = LowerContext(
            self.target,
            self._epilogue(chain_sig, in_bufs, out_bufs[0]) if rest else None,
            fname,
            tuple(in_bufs[a] for a in read),
        )
        try:
            body = op.lower(ctx, [in_bufs[s] for s in anchor_slots], out_bufs, anchor.attrs)
        except OpError as e:
            raise OpError(f"cannot lower node {anchor.name or anchor.op!r}: {e}") from e
        flops = (
            0
            if dynamic
            else op.flops([v.type for v in anchor.inputs], [o.type for o in anchor.outputs], anchor.attrs)
        )
        params = (*in_bufs, *([dims] if dims is not None else []), *out_bufs)
        tf = TensorFunction(
            fname, params, body, len(out_bufs), {"ops": [n.op for n in chain], "flops": flops}
        )
        if dims is not None:
            call_inputs = [*call_inputs, self.dims_var]
        self.funcs[fname] = tf
        self.by_key[key] = fname
        return fname, call_inputs

    def _epilogue(self, chain_sig: list[Any], in_bufs: list[T.Buffer], out: T.Buffer) -> Any:
        def apply(value: T.Expr, idx: tuple[T.Expr, ...], flat: T.Expr | None) -> T.Expr:
            v = value
            earlier: list[T.Expr] = []
            for op_name, attrs_key, args in chain_sig:
                exprs = []
                for a in args:
                    if a == "acc":
                        exprs.append(v)
                    elif isinstance(a, tuple) and a[0] == "val":
                        exprs.append(earlier[a[1]])
                    elif isinstance(a, tuple):
                        _, dtype, val = a
                        exprs.append(T.const(float(val) if dtype.startswith("float") else int(val), dtype))
                    else:
                        b = in_bufs[a]
                        if flat is not None and b.shape == out.shape and not b.is_dynamic:
                            exprs.append(b.with_(shape=(b.numel,), strides=())[flat])
                        else:
                            exprs.append(b[broadcast_index(b, idx, out.ndim)])
                earlier.append(v)
                v = get_op(op_name).scalar(dict(attrs_key) if attrs_key else {}, *exprs)  # type: ignore[attr-defined]
            return v

        return apply

    def copy_kernel(self, v: Value) -> str:
        key = ("copy", v.type.shape, v.type.dtype)
        if key in self.by_key:
            return self.by_key[key]
        k = len(self.funcs)
        while f"copy_{k}" in self.funcs or f"copy_{k}" in self.mod.functions:
            k += 1
        fname = f"copy_{k}"
        dims = None if v.type.is_static else T.Buffer("dims", (abi.MAX_DIMS,), "int64")
        src, dst = (*self.buffers("in", [v.type], dims), *self.buffers("out", [v.type], dims))
        self.funcs[fname] = TensorFunction(
            fname,
            (src, *([dims] if dims is not None else []), dst),
            elementwise_copy(LowerContext(self.target), src, dst),
            1,
            {"ops": ["copy"], "flops": 0},
        )
        self.by_key[key] = fname
        return fname


@register_pass("legalize", "legalize")
def legalize(mod: Module) -> Module:
    main = mod.main
    bounds = mod.attrs.get("dim_bounds") or {}
    for p in main.params:
        unbound = [d for d in p.type.shape if isinstance(d, Sym) and not d.atoms() <= set(bounds)]
        if unbound:
            raise OpError(
                f"input {p.name!r} has symbolic shape {p.type}; give concrete sizes or bounds "
                f"(kiln compile --shape {p.name}=1x3x224x224, or 1x?:512 for a size known at run time, "
                "at most 512; shapes= in kiln.compile)"
            )
    lg = _Legalizer(mod)
    nodes: list[Node] = []
    for n in main.nodes:
        if n.op in ("call_tensor", "call_extern", "view"):
            nodes.append(n)
            continue
        chain = _unfuse(n) if n.op == "fused" else [n]
        if len(chain) == 1 and get_op(n.op).kind == "view":
            nodes.append(Node("view", (n.inputs[0],), n.outputs, {}, n.name))
            continue
        fname, call_inputs = lg.kernel(chain, n.outputs)
        nodes.append(Node("call_tensor", tuple(call_inputs), n.outputs, {"func": fname}, n.name))
    nodes, outputs = _materialize_outputs(main, nodes, lg)
    fns: dict[str, Any] = {k: v for k, v in mod.functions.items() if k != "main"}
    fns.update(lg.funcs)
    fns["main"] = main.with_(nodes=tuple(nodes), outputs=tuple(outputs))
    out = mod.with_functions(dict(sorted(fns.items(), key=lambda kv: kv[0] != "main")))
    if lg.dims:  # the dimension table the entry fills: what codegen, the package and the runtime read
        out = out.with_attrs(dims={"table": list(lg.dims), "named": lg.named, "var": lg.dims_var.uid})
    return out


def _unfuse(n: Node) -> list[Node]:
    """The nodes of a fused group with the body's parameters replaced by the group's actual inputs."""
    body: GraphFunction = n.attrs["body"]
    actual = dict(zip(body.params, n.inputs, strict=True))
    return [m.with_(inputs=tuple(actual.get(v, v) for v in m.inputs)) for m in body.nodes]  # type: ignore[call-overload,arg-type]


def _materialize_outputs(
    main: GraphFunction, nodes: list[Node], lg: _Legalizer
) -> tuple[list[Node], list[Value]]:
    """Make every output the result of a kernel that can write straight into the caller's output buffer."""
    producer = {id(o): n for n in nodes for o in n.outputs}

    def root(v: Value) -> Value:
        while isinstance(v, Var) and id(v) in producer and producer[id(v)].op == "view":
            v = producer[id(v)].inputs[0]
        return v

    claimed: set[int] = set()
    outputs: list[Value] = []
    for v in main.outputs:
        r = root(v)
        if isinstance(r, Var) and id(r) in producer and id(r) not in claimed:
            claimed.add(id(r))
            outputs.append(v)
            continue
        copy = Var(v.name, v.type)
        nodes.append(Node("call_tensor", (v,), (copy,), {"func": lg.copy_kernel(v)}, f"{v.name}_copy"))
        outputs.append(copy)
    return nodes, outputs
