"""Build models directly with kiln's operators (no ONNX file needed).

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
from collections.abc import Callable
from typing import Any

import numpy as np

from ..ir import Constant, GraphFunction, Module, Node, Sym, TensorFunction, TensorType, Value, Var
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

    def input(self, name: str, shape: tuple[int | str, ...], dtype: str = "float32") -> Var:
        dims = tuple(Sym(d) if isinstance(d, str) else int(d) for d in shape)
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

    def build(self) -> Module:
        if not self.outputs:
            raise ValueError(f"model {self.name!r} has no outputs; call .output(value) first")
        main = GraphFunction(
            "main", tuple(self.params), tuple(self.nodes), tuple(self.outputs), {"model_name": self.name}
        )
        return Module({"main": main, **self.functions})
