"""What emitting one tensor function shares between :mod:`kiln.codegen.tensor_codegen` (scalar code, loops,
allocations) and :mod:`kiln.codegen.vectorize` (SIMD code for ``vectorized`` loops): the per-function state
and the scalar emitter's interface that vector emission builds on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import llvmlite.ir as ir

from ..ir import tensor as T


@dataclass
class FunctionContext:
    """The state of one tensor function being emitted."""

    b: ir.IRBuilder
    fn: ir.Function
    entry: ir.Block
    ptrs: dict[int, ir.Value] = field(default_factory=dict)  # buffer uid -> base pointer
    vars: dict[int, ir.Value] = field(default_factory=dict)  # loop var uid -> i64 value
    scratch: ir.Value | None = None
    scratch_off: int = 0


class ScalarEmitter(Protocol):
    """The parts of :class:`kiln.codegen.tensor_codegen.TensorCodegen` that vector emission uses."""

    module: ir.Module
    vector_bits: int

    def mem_type(self, dtype: str) -> ir.Type: ...

    def stmt(self, c: FunctionContext, s: T.Stmt) -> None: ...

    def counted_loop(
        self,
        c: FunctionContext,
        var: T.LoopVar,
        lo: ir.Value,
        extent: T.Expr,
        body: Callable[[], None],
        step: int = 1,
    ) -> None: ...

    def addr(self, c: FunctionContext, buf: T.Buffer, indices: tuple[T.Expr, ...]) -> ir.Value: ...

    def expr(self, c: FunctionContext, e: T.Expr) -> ir.Value: ...

    def binop_values(
        self, c: FunctionContext, op: str, a: ir.Value, y: ir.Value, dt: str, dt_b: str
    ) -> ir.Value: ...

    def convert(self, c: FunctionContext, v: ir.Value, src: str, dst: str) -> ir.Value: ...
