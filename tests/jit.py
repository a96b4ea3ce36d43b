"""Run a compiled module in-process on the host through LLVM's JIT (codegen unit tests without linking)."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Mapping

import llvmlite.binding as llvm
import numpy as np

from kiln.codegen import build_llvm_ir
from kiln.codegen.target_machine import optimize
from kiln.ir import Module
from kiln.targets import Target

_NOOP = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32)(lambda p, k: None)
_ENTRY = ctypes.CFUNCTYPE(
    ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
)
_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
# the thread pool's entry, serially: parallel loops run every iteration on the calling thread
_PARALLEL_FOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
    lambda body, ctx, n: _BODY(body)(ctx, 0, n) if n > 0 else None
)
_keep: list[object] = []


def jit_run(mod: Module, target: Target, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``kiln_model_entry`` of a lowered, memory-planned module on the host CPU."""
    text, weights, _ = build_llvm_ir(mod, target)
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    wbuf = np.zeros(len(weights) + 128, dtype=np.uint8)
    pad = (-wbuf.ctypes.data) % 64
    wbuf[pad : pad + len(weights)] = np.frombuffer(weights, dtype=np.uint8)
    _keep.append(wbuf)
    # a unique symbol per module: the JIT resolves a name to the first address ever registered for it
    sym = f"kiln_model_weights_{len(_keep)}"
    text = re.sub(r'@"?kiln_model_weights"?(?![\w])', f"@{sym}", text)
    entry_name = f"kiln_model_entry_{len(_keep)}"
    text = re.sub(r'@"?kiln_model_entry"?(?![\w])', f"@{entry_name}", text)
    llvm.add_symbol(sym, wbuf.ctypes.data + pad)
    addr = ctypes.cast(_NOOP, ctypes.c_void_p).value
    llvm.add_symbol("kiln_profile_begin", addr)
    llvm.add_symbol("kiln_profile_end", addr)
    llvm.add_symbol("kiln_parallel_for", ctypes.cast(_PARALLEL_FOR, ctypes.c_void_p).value)
    m = llvm.parse_assembly(text.replace(target.triple, llvm.get_process_triple()))
    tm = llvm.Target.from_default_triple().create_target_machine(opt=3)
    if not __import__("os").environ.get("KILN_JIT_O0"):
        optimize(m, tm)
    ee = llvm.create_mcjit_compiler(m, tm)
    ee.finalize_object()
    _keep.append(ee)
    entry = _ENTRY(ee.get_function_address(entry_name))
    main = mod.main
    ins = [np.ascontiguousarray(inputs[p.name], dtype=p.type.dtype) for p in main.params]
    outs = [np.zeros(v.type.static_shape, dtype=v.type.dtype) for v in main.outputs]
    ws = np.zeros(int(mod.attrs["memory_plan"]["arena_bytes"]) + 64, dtype=np.uint8)
    in_ptrs = (ctypes.c_void_p * max(1, len(ins)))(*[a.ctypes.data for a in ins])
    out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[a.ctypes.data for a in outs])
    dims = np.zeros(16, dtype=np.int64)  # the run-time dimension table (unused by fixed shapes)
    rc = entry(
        ctypes.addressof(in_ptrs),
        ctypes.addressof(out_ptrs),
        ws.ctypes.data + (-ws.ctypes.data) % 64,
        None,
        dims.ctypes.data,
    )
    assert rc == 0
    return outs
