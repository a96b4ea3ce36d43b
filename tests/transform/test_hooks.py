"""Target hooks at every level, rewrites (lowering overrides, library calls), codegen overrides, and
pipelines as text: placement before/after a phase, round trips of pipeline strings with hooks in them,
print-ir-after, time-passes, verification after every pass."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from graphs import conv_bn_relu, mlp, residual_block
from jit import jit_run
from kiln.frontend.nn import GraphBuilder
from kiln.ir import Constant, Module, TensorFunction, verify
from kiln.ir import tensor as T
from kiln.ir.extern import externs
from kiln.ops import type_rule
from kiln.ops.interpreter import interpret
from kiln.targets import TargetError, get_target, parse_target
from kiln.transform import (
    PassContext,
    Pipeline,
    default_pipeline,
    hook,
    pipeline,
    register_hook,
)
from kiln.transform.codegen_override import CCode, codegen_override
from kiln.transform.dispatch import OUT, CLibrary, TensorCall, lowering, rewrite
from kiln.transform.patterns import const, op, var

X86 = get_target("x86_64-linux")
_BOARD = {
    "name": "hookboard",
    "triple": "x86_64-unknown-linux-musl",
    "cpu": "x86-64-v3",
    "features": "",
    "vector_bits": 256,
    "os": "linux",
    "zig_target": "x86_64-linux-musl",
}


# ------------------------------------------------------------------------------------------- passes for hooks
@hook(when="before")
def early(mod: Module) -> Module:
    """Runs before its phase's own passes."""
    return mod.with_attrs(order=[*mod.attrs.get("order", []), "early"])


def late(mod: Module) -> Module:
    """Runs after its phase's own passes (the default)."""
    return mod.with_attrs(order=[*mod.attrs.get("order", []), "late"])


@hook(phase="tensor_opt")
def only_tensor_opt(mod: Module) -> Module:
    return mod


@lowering("relu")
def relu_as_tensor_function(m):  # noqa: ANN001, ANN201
    """Every relu becomes a hand-built tensor function computing max(x, 0) (a lowering override)."""
    x = m.root.inputs[0]
    src = T.Buffer("in0", x.type.static_shape, x.type.dtype)
    dst = T.Buffer("out0", x.type.static_shape, x.type.dtype)
    body = T.loop_nest(dst.shape, lambda i: T.Store(dst, i, T.maximum(src[i], T.const(0.0))))
    return TensorFunction("my_relu", (src, dst), body, 1, {"ops": ["my_relu"]})


@rewrite(op("relu", op("add", op("matmul", var("a"), const("w")), const("b"))))
def matmul_bias_relu(m):  # noqa: ANN001, ANN201
    """matmul+add+relu as one tensor function that a test can check by running it (JIT)."""
    a, w, b = m["a"], m["w"], m["b"]
    (rows, k), n = a.type.static_shape, w.type.static_shape[1]
    A, W, B = (T.Buffer(f"in{i}", v.type.static_shape) for i, v in enumerate((a, w, b)))
    C = T.Buffer("out0", (rows, n))

    def body(idx):  # noqa: ANN001, ANN202
        i, j = idx
        acc = T.Buffer("acc", (), scope="local")
        inner = T.loop(k, lambda p: T.Store(acc, (), acc[()] + A[i, p] * W[p, j]), "p")
        return T.Allocate(
            acc, T.seq(T.Store(acc, (), B[j]), inner, T.Store(C, (i, j), T.maximum(acc[()], 0.0)))
        )

    f = TensorFunction("mbr", (A, W, B, C), T.loop_nest((rows, n), body), 1)
    return TensorCall(f, (a, w, b))


LIB = CLibrary("testlib", sources=[("testlib.c", "void testlib_f(void);\nvoid testlib_f(void) {}\n")])


@lowering("tanh")
def tanh_to_c(m):  # noqa: ANN001, ANN201
    return LIB.call("testlib_tanh", m.root.inputs[0], OUT, m.root.inputs[0].type.numel)


