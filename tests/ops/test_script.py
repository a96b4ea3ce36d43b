"""kiln script: Python loop nests parsed into tensor IR compute what the same Python computes on NumPy
arrays (host JIT); custom operators made from them work in graphs, the interpreter and fusion; mistakes are
reported with the kernel's file line."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from jit import jit_run
from kiln.driver import compile_module
from kiln.frontend.nn import GraphBuilder
from kiln.ir import TensorType
from kiln.ir.printer import print_tensor
from kiln.ops import script
from kiln.ops.interpreter import interpret
from kiln.ops.script import ScriptError
from kiln.targets import get_target
from kiln.transform import get_pass

X86 = get_target("x86_64-linux")


@script.kernel
def softplus_rows(x, out):  # noqa: ANN001, ANN201
    """out[i] = sum over j of a piecewise function (an accumulator, a run-time branch, math calls)."""
    for i in range(x.shape[0]):
        acc = 0.0
        for j in range(x.shape[1]):
            v = x[i, j]
            if v > 0:
                acc += v + script.log(1.0 + script.exp(-v))
            else:
                acc += math.log(1.0 + np.exp(v))
        out[i] = acc


@script.kernel
def strided_prefix(x, out, *, stride=2):  # noqa: ANN001, ANN201
    """Every stride-th element's running sum, via a local scratch array; the rest zero."""
    n = x.shape[0]
    tmp = script.alloc((n,), "float32")
    for i in range(n):
        tmp[i] = 0.0
        out[i] = 0.0
    run = 0.0
    for i in range(0, n, stride):
        run = run + x[i]
        tmp[i] = run
    for i in script.vectorized(n):
        out[i] = tmp[i]


@script.kernel
def index_math(x, out, *, mode="clamp"):  # noqa: ANN001, ANN201
    """Integer arithmetic, comparisons chains, build-time branches on an attribute, select/min/max/abs."""
    rows, cols = x.shape
    for r, c in script.grid(rows, cols):
        k = (r * cols + c) // 3 % cols
        inside = 0 < c < cols - 1 and not r == 0
        if mode == "clamp":
            v = min(max(x[r, k], -0.5), 0.5)
        else:
            v = abs(x[r, k]) ** 2
        out[r, c] = script.select(inside, v, float(k) * 0.25)


def _call(kernel, x: np.ndarray, out_shape: tuple[int, ...], **attrs) -> np.ndarray:  # noqa: ANN001
    g = GraphBuilder("k")
    v = g.input("x", x.shape)
    g.output(g.call_tensor(kernel, v, outputs=TensorType(out_shape, "float32"), **attrs), "y")
    lowered = compile_module(g.build(), X86)
    return jit_run(lowered, X86, {"x": x})[0]


@pytest.mark.parametrize(
    ("kernel", "shape", "out_shape", "attrs"),
    [
        (softplus_rows, (5, 9), (5,), {}),
        (strided_prefix, (11,), (11,), {}),
        (strided_prefix, (11,), (11,), {"stride": 3}),
        (index_math, (4, 6), (4, 6), {}),
        (index_math, (4, 6), (4, 6), {"mode": "square"}),
    ],
)
def test_a_kernel_compiles_to_what_python_computes(kernel, shape, out_shape, attrs) -> None:  # noqa: ANN001
    x = np.random.default_rng(0).standard_normal(shape).astype("f4")
    want = np.zeros(out_shape, "f4")
    kernel.run(x, want, **attrs)
    np.testing.assert_allclose(_call(kernel, x, out_shape, **attrs), want, rtol=1e-5, atol=1e-5)


def test_the_tensor_ir_reads_like_the_kernel() -> None:
    f = softplus_rows.tensor_function([((2, 3), "float32")], [((2,), "float32")])
    text = print_tensor(f)
    assert (
        text.splitlines()[0]
        == "tensor softplus_rows(in0: float32[2, 3]) -> (out0: float32[2]):  # ops: softplus_rows"
    )
    assert "acc: float32[] = alloc(local)" in text and "for j in range(3):" in text
    assert "log((1f + exp(neg(in0[i, j]))))" in text  # v is a name for its expression, not a variable


# -------------------------------------------------------------------------------------------- custom operators
@script.operator("test_scaled_rows", infer=lambda x, *, scale: TensorType(x.shape[:1], x.dtype))
def scaled_rows(x, out, *, scale):  # noqa: ANN001, ANN201
    for i in range(x.shape[0]):
        s = 0.0
        for j in range(x.shape[1]):
            s += x[i, j] * scale
        out[i] = s


