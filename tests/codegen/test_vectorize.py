"""Explicit SIMD code for ``vectorized`` loops (kiln.codegen.vectorize): which loops become vector code for each
target's width, and that the vector code (with its scalar tails, broadcasts, casts and selects) computes what
NumPy does, run on the host through the JIT."""

from __future__ import annotations

import re

import numpy as np
import pytest

from graphs import conv_bn_relu
from jit import jit_run
from kiln.codegen import build_llvm_ir
from kiln.driver import compile_module
from kiln.frontend.nn import GraphBuilder
from kiln.ir import Module
from kiln.targets import get_target

HOST = "x86_64-linux-avx512"  # the JIT runs on this machine (AVX-512 here; the vector code is what is tested)


def _ir(mod: Module, target: str) -> str:
    t = get_target(target)
    return build_llvm_ir(compile_module(mod, t), t)[0]


def _vector_loads(text: str, lanes: int) -> int:
    return len(re.findall(rf"load <{lanes} x float>", text))


@pytest.mark.parametrize(
    ("target", "lanes"),
    [("x86_64-linux", 8), ("x86_64-linux-avx512", 16), ("aarch64-linux", 4), ("riscv64-linux-rvv", 4)],
)
def test_gemm_tile_is_vector_code_of_the_target_width(target: str, lanes: int) -> None:
    text = _ir(conv_bn_relu(channels=16, size=16), target)  # before LLVM's passes: kiln's own vectors
    assert _vector_loads(text, lanes) > 0
    assert re.search(rf"fmul (\w+ )*<{lanes} x float>", text) and re.search(
        rf"fadd (\w+ )*<{lanes} x float>", text
    )


def test_scalar_target_gets_no_vector_code() -> None:
    assert "x float>" not in _ir(conv_bn_relu(channels=16, size=16), "riscv64-linux")


def test_strided_loops_are_left_to_llvm() -> None:
    g = GraphBuilder()
    x = g.input("x", (16, 32))
    g.output(g.transpose(x, perm=(1, 0)), "t")  # a strided load in the vectorized loop: a gather
    text = _ir(g.build(), HOST)
    assert _vector_loads(text, 16) == 0 and "store <16 x float>" not in text


@pytest.mark.parametrize("op", ["exp", "sigmoid", "erf", "tanh", "gelu", "swish", "log", "sin"])
def test_math_loops_call_the_vector_math_functions(op: str) -> None:
    g = GraphBuilder()
    x = g.input("x", (16, 40))
    g.output(g.op(op, x), "y")
    text = _ir(g.build(), HOST)
    assert _vector_loads(text, 16) > 0 and "store <16 x float>" in text
    assert re.search(r"call <16 x float> @\"?kiln_math_\w+_v16", text)


def _jit(mod: Module, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    t = get_target(HOST)
    return jit_run(compile_module(mod, t), t, inputs)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 37, 64, 100, 1000])
def test_elementwise_with_broadcast_and_tail_matches_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.standard_normal((3, n)).astype("f4")
    b = rng.standard_normal((1, n)).astype("f4")
    c = rng.standard_normal((3, 1)).astype("f4")
    g = GraphBuilder()
    xa, xb, xc = g.input("a", a.shape), g.input("b", b.shape), g.input("c", c.shape)
    g.output(g.relu(g.add(g.mul(xa, xb), xc)), "y")
    g.output(g.op("sqrt", g.op("abs", xa)), "s")
    g.output(g.op("where", g.op("greater", xa, xb), xa, g.op("neg", xc)), "w")
    mod = g.build()
    # the vector path is the one under test (full steps, and a masked last step: x86 has no scalar tails):
    # rows of n with broadcasts; sqrt(abs(a)) is one loop of 3 n
    assert (_vector_loads(_ir(mod, HOST), 16) > 0) == (3 * n >= 16)
    y, s, w = _jit(mod, {"a": a, "b": b, "c": c})
    np.testing.assert_allclose(y, np.maximum(a * b + c, 0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s, np.sqrt(np.abs(a)), rtol=1e-6)
    np.testing.assert_array_equal(w, np.where(a > b, a, np.broadcast_to(-c, a.shape)))


@pytest.mark.parametrize(
    ("target", "masked"), [(HOST, True), ("x86_64-linux", True), ("aarch64-linux", False)]
)
def test_vector_loops_end_in_a_masked_step_on_x86(target: str, masked: bool) -> None:
    g = GraphBuilder()
    x = g.input("x", (2, 37))  # 37 = 2 x 16 + 5 (AVX-512), 4 x 8 + 5 (AVX2), 9 x 4 + 1 (NEON)
    g.output(g.op("sigmoid", x), "y")
    text = _ir(g.build(), target)
    assert ("llvm.masked.store" in text) == masked and ("llvm.masked.load" in text) == masked
    g = GraphBuilder()
    x = g.input("x", (4, 7))
    g.output(g.op("div", g.cast(x, to="int32"), g.const(np.full((4, 7), 3, "int32"))), "y")
    assert "llvm.masked" not in _ir(g.build(), target)  # integer division: masked-off lanes must not trap


def test_casts_and_integer_lanes_match_numpy() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(-50, 50, (4, 37)).astype("f4")
    g = GraphBuilder()
    v = g.input("x", x.shape)
    g.output(g.op("cast", v, to="int32"), "i")
    g.output(g.op("cast", g.op("cast", v, to="int64"), to="float32"), "f")
    g.output(g.op("cast", g.op("greater", v, g.const(np.float32(0))), to="float32"), "b")
    mod = g.build()
    assert "fptosi <16 x float>" in _ir(mod, HOST)
    i, f, b = _jit(mod, {"x": x})
    np.testing.assert_array_equal(i, x.astype(np.int32))
    np.testing.assert_array_equal(f, x.astype(np.int64).astype(np.float32))
    np.testing.assert_array_equal(b, (x > 0).astype(np.float32))


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (6, 8, 32),
        (7, 19, 33),
        (13, 64, 100),
        (1, 5, 17),
        (30, 70, 100),
        (27, 64, 7),
        (1, 100, 1100),
        (5, 9, 512),
    ],
)
def test_matmul_tiles_and_edges_match_numpy(m: int, k: int, n: int) -> None:
    """Register tiles with row and column edges, packed panels (m >= 24, k >= 64) and the streaming
    matrix-vector schedule (m < 6, wide n, with a short last block)."""
    rng = np.random.default_rng(m * k * n)
    a = rng.standard_normal((m, k)).astype("f4")
    w = rng.standard_normal((k, n)).astype("f4")
    g = GraphBuilder()
    g.output(g.matmul(g.input("a", a.shape), g.const(w)), "y")
    (y,) = _jit(g.build(), {"a": a})
    np.testing.assert_allclose(y, a.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
