"""Code generation: every tensor function plus the AOT entry of ``main`` -> one LLVM module -> one object.

Input: a legalized module whose ``main`` only has ``call_tensor``/``call_extern``/``view`` nodes and whose
``memory_plan`` attribute was written by the plan-memory pass. Output: :class:`ObjectCode` (object bytes, the
weights blob, kernel names, sizes) that :mod:`kiln.package` links with the C runtime.

Foreign code (:mod:`kiln.ir.extern`): a tensor function with ``attrs["extern_symbol"]`` (a code-generation
override, :mod:`kiln.transform.codegen_override`) is declared, not emitted, and called under that symbol;
``call_extern`` nodes call their symbol. The module's LLVM IR externs are compiled here for the target (one
object each, in ``ObjectCode.extra_objects``); its C externs are passed on (``ObjectCode.externs``) for the
package step to compile with the target's C toolchain.

Objects and caching: :func:`kiln.codegen.target_machine.compile_objects` turns the module into one object per
tensor function and one for the entry (targets with an OS; bare metal: one object), in parallel processes,
each cached by content. :func:`generate` also caches a whole module's result (LLVM IR, kernel names,
objects) under the sha256 of the printed module, the target and the code generator's sources, so compiling
the same model again skips LLVM IR emission too; the output is the same with or without the cache.

Threads: on targets with an OS, ``parallel`` loops call the runtime's thread pool (see
:mod:`kiln.codegen.tensor_codegen`), and the object defines the package's default thread count, module
attribute ``threads`` (default 1; 0: one per online CPU), as the weak ``int32``
:data:`kiln.runtime_c.abi.THREADS_DEFAULT_SYMBOL` that the Linux runner reads. Bare-metal objects have
neither.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import llvmlite.ir as ir

from ..ir import Module, TensorFunction
from ..ir.extern import ExternSource, externs
from ..ir.tensor import workspace_bytes
from ..runtime_c import abi
from ..targets import Target
from .entry import emit_entry, layout_constants
from .mathlib import MathLib
from .target_machine import (
    cache_get,
    cache_key,
    cache_put,
    compile_ir,
    compile_objects,
    emit_assembly,
    llvm_triple,
)
from .tensor_codegen import TensorCodegen


@dataclass(frozen=True)
class ObjectCode:
    object: bytes
    weights: bytes
    kernel_names: tuple[str, ...]
    llvm_ir: str
    workspace_bytes: int
    #: objects to link next to ``object``: the tensor functions compiled apart (targets with an OS, see
    #: :func:`kiln.codegen.target_machine.compile_objects`), then those of the module's LLVM IR externs
    extra_objects: tuple[bytes, ...] = ()
    #: every extern of the module (the C ones still to compile for the target)
    externs: tuple[ExternSource, ...] = ()


def build_llvm_ir(mod: Module, target: Target) -> tuple[str, bytes, list[str]]:
    """LLVM IR text for the whole module, the weights blob and the kernel names (profiling order)."""
    llmod = ir.Module(name=mod.main.name)
    llmod.triple = llvm_triple(target)
    math = MathLib(llmod)
    threads = not target.is_bare_metal
    tcg = TensorCodegen(llmod, math, target.vector_bits, target.pointer_bits, threads=threads)
    # x86 (AVX2 vmaskmov, AVX-512 mask registers) loads and stores part of a vector natively: vector loops
    # end in one masked step instead of a scalar remainder (kiln.codegen.vectorize)
    tcg.masked_tails = target.triple.startswith("x86_64") and target.vector_bits >= 256
    funcs = {
        name: _declare(llmod, f) if "extern_symbol" in f.attrs else tcg.emit(f)
        for name, f in sorted(mod.tensor_functions().items())
    }
    weights, const_offsets = layout_constants(mod)
    kernels = emit_entry(llmod, mod, funcs, const_offsets)
    if threads:
        default = ir.GlobalVariable(llmod, ir.IntType(32), abi.THREADS_DEFAULT_SYMBOL)
        default.linkage = "weak"  # several models may link into one program
        default.global_constant = True
        default.initializer = ir.Constant(ir.IntType(32), default_threads(mod))
    return str(llmod), weights, kernels


def default_threads(mod: Module) -> int:
    """The package's default thread count: module attribute ``threads`` (0: one per online CPU), else 1."""
    return abi.check_threads(mod.attrs.get("threads", 1))


@functools.cache
def _sources_hash() -> str:  # noqa: N802
    """sha256 of kiln's version and the code generator's sources (a new codegen misses the cache)."""
    from kiln import __version__

    h = hashlib.sha256(__version__.encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _cache(key: str, text: str, kernels: list[str], objects: list[bytes]) -> None:
    """Caches a module's code generation: LLVM IR (compressed), kernel names, objects."""
    head = json.dumps({"kernels": kernels, "objects": [len(o) for o in objects]}).encode()
    cache_put(
        key,
        b"".join([len(head).to_bytes(8, "little"), head, *objects, zlib.compress(text.encode(), 1)]),
        "modules",
    )


def _cached(key: str) -> tuple[str, list[str], list[bytes]] | None:
    """What :func:`_cache` stored under ``key``, or None."""
    data = cache_get(key, "modules")
    if data is None:
        return None
    n = int.from_bytes(data[:8], "little")
    head = json.loads(data[8 : 8 + n])
    pos, objects = 8 + n, []
    for size in head["objects"]:
        objects.append(data[pos : pos + size])
        pos += size
    return zlib.decompress(data[pos:]).decode(), list(head["kernels"]), objects


def _declare(llmod: ir.Module, f: TensorFunction) -> ir.Function:
    """An external declaration of tensor function ``f`` under its override's symbol."""
    nparams = len(f.params) + (1 if workspace_bytes(f) else 0)
    fn = ir.Function(
        llmod, ir.FunctionType(ir.VoidType(), [ir.PointerType()] * nparams), f.attrs["extern_symbol"]
    )
    fn.attributes.add("nounwind")
    return fn


def generate(mod: Module, target: Target) -> ObjectCode:
    key = cache_key(_sources_hash(), repr(target), str(mod))
    hit = _cached(key)
    if hit is not None:
        text, kernels, (obj, *functions) = hit
        weights = layout_constants(mod)[0]
    else:
        text, weights, kernels = build_llvm_ir(mod, target)
        obj, *functions = compile_objects(text, target)  # split, cached, in parallel (target_machine)
        _cache(key, text, kernels, [obj, *functions])
    extra = tuple(compile_ir(e.files[0][1], target)[0] for e in externs(mod.attrs) if e.kind == "llvm")
    return ObjectCode(
        obj,
        weights,
        tuple(kernels),
        text,
        int(mod.attrs["memory_plan"]["arena_bytes"]),
        (*functions, *extra),
        externs(mod.attrs),
    )


__all__ = ["ObjectCode", "build_llvm_ir", "compile_ir", "emit_assembly", "generate"]