@script.operator("test_cube")
def cube(x, out):  # noqa: ANN001, ANN201
    for i in range(x.shape[0]):
        out[i] = x[i] * x[i] * x[i]


def test_a_script_operator_is_an_operator_everywhere() -> None:
    g = GraphBuilder("ops")
    x = g.input("x", (3, 4))
    y = g.test_scaled_rows(x, scale=0.5)
    z = g.relu(g.test_cube(y))  # fused: the cube kernel stores through relu's epilogue
    g.output(z, "z")
    mod = g.build()
    xv = np.random.default_rng(1).standard_normal((3, 4)).astype("f4")
    want = np.maximum((xv.sum(1) * 0.5) ** 3, 0)
    np.testing.assert_allclose(
        interpret(mod, {"x": xv})["z"], want, rtol=1e-5
    )  # reference: the kernel in Python
    lowered = compile_module(mod, X86)
    kinds = [lowered.functions[n.attrs["func"]].attrs["ops"] for n in lowered.main.nodes]
    assert ["test_cube", "relu"] in kinds
    np.testing.assert_allclose(jit_run(lowered, X86, {"x": xv})[0], want, rtol=1e-5, atol=1e-6)


def test_constant_inputs_fold_through_the_python_reference() -> None:
    g = GraphBuilder("fold")
    x = g.input("x", (3,))
    g.output(g.add(x, g.test_cube(g.const(np.array([1, 2, 3], "f4")))), "y")
    folded = get_pass("fold-constants")(g.build())
    assert [n.op for n in folded.main.nodes] == ["add"]
    np.testing.assert_array_equal(folded.main.nodes[0].inputs[1].data, [1, 8, 27])


def test_attributes_are_checked() -> None:
    g = GraphBuilder("a")
    x = g.input("x", (3, 4))
    with pytest.raises(
        ValueError, match="has no attribute\\(s\\) \\['scael'\\]; its attributes are \\['scale'\\]"
    ):
        g.test_scaled_rows(x, scael=2.0)
    with pytest.raises(ValueError, match="needs attribute 'scale'"):
        g.test_scaled_rows(x)
    with pytest.raises(ValueError, match="takes 1 inputs \\(x\\), got 2"):
        g.test_cube(x, x)


# ----------------------------------------------------------------------------------------------------- errors
def test_unsupported_python_is_reported_with_its_line() -> None:
    @script.kernel
    def uses_while(x, out):  # noqa: ANN001, ANN202
        i = 0
        while i < 3:
            i += 1

    @script.kernel
    def float_index(x, out):  # noqa: ANN001, ANN202
        for i in range(4):
            out[i] = x[x[i]]

    @script.kernel
    def int_division(x, out):  # noqa: ANN001, ANN202
        for i in range(4):
            out[i] = float(i / 2)

    @script.kernel
    def unknown(x, out):  # noqa: ANN001, ANN202
        for i in range(4):
            out[i] = nope(x[i])  # noqa: F821

    first = uses_while.fn.__code__.co_firstlineno
    cases = [
        (uses_while, rf"line {first + 3}: While statements are not supported"),
        (float_index, r"index of in0 is a float \(float32\)"),
        (int_division, r"'/' on integers: use '//'"),
        (unknown, r"name 'nope' is not defined"),
    ]
    for k, message in cases:
        with pytest.raises(ScriptError, match=message):
            k.tensor_function([((4,), "float32")], [((4,), "float32")])
    with pytest.raises(ValueError, match=re.escape("takes 2 buffers (x, out), got 2 inputs and 1 outputs")):
        cube.kernel.tensor_function([((4,), "float32")] * 2, [((4,), "float32")])


@script.kernel
def swap_through_scratch(x, out):  # noqa: ANN001, ANN201
    """A value read from a scratch array, then the array overwritten: the value read must not change."""
    n = x.shape[0]
    tmp = script.alloc((1,), "float32")
    for i in range(n):
        tmp[0] = x[i]
        before = tmp[0]
        tmp[0] = 0.0
        out[i] = before + tmp[0]


def test_a_value_read_from_a_scratch_array_keeps_the_value_it_read() -> None:
    """``before = tmp[0]`` then ``tmp[0] = 0.0``: ``before`` is the value read, in the compiled kernel and
    in the script run as Python (its own reference)."""
    x = np.arange(5, dtype=np.float32) + 1.0
    np.testing.assert_array_equal(_call(swap_through_scratch, x, (5,)), x)
