"""The printed IR parses back to an equal module (kiln.ir.parse_module, kiln.ir.structural_equal), on every
model the suite builds: each operator case of tests/op_cases.py as imported, after every pass of the default
pipeline and lowered for a target; the light ONNX models of tests/models.py (the large ones in the slow tier,
their light variants in the fast one); graphs built with kiln.frontend.nn, script kernels, fused groups,
extern calls, symbolic dimensions. Each parsed module verifies with the operators' type rules, prints to the
same text again, and (for a sample) computes the same numbers when compiled. IR written by hand parses, and
malformed text fails with the line and column."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from op_cases import CASES, interpret_checked

from jit import jit_run
from kiln.driver import compile_module
from kiln.frontend import from_onnx
from kiln.frontend.nn import GraphBuilder
from kiln.ir import (
    Constant,
    GraphFunction,
    Module,
    Node,
    ParseError,
    TensorType,
    Var,
    constant_table,
    first_difference,
    parse_module,
    print_module,
    structural_equal,
    verify,
)
from kiln.ir.extern import ExternSource, add_extern
from kiln.ops import script, type_rule
from kiln.targets import get_target
from kiln.transform import Pipeline, default_pipeline
from models import (
    LARGE_LIGHT_MODELS,
    LIGHT_MODELS,
    LIGHT_VARIANTS,
    TORCH_MODELS,
    light_path,
    light_variant_path,
    torch_onnx_path,
)

X86 = get_target("x86_64-linux")


def roundtrip(mod: Module, modes: tuple[str, ...] = ("auto", "inline", "elided")) -> Module:
    """Print ``mod`` in each constants mode, parse it back, and check: equal, verifies, prints the same."""
    table = constant_table(mod)
    parsed = mod
    for mode in modes:
        text = print_module(mod, constants=mode)
        parsed = parse_module(text, constants=None if mode == "inline" else table)
        diff = first_difference(mod, parsed)
        assert diff is None, f"constants={mode}: {diff}"
        verify(parsed, infer=type_rule)
        assert print_module(parsed, constants=mode) == text, (
            f"constants={mode}: printing is not a fixed point"
        )
    return parsed


def stagewise(mod: Module, pipeline: Pipeline) -> Module:
    """Round-trip ``mod`` after every pass of ``pipeline`` (fused groups, legalized calls, memory plans)."""
    for p in pipeline.passes:
        mod = p(mod)
        roundtrip(mod, ("auto",))
    return mod


# ---------------------------------------------------------------------------------------------- operator cases
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_every_operator_case_round_trips_imported_and_after_every_pass(case_id: str) -> None:
    mod = from_onnx(CASES[case_id].model)
    roundtrip(mod)
    t = X86
    stagewise(mod.with_attrs(target=t), default_pipeline(t))


@pytest.mark.parametrize("case_id", sorted(CASES)[::9])
def test_a_parsed_lowered_module_computes_what_the_original_does(case_id: str) -> None:
    case = CASES[case_id]
    mod = from_onnx(case.model)
    lowered = compile_module(mod, X86)
    parsed = roundtrip(lowered, ("elided",))
    want = interpret_checked(mod, case.feed)
    got = jit_run(parsed, X86, case.feed)
    for name, w in zip(want, got, strict=True):
        np.testing.assert_allclose(w, want[name], rtol=case.rtol, atol=case.atol, equal_nan=True)


# ------------------------------------------------------------------------------------------------------ models
_SMALL_LIGHT = [m for m in LIGHT_MODELS if m not in LARGE_LIGHT_MODELS]


@pytest.mark.parametrize("name", _SMALL_LIGHT)
def test_light_models_round_trip_imported_and_lowered(name: str) -> None:
    mod = from_onnx(onnx.load(str(light_path(name))))
    roundtrip(mod, ("auto", "elided"))
    roundtrip(compile_module(mod, "aarch64-linux"), ("auto", "elided"))


@pytest.mark.parametrize("name", sorted(LIGHT_VARIANTS))
def test_light_variants_round_trip_after_every_pass(name: str) -> None:
    mod = from_onnx(onnx.load(str(light_variant_path(name))))
    roundtrip(mod, ("elided",))
    stagewise(mod.with_attrs(target=X86), default_pipeline(X86))


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE_LIGHT_MODELS)
def test_large_light_models_round_trip(name: str) -> None:
    mod = from_onnx(onnx.load(str(light_path(name))))
    roundtrip(mod, ("elided",))
    roundtrip(compile_module(mod, X86), ("elided",))


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_pytorch_built_models_round_trip(name: str) -> None:
    pytest.importorskip("torch")
    mod = from_onnx(onnx.load(str(torch_onnx_path(name))))
    roundtrip(mod, ("elided",))
    roundtrip(compile_module(mod, X86), ("elided",))


# ------------------------------------------------------------------------------------ built graphs, odd corners
@script.kernel
def _scaled(x, out, *, scale):  # noqa: ANN001, ANN202
    for i in range(x.shape[0]):
        out[i] = x[i] * scale


def test_graph_builder_models_with_script_kernels_and_symbolic_dims_round_trip() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype("f4")
    g = GraphBuilder("mlp")
    x = g.input("x", (1, 8))
    h = g.relu(g.add(g.matmul(x, g.const(w)), g.const(np.ones(16, "f4"))))
    g.output(g.softmax(h, axis=-1), name="probs")
    g.output(g.call_tensor(_scaled, g.reshape(h, shape=(16,)), scale=0.5), name="scaled")
    mod = g.build()
    roundtrip(mod)
    lowered = stagewise(mod.with_attrs(target=X86), default_pipeline(X86))
    xv = rng.standard_normal((1, 8)).astype("f4")
    hv = np.maximum(xv @ w + 1, 0)
    got = jit_run(roundtrip(lowered), X86, {"x": xv})
    np.testing.assert_allclose(got[0], np.exp(hv) / np.exp(hv).sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], hv.reshape(16) * 0.5, rtol=1e-5, atol=1e-6)

    d = GraphBuilder("dynamic")
    y = d.input("y", ("N", 4))
    d.output(d.relu(y), name="out")
    roundtrip(d.build())


def test_odd_names_duplicates_special_floats_attributes_and_externs_round_trip() -> None:
    x = Var("/model/input:0", TensorType((2, 2)))
    a = Var("a", TensorType((2, 2)))
    a2 = Var("a", TensorType((2, 2)))  # same name, another value
    out = Var("out", TensorType((2, 2)))
    c1 = Constant("k", np.array([[np.nan, -0.0], [np.inf, 1e-30]], np.float32))
    c2 = Constant("k", np.arange(4, dtype=np.int64).reshape(2, 2))  # same name, other data
    c3 = Constant("big", np.linspace(0, 1, 1000, dtype=np.float64).reshape(10, 100))
    c4, c5 = Constant("s", np.array(2.0, np.float32)), Constant("s1", np.array([2.0], np.float32))
    src = ExternSource("lib", "c", (("lib.c", 'void f(float* a, float* b) { /* "quoted" */ }\n'),), ("f",))
    attrs = {
        "floats": (float("inf"), -0.0, 1e-300, 0.1),
        "nested": {"k": [1, (2,), None, True], 3: "three", (1, 2): np.float32(0.5)},
        "shape": TensorType((3, 4), "int8"),
        "empty": (),
        "array": np.array([True, False]),
    }
    main = GraphFunction(
        "main",
        (x,),
        (
            Node("add", (x, c1), (a,), {}, "node with spaces"),
            Node("call_extern", (a,), (a2,), {"symbol": "f"}),
            Node("call_extern", (a2, c2, c3, c4, c5), (out,), {"symbol": "f", **attrs}, "n'2"),
        ),
        (out, a, c3),
        {"model_name": "weird model"},
    )
    mod = Module({"main": main}, add_extern({}, src))
    text = print_module(mod)
    assert "%a~1: float32[2, 2] = call_extern(%a; symbol='f')" in text
    assert "%'/model/input:0'" in text and "@k~1" in text
    roundtrip(mod)


def test_fused_bodies_share_the_nodes_results() -> None:
    g = GraphBuilder("f")
    x = g.input("x", (4,))
    g.output(g.relu(g.add(g.mul(x, g.const(np.full(4, 2, "f4"))), g.const(np.ones(4, "f4")))), name="y")
    mod = default_pipeline().passes[0](g.build())
    for p in default_pipeline().passes:
        if p.name == "fuse-ops":
            mod = p(mod)
    fused = [n for n in mod.main.nodes if n.op == "fused"]
    assert fused, "expected a fused group"
    parsed = roundtrip(mod)
    node = next(n for n in parsed.main.nodes if n.op == "fused")
    assert node.attrs["body"].outputs == node.outputs  # the body defines the node's own results
    assert structural_equal(default_pipeline()(mod), default_pipeline()(parsed))


# ------------------------------------------------------------------------------------------------ written by hand
HAND_WRITTEN = """\
# a module written by hand: comments, blank lines and Python precedence are fine
const @w: float32[4] = [1.0, 2.0, 3.0, 4.0]