# --------------------------------------------------------------------------------------------------- placement
def test_hooks_run_before_or_after_their_phase_as_they_declare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_REGISTERED_HOOKS", {})
    register_hook("riscv64-linux", "graph_opt", early)
    register_hook("riscv64-linux", "graph_opt", late)
    register_hook("riscv64-linux", "legalize", relu_as_tensor_function)
    names = default_pipeline("riscv64-linux").names()
    assert names.index("simplify") < names.index("early") < names.index("fold-batch-norm")
    assert names.index("fuse-ops") < names.index("late") < names.index("relu_as_tensor_function")
    assert names.index("relu_as_tensor_function") == names.index("legalize") - 1
    # register_hook(when=...) overrides what the pass declares
    register_hook("riscv64-linux", "tensor_opt", late, when="before")
    names = default_pipeline("riscv64-linux").names()
    assert names[names.index("plan-memory") - 1] == "late"


def test_a_hook_declaring_another_phase_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_REGISTERED_HOOKS", {})
    with pytest.raises(TargetError, match="belongs to phase 'tensor_opt', not 'graph_opt'"):
        register_hook("hookboard", "graph_opt", only_tensor_opt)
    t = parse_target({**_BOARD, "hooks": {"graph_opt": ["test_hooks:relu_as_tensor_function"]}}, "b.toml")
    with pytest.raises(
        TargetError, match="b.toml: hook 'test_hooks:relu_as_tensor_function' belongs to phase"
    ):
        default_pipeline(t)


def test_extra_passes_go_where_they_declare() -> None:
    p = default_pipeline("x86_64-linux", extra=[matmul_bias_relu, early, late])
    names = p.names()
    assert names.index("matmul_bias_relu") == names.index("legalize") - 1
    assert names.index("early") < names.index("fold-batch-norm")


# ---------------------------------------------------------------------------------------- pipelines as text
def test_pipelines_with_hooks_print_and_parse_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_REGISTERED_HOOKS", {})
    register_hook("hookboard", "graph_opt", early)
    register_hook("hookboard", "before_codegen", late)
    t = parse_target({**_BOARD, "hooks": {"legalize": ["test_hooks:relu_as_tensor_function"]}}, "b.toml")
    p = default_pipeline(t, extra=[matmul_bias_relu])
    text = str(p)
    assert "test_hooks:early" in text and "test_hooks:late" in text
    assert "test_hooks:relu_as_tensor_function,test_hooks:matmul_bias_relu,legalize" in text
    again = Pipeline.parse(text)
    assert again == p and str(again) == text
    assert again.passes[again.names().index("matmul_bias_relu")].phase == "legalize"  # as it declares


