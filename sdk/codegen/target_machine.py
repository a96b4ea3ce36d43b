"""LLVM target machines for kiln targets: optimize a module at O3 for the target's CPU and features and emit
one object file."""

from __future__ import annotations

import functools
import threading

import llvmlite.binding as llvm

from ..targets import Target

_lock = threading.Lock()


@functools.cache
def _init() -> None:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


def _abi(t: Target) -> str:
    if t.arch.startswith("riscv"):
        return {"lp64d": "lp64d", "ilp32f": "ilp32f", "ilp32": "ilp32", "ilp32d": "ilp32d"}.get(
            t.float_abi, ""
        )
    return ""


def target_machine(t: Target) -> llvm.TargetMachine:
    _init()
    tgt = llvm.Target.from_triple(t.triple)
    return tgt.create_target_machine(
        cpu=t.cpu,
        features=t.features,
        opt=3,
        reloc="static" if t.is_bare_metal else "pic",  # firmware is linked at fixed addresses: no GOT
        codemodel="default",
        abiname=_abi(t),
    )


def optimize(mod: llvm.ModuleRef, tm: llvm.TargetMachine) -> None:
    pto = llvm.PipelineTuningOptions(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    pm.run(mod, pb)


def compile_ir(llvm_ir: str, t: Target) -> tuple[bytes, str]:
    """Parse, verify, optimize (O3) and emit ``llvm_ir`` for target ``t``; returns (object bytes, optimized IR)."""
    with _lock:  # llvmlite's global state is not thread-safe
        _init()
        mod = llvm.parse_assembly(llvm_ir)
        mod.verify()
        tm = target_machine(t)
        mod.triple = t.triple
        mod.data_layout = str(tm.target_data)
        optimize(mod, tm)
        return tm.emit_object(mod), str(mod)


def emit_assembly(llvm_ir: str, t: Target) -> str:
    """Optimized assembly text for ``llvm_ir`` (for inspection and instruction checks in tests)."""
    with _lock:
        _init()
        mod = llvm.parse_assembly(llvm_ir)
        tm = target_machine(t)
        mod.triple = t.triple
        mod.data_layout = str(tm.target_data)
        optimize(mod, tm)
        return str(tm.emit_assembly(mod))