graph main(%x: float32[4]) {
  %y: float32[4] = call_tensor(%x, @w; func='axpb') loc('my kernel')
  %z: float32[4] = relu(%y)
  return %z
}

tensor axpb(x: float32[4], w: float32[4]) -> (out: float32[4]) [flops=8]:
  for i in range(4):  # vectorized
    out[i] = x[i] * w[i] + 0.5f * w[i] - 1f
"""


def test_hand_written_ir_parses_verifies_and_runs() -> None:
    mod = parse_module(HAND_WRITTEN)
    verify(mod, infer=type_rule)
    assert mod.main.nodes[0].name == "my kernel" and mod.functions["axpb"].attrs == {"flops": 8}
    roundtrip(mod)
    x = np.array([-2.0, 0.0, 1.0, 3.0], np.float32)
    w = np.arange(1, 5, dtype=np.float32)
    out = jit_run(compile_module(mod, X86), X86, {"x": x})[0]
    np.testing.assert_allclose(out, np.maximum(x * w + 0.5 * w - 1, 0))


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("graph main(%x: float32[4]) {\n  %y: float32[4] = relu(%q)\n  return %y\n}\n", 2, 25, "%q is used"),
        ("graph main(%x: float33[4]) {\n  return %x\n}\n", 1, 16, "unknown element type 'float33'"),
        (
            "graph main(%x: float32[4]) {\n  %x: float32[4] = relu(%x)\n  return %x\n}\n",
            2,
            3,
            "defined twice",
        ),
        ("graph main(%x: float32[4]) {\n  return %x @w\n}\n", 2, 13, "expected '}'"),
        ("graph main() {\n  return @w\n}\n", 2, 10, "unknown constant @w"),
        ("const @w: float32[2] = [1.0, 2.0, 3.0]\n", 1, 24, "shape [3], declared float32[2]"),
        ("const @w: float32[2] = elided('abc')\n", 1, 31, "not in the constants table"),
        (
            "tensor t(a: float32[4]) -> (b: float32[4]):\n  for i in range(4):\n    b[j] = a[i]\n",
            3,
            7,
            "unknown loop variable j",
        ),
        (
            "tensor t(a: float32[4]) -> (b: float32[4]):\n  for i in range(4):\n  b[0] = a[0]\n",
            3,
            3,
            "indented",
        ),
        (
            "tensor t(a: float32[4]) -> (b: float32[4]):\n  b[0] = foo(a[0])\n",
            2,
            10,
            "unknown function 'foo'",
        ),
        ("tensor t(a: float32[4]) -> (b: float32[4]):\n  c[0] = a[0]\n", 2, 3, "unknown buffer c"),
        (
            "graph main(%x: float32[4]) {\n  %y: float32[4] = custom(%x; k=Nope(a=1))\n  return %y\n}\n",
            2,
            33,
            "Nope",
        ),
        ("graph main(%x: float32[4]) {\n  %y: float32[4] = relu(%x) $\n}\n", 2, 29, "unexpected character"),
    ],
)
def test_errors_name_the_line_and_column(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_module(text)
    assert (e.value.line, e.value.col) == (line, col), str(e.value)
    assert message in str(e.value)
    assert f"line {line}, column {col}" in str(e.value)


def test_structural_equality_sees_names_values_and_bindings() -> None:
    base = parse_module(HAND_WRITTEN)
    assert structural_equal(base, parse_module(HAND_WRITTEN))
    for old, new in [
        ("[1.0, 2.0, 3.0, 4.0]", "[1.0, 2.0, 3.0, 5.0]"),  # constant data
        ("loc('my kernel')", "loc('other')"),  # node name
        ("# vectorized", "# unrolled"),  # loop kind
        ("0.5f", "0.25f"),  # a literal
        ("[flops=8]", "[flops=9]"),  # an attribute
        ("%z: float32[4] = relu(%y)", "%z: float32[4] = relu(%x)"),  # which value is used
    ]:
        changed = parse_module(HAND_WRITTEN.replace(old, new))
        assert first_difference(base, changed) is not None, (old, new)


def test_attributes_of_other_types_print_as_opaque_and_do_not_parse() -> None:
    g = GraphBuilder("o")
    g.output(g.relu(g.input("x", (2,))), name="y")
    mod = g.build().with_attrs(callback={1, 2})
    text = print_module(mod)
    assert "attr callback = opaque('set: {1, 2}')" in text
    with pytest.raises(ParseError, match="opaque value"):
        parse_module(text)
