"""The module: graph functions, tensor functions and attributes, side by side, so a pass can lower one
operator at a time and the graph keeps calling what it lowered (docs/topics/ir.md)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .graph import GraphFunction
from .printer import print_module_text
from .tensor import TensorFunction

Function = GraphFunction | TensorFunction


@dataclass(frozen=True, eq=False)
class Module:
    """An immutable bag of functions. ``main`` is the graph function that becomes the model entry.

    ``attrs`` holds module-wide facts that passes produce and later passes read (for example
    ``memory_plan`` written by plan-memory and read by codegen). Passes return new modules.
    """

    functions: dict[str, Function] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> GraphFunction:
        f = self.functions.get("main")
        if not isinstance(f, GraphFunction):
            raise KeyError("module has no graph function 'main'")
        return f

    def graph_functions(self) -> dict[str, GraphFunction]:
        return {k: v for k, v in self.functions.items() if isinstance(v, GraphFunction)}

    def tensor_functions(self) -> dict[str, TensorFunction]:
        return {k: v for k, v in self.functions.items() if isinstance(v, TensorFunction)}

    def with_function(self, f: Function) -> Module:
        return replace(self, functions={**self.functions, f.name: f})

    def with_functions(self, fs: dict[str, Function]) -> Module:
        return replace(self, functions=fs)

    def with_attrs(self, **attrs: Any) -> Module:
        return replace(self, attrs={**self.attrs, **attrs})

    def __str__(self) -> str:
        return print_module(self)


def print_module(m: Module, constants: str = "auto") -> str:
    """The text of ``m``: its constants, every function in order, its attributes (:mod:`kiln.ir.printer`).
    :func:`kiln.ir.parse_module` reads it back to an equal module. ``constants`` is ``"auto"`` (small
    constants inline, large ones elided: parse with ``constants=constant_table(m)``), ``"inline"`` (all data
    in the text) or ``"elided"``."""
    return print_module_text(m.functions.values(), m.attrs, constants)