def test_a_user_targets_hooks_module_sits_next_to_its_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "targets"
    d.mkdir()
    (d / "mine.toml").write_text(
        "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in {**_BOARD, "name": "mine"}.items())
        + '[hooks]\ngraph_opt = ["mine_hooks_xyz:tag"]\n'
    )
    (d / "mine_hooks_xyz.py").write_text("def tag(mod):\n    return mod.with_attrs(tagged=True)\n")
    monkeypatch.setenv("KILN_TARGET_PATH", str(d))
    monkeypatch.delitem(sys.modules, "mine_hooks_xyz", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    p = default_pipeline("mine")
    assert "mine_hooks_xyz:tag" in str(p)
    assert Pipeline.parse(str(p), "mine") == p
    from kiln.driver import compile_module

    assert compile_module(mlp(), "mine").attrs["tagged"] is True


def test_unprintable_passes_say_why_they_do_not_parse() -> None:
    p = Pipeline(["fold-constants", lambda m: m])
    with pytest.raises(ValueError, match="unknown pass '<lambda>'"):
        Pipeline.parse(str(p))
    with pytest.raises(ValueError, match="cannot load pass 'no_such_module_q:f'"):
        Pipeline.parse("fold-constants,no_such_module_q:f")


def test_pipeline_edits_accept_specs() -> None:
    p = default_pipeline("x86_64-linux").insert_before("legalize", "test_hooks:matmul_bias_relu")
    assert p.remove("test_hooks:matmul_bias_relu") == default_pipeline("x86_64-linux")


# ------------------------------------------------------------------------------------------- instruments
def test_print_ir_after_and_time_passes() -> None:
    out: list[str] = []
    ctx = PassContext(print_ir_after=["fuse-ops", "test_hooks:late"], printer=out.append)
    Pipeline(["fold-constants", "fuse-ops", late])(conv_bn_relu(), ctx)
    assert [s.splitlines()[0] for s in out] == [
        "// ----- IR after fuse-ops",
        "// ----- IR after test_hooks:late",
    ]
    assert "graph main(" in out[0]
    assert [n for n, _ in ctx.timings] == ["fold-constants", "fuse-ops", "test_hooks:late"]
    report = ctx.timing_report()
    assert re.search(r"^fuse-ops\s+[\d.]+\s+[\d.]+$", report, re.M) and report.splitlines()[-1].startswith(
        "total"
    )
    out.clear()
    Pipeline(["fold-constants", "simplify"])(mlp(), PassContext(print_ir_after="all", printer=out.append))
    assert len(out) == 2


def test_verification_runs_after_every_pass_in_tests() -> None:
    assert PassContext().verify_each  # tests/conftest.py sets KILN_VERIFY_EACH=1

    def breaks_the_graph(mod: Module) -> Module:
        main = mod.main
        return mod.with_function(main.with_(nodes=main.nodes[1:]))  # a use before any definition

    with pytest.raises(Exception, match="used before definition") as e:
        Pipeline(["fold-constants", breaks_the_graph])(mlp())
    assert "after pass" in str(e.value.__notes__)


def test_kiln_passes_lists_each_pass_on_one_line() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "passes", "--target", "x86_64-linux"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert any(re.match(r"fuse-ops\s+graph_opt\s+fuse chains", ln) for ln in lines)
    assert any(re.match(r"legalize\s+legalize\s+\S", ln) for ln in lines)
    assert str(default_pipeline("x86_64-linux")) in lines


# ------------------------------------------------------------------------------------------------- rewrites
def _x(mod: Module, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p.name: rng.standard_normal(p.type.static_shape).astype("f4") for p in mod.main.params}


def test_a_lowering_override_takes_nodes_out_of_fused_groups() -> None:
    """residual_block's relus sit in fused groups (conv -> add -> relu): the override takes each relu, the
    rest of each group stays fused, and the numbers do not change."""
    mod = residual_block()
    pipe = default_pipeline(X86, extra=[relu_as_tensor_function])
    lowered = pipe(mod.with_attrs(target=X86), PassContext(verify_each=True))
    calls = [n.attrs["func"] for n in lowered.main.nodes if n.op == "call_tensor"]
    assert sum(c.startswith("my_relu") for c in calls) == 2
    ops = [lowered.functions[c].attrs["ops"] for c in calls]
    assert ["conv2d", "add"] in ops  # the group conv -> add (-> relu) kept its add
    x = _x(mod)
    want = interpret(mod, x)
    for v, got in zip(lowered.main.outputs, jit_run(lowered, X86, x), strict=True):
        np.testing.assert_allclose(got, want[v.name], rtol=1e-4, atol=1e-4)


def test_a_subgraph_rewrite_replaces_the_whole_match() -> None:
    g = GraphBuilder("m")
    rng = np.random.default_rng(3)
    x = g.input("x", (4, 6))
    h = g.relu(
        g.add(g.matmul(x, g.const(rng.standard_normal((6, 5)).astype("f4"))), g.const(np.ones(5, "f4")))
    )
    g.output(h, "y")
    mod = g.build()
    lowered = default_pipeline(X86, extra=[matmul_bias_relu])(mod.with_attrs(target=X86))
    assert [lowered.functions[n.attrs["func"]].name for n in lowered.main.nodes] == ["mbr"]
    xv = _x(mod)
    np.testing.assert_allclose(jit_run(lowered, X86, xv)[0], interpret(mod, xv)["y"], rtol=1e-5, atol=1e-5)


def test_a_match_whose_inner_results_are_used_elsewhere_is_left_alone() -> None:
    g = GraphBuilder("m")
    x = g.input("x", (2, 3))
    mm = g.matmul(x, g.const(np.ones((3, 3), "f4")))
    g.output(g.relu(g.add(mm, g.const(np.ones(3, "f4")))), "y")
    g.output(g.exp(mm), "z")  # the matmul result is also used here
    out = matmul_bias_relu(g.build().with_attrs(target=X86))
    assert [n.op for n in out.main.nodes] == ["matmul", "add", "relu", "exp"]


def test_patterns_bind_alternatives_and_repeated_names() -> None:
    from kiln.transform.patterns import match_at

    g = GraphBuilder("m")
    x = g.input("x", (2, 3))
    y = g.add(x, x)
    z = g.mul(y, g.const(np.float32(2)))
    g.output(z, "z")
    main = g.build().main
    producers = {id(o): n for n in main.nodes for o in n.outputs}
    same = op("mul", op("add", var("a"), var("a")), const("c"))
    m = match_at(same, main.nodes[-1], producers, set())
    assert m is not None and m["a"] is x and isinstance(m["c"], Constant) and len(m.nodes) == 2
    assert m.inputs == [x, m["c"]]
    different = op("mul", op("add", var("a"), const("b")) | op("sub", var("a"), var("b")), var("c"))
    assert match_at(different, main.nodes[-1], producers, set()) is None
    either = op(("mul", "div"), op("add", var(), var()) | op("sub", var(), var()), var())
    assert match_at(either, main.nodes[-1], producers, set()) is not None
    assert match_at(op("mul", bind="m", where=lambda n: False), main.nodes[-1], producers, set()) is None


def test_a_library_call_becomes_call_extern_with_an_adapter() -> None:
    g = GraphBuilder("m")
    x = g.input("x", (2, 3))
    g.output(g.relu(g.tanh(g.tanh(x))), "y")
    out = tanh_to_c(g.build().with_attrs(target=X86))
    ext = [n for n in out.main.nodes if n.op == "call_extern"]
    assert [n.attrs["symbol"] for n in ext] == ["testlib_tanh_0", "testlib_tanh_0"]  # one adapter, shared
    verify(out, infer=type_rule)
    (src,) = externs(out.attrs)
    files = dict(src.files)
    assert sorted(files) == ["kiln_adapters_testlib.c", "testlib.c"] and src.symbols == ("testlib_tanh_0",)
    adapters = files["kiln_adapters_testlib.c"]
    assert "void testlib_tanh(const float *, float *, int64_t);" in adapters  # no header: kiln declares it
    assert "testlib_tanh(in0, out0, INT64_C(6));" in adapters


def test_rewrites_report_bad_replacements() -> None:
    @lowering("relu")
    def wrong(m):  # noqa: ANN001, ANN202
        return 42

    with pytest.raises(TypeError, match="returned int; expected a library call"):
        wrong(_relu_model())
    with pytest.raises(TypeError, match="rooted at an operator"):
        rewrite(var("x"))(lambda m: None)


def _relu_model() -> Module:
    g = GraphBuilder("r")
    g.output(g.relu(g.input("x", (3,))), "y")
    return g.build()


# ------------------------------------------------------------------------------------ codegen overrides
@codegen_override
def tanh_in_c(req):  # noqa: ANN001, ANN201
    if req.func.attrs.get("ops") != ["tanh"]:
        return None
    n = req.func.outputs[0].numel
    return CCode(
        f"float kiln_test_tanh(float);\n{req.c_signature} {{\n"
        f"  for (long i = 0; i < {n}; i++) out0[i] = kiln_test_tanh(in0[i]);\n}}\n"
    )


def test_a_codegen_override_declares_the_function_and_records_its_code() -> None:
    pipe = default_pipeline(X86, extra=[tanh_in_c])
    assert pipe.names()[-1] == "tanh_in_c"  # before_codegen, after memory planning
    g = GraphBuilder("t")
    t = g.tanh(g.input("x", (2, 5)))
    g.output(g.mul(t, g.input("s", (2, 5))), "y")
    g.output(t, "t")  # a graph output: not fused into the mul
    lowered = pipe(g.build().with_attrs(target=X86))
    (f,) = [f for f in lowered.tensor_functions().values() if "extern_symbol" in f.attrs]
    assert f.attrs["ops"] == ["tanh"] and f.attrs["codegen"] == "test_hooks:tanh_in_c"
    (src,) = externs(lowered.attrs)
    assert src.kind == "c" and src.symbols == (f.attrs["extern_symbol"],)
    assert textwrap.dedent(dict(src.files)[f"{src.name}.c"]).count("restrict") == 2
    from kiln.codegen import build_llvm_ir

    text, _, kernels = build_llvm_ir(lowered, X86)
    assert re.search(rf"declare void @\"?{f.attrs['extern_symbol']}\"?\(ptr", text)
    assert f.name in kernels  # profiled under the tensor function's name
