"""Parallel loops in code generation: on a target with an OS the loop body is outlined and run through
``kiln_parallel_for`` (chunks of any size, in any order, give the same result; each chunk has its own
scratch), a nested parallel loop and a body too big for a worker's stack run serially, and a bare-metal
target gets plain serial loops and no thread symbols."""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np

from kiln.codegen.mathlib import MathLib
from kiln.codegen.target_machine import optimize
from kiln.codegen.tensor_codegen import TensorCodegen
from kiln.ir import tensor as T
from kiln.runtime_c import abi
from kiln.targets import get_target

X86 = get_target("x86_64-linux")
BOARD = get_target("mps2-an386")

_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_calls: list[tuple[int, int]] = []


def _chunked(body: int, ctx: int, n: int) -> None:
    """A stand-in pool: three uneven chunks, last first (chunks must not depend on each other)."""
    cuts = sorted({0, n // 5, (2 * n) // 3, n})
    for lo, hi in reversed(list(zip(cuts, cuts[1:], strict=False))):
        _calls.append((lo, hi))
        _BODY(body)(ctx, lo, hi)


_POOL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(_chunked)
_keep: list[object] = []


def _kernel(rows: int = 37, cols: int = 24, start: int = 3, kind: str = "parallel") -> T.TensorFunction:
    """``o[i, j] = 2 * a[i, j] + i`` for rows ``start..rows``, through a workspace row per iteration."""
    a, o = T.Buffer("a", (rows, cols)), T.Buffer("o", (rows, cols))
    tmp = T.Buffer("tmp", (cols,), scope="workspace")

    def row(i: T.LoopVar) -> T.Stmt:
        return T.Allocate(
            tmp,
            T.seq(
                T.loop(cols, lambda j: T.Store(tmp, (j,), a[i, j] * 2.0), name="j"),
                T.loop(cols, lambda j: T.Store(o, (i, j), tmp[j] + T.cast("float32", i)), name="j2"),
            ),
        )

    return T.TensorFunction("k", (a, o), T.loop(rows - start, row, name="i", kind=kind, start=start))


def _ir(f: T.TensorFunction, threads: bool = True) -> str:
    m = ir.Module()
    m.triple = X86.triple
    fn = TensorCodegen(m, MathLib(m), 256, 64, threads=threads).emit(f)
    fn.linkage = "external"
    return str(m)


def test_outlined_chunks_in_any_order_match_numpy() -> None:
    f = _kernel()
    text = _ir(f)
    assert f'call void @"{abi.PARALLEL_FOR_SYMBOL}"' in text
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # under a name of its own: the JIT keeps the first address registered for a name (tests/jit.py's pool)
    text = text.replace(f'@"{abi.PARALLEL_FOR_SYMBOL}"', '@"chunked_parallel_for"')
    llvm.add_symbol("chunked_parallel_for", ctypes.cast(_POOL, ctypes.c_void_p).value)
    mod = llvm.parse_assembly(text.replace(X86.triple, llvm.get_process_triple()))
    mod.verify()
    tm = llvm.Target.from_default_triple().create_target_machine(opt=3)
    optimize(mod, tm)
    ee = llvm.create_mcjit_compiler(mod, tm)
    ee.finalize_object()
    _keep.append(ee)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
        ee.get_function_address("k")
    )
    a = np.random.default_rng(0).standard_normal((37, 24)).astype("f4")
    o = np.zeros_like(a)
    scratch = np.zeros(1024, dtype=np.uint8)
    _calls.clear()
    fn(a.ctypes.data, o.ctypes.data, scratch.ctypes.data)
    assert _calls == [(22, 34), (6, 22), (0, 6)]  # the pool saw the loop's 34 iterations
    want = 2 * a + np.arange(37, dtype="f4")[:, None]
    want[:3] = 0  # rows before the loop's start are not written
    np.testing.assert_array_equal(o, want)


def test_outlined_body_takes_noalias_pointers_and_stack_scratch() -> None:
    text = _ir(_kernel())
    body = text[text.index('define internal void @"k.i.parallel"') :]
    body = body[: body.index("\n}")]
    assert body.count("ptr noalias") == 2  # a and o
    assert '%"tmp" = alloca [24 x float], align 64' in body  # each chunk its own workspace row
    assert "scratch" not in body


def test_nested_parallel_loop_runs_serially() -> None:
    a, o = T.Buffer("a", (8, 16)), T.Buffer("o", (8, 16))
    inner = lambda i: T.loop(16, lambda j: T.Store(o, (i, j), a[i, j] + 1.0), name="j", kind="parallel")  # noqa: E731
    text = _ir(T.TensorFunction("k", (a, o), T.loop(8, inner, name="i", kind="parallel")))
    assert text.count(f'call void @"{abi.PARALLEL_FOR_SYMBOL}"') == 1


def test_body_bigger_than_half_a_worker_stack_runs_serially() -> None:
    a, o = T.Buffer("a", (4, 16)), T.Buffer("o", (4, 16))
    big = T.Buffer("big", (abi.THREAD_STACK_BYTES // 8 + 16,), scope="workspace")  # just over half, float32
    body = T.loop(
        4,
        lambda i: T.Allocate(big, T.loop(16, lambda j: T.Store(o, (i, j), a[i, j]), name="j")),
        name="i",
        kind="parallel",
    )
    assert abi.PARALLEL_FOR_SYMBOL not in _ir(T.TensorFunction("k", (a, o), body))
    assert abi.PARALLEL_FOR_SYMBOL in _ir(_kernel())


def test_bare_metal_code_has_no_thread_calls_or_symbols() -> None:
    from kiln.codegen import build_llvm_ir
    from kiln.driver import compile_module
    from kiln.frontend.nn import GraphBuilder

    assert abi.PARALLEL_FOR_SYMBOL not in _ir(_kernel(), threads=False)
    g = GraphBuilder()
    x = g.input("x", (1, 8, 12, 12))
    w = np.full((8, 8, 3, 3), 0.1, dtype="f4")
    g.output(g.conv2d(x, g.const(w), pads=(1, 1, 1, 1)), "y")
    mod = g.build()
    linux = build_llvm_ir(compile_module(mod, X86), X86)[0]
    board = build_llvm_ir(compile_module(mod, BOARD), BOARD)[0]
    assert abi.PARALLEL_FOR_SYMBOL in linux and abi.THREADS_DEFAULT_SYMBOL in linux
    assert abi.PARALLEL_FOR_SYMBOL not in board and abi.THREADS_DEFAULT_SYMBOL not in board
