"""Code generation: every tensor function plus the AOT entry of ``main`` -> one LLVM module -> one object.

Input: a legalized module whose ``main`` only has ``call_tensor``/``call_extern``/``view`` nodes and whose
``memory_plan`` attribute was written by the plan-memory pass. Output: :class:`ObjectCode` (object bytes, the
weights blob, kernel names, sizes) that :mod:`kiln.package` links with the C runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from ..ir import Module
from ..targets import Target
from .entry import emit_entry, layout_constants
from .mathlib import MathLib
from .target_machine import compile_ir, emit_assembly
from .tensor_codegen import TensorCodegen


@dataclass(frozen=True)
class ObjectCode:
    object: bytes
    weights: bytes
    kernel_names: tuple[str, ...]
    llvm_ir: str
    workspace_bytes: int


def build_llvm_ir(mod: Module, target: Target) -> tuple[str, bytes, list[str]]:
    """LLVM IR text for the whole module, the weights blob and the kernel names (profiling order)."""
    llmod = ir.Module(name=mod.main.name)
    llmod.triple = target.triple
    math = MathLib(llmod)
    tcg = TensorCodegen(llmod, math, target.vector_bits)
    funcs = {name: tcg.emit(f) for name, f in sorted(mod.tensor_functions().items())}
    weights, const_offsets = layout_constants(mod)
    kernels = emit_entry(llmod, mod, funcs, const_offsets)
    return str(llmod), weights, kernels


def generate(mod: Module, target: Target) -> ObjectCode:
    text, weights, kernels = build_llvm_ir(mod, target)
    obj, _ = compile_ir(text, target)
    return ObjectCode(obj, weights, tuple(kernels), text, int(mod.attrs["memory_plan"]["arena_bytes"]))


__all__ = ["ObjectCode", "build_llvm_ir", "compile_ir", "emit_assembly", "generate"]
