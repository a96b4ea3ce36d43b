"""Each default pass keeps the model's meaning (checked with the NumPy interpreter) and does its job."""

from __future__ import annotations

import re

import numpy as np
import pytest

from graphs import conv_bn_relu, mlp, residual_block
from kiln.ir import Constant, verify
from kiln.ops import type_rule
from kiln.ops.interpreter import interpret
from kiln.transform import get_pass
from kiln.transform.pipeline import Pipeline

MODELS = {"conv_bn_relu": conv_bn_relu, "residual": residual_block, "mlp": mlp}


def _inputs(mod, seed=0):  # noqa: ANN001, ANN202
    rng = np.random.default_rng(seed)
    return {p.name: rng.standard_normal(p.type.static_shape).astype("f4") for p in mod.main.params}


def _ops(mod):  # noqa: ANN001, ANN202
    return [n.op for n in mod.main.nodes]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize(
    "pass_name", ["fold-constants", "simplify", "fold-batch-norm", "eliminate-dead-code", "fuse-ops"]
)
def test_graph_pass_preserves_meaning(model: str, pass_name: str) -> None:
    mod = MODELS[model]()
    out = get_pass(pass_name)(mod)
    verify(out, infer=type_rule)
    x = _inputs(mod)
    want, got = interpret(mod, x), interpret_fused(out, x)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)


def interpret_fused(mod, x):  # noqa: ANN001, ANN202
    """interpret() with fused groups expanded (the interpreter runs graph operators only)."""
    from kiln.ir import GraphFunction

    main = mod.main
    nodes = []
    for n in main.nodes:
        if n.op == "fused":
            body: GraphFunction = n.attrs["body"]
            actual = dict(zip(body.params, n.inputs, strict=True))
            nodes += [m.with_(inputs=tuple(actual.get(v, v) for v in m.inputs)) for m in body.nodes]
        else:
            nodes.append(n)
    return interpret(main.with_(nodes=tuple(nodes)), x)


def test_fold_batch_norm_removes_scale_and_shift() -> None:
    out = get_pass("fold-batch-norm")(conv_bn_relu())
    assert _ops(out) == ["conv2d", "relu"]


def test_fold_constants_evaluates_constant_subgraphs() -> None:
    from kiln.frontend.nn import GraphBuilder

    g = GraphBuilder()
    x = g.input("x", (2, 3))
    c = g.add(g.const(np.ones((2, 3), "f4")), g.const(np.full((2, 3), 2, "f4")))
    g.output(g.mul(x, c), "y")
    out = get_pass("fold-constants")(g.build())
    assert _ops(out) == ["mul"]
    folded = out.main.nodes[0].inputs[1]
    assert isinstance(folded, Constant)
    np.testing.assert_array_equal(folded.data, np.full((2, 3), 3, "f4"))


def test_dead_code_is_removed() -> None:
    from kiln.frontend.nn import GraphBuilder

    g = GraphBuilder()
    x = g.input("x", (4,))
    g.exp(x)  # unused
    g.output(g.relu(x), "y")
    out = get_pass("eliminate-dead-code")(g.build())
    assert _ops(out) == ["relu"]


def test_fuse_ops_groups_conv_with_its_epilogue() -> None:
    mod = get_pass("fuse-ops")(residual_block())
    fused = [n for n in mod.main.nodes if n.op == "fused"]
    chains = sorted(tuple(m.op for m in n.attrs["body"].nodes) for n in fused)
    assert ("conv2d", "add", "relu") in chains  # conv -> +residual -> relu is one kernel
    assert ("conv2d", "relu") in chains


def test_fuse_ops_keeps_graph_outputs() -> None:
    mod = get_pass("fuse-ops")(residual_block())
    produced = {id(o) for n in mod.main.nodes for o in n.outputs}
    assert all(id(v) in produced for v in mod.main.outputs)


def test_pipeline_text_round_trip() -> None:
    text = "fold-constants,simplify,fuse-ops,legalize,plan-memory"
    assert str(Pipeline.parse(text)) == text
    with pytest.raises(ValueError, match="unknown pass 'nope'"):
        Pipeline.parse("fold-constants,nope")


def test_target_hooks_are_spliced_into_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.ir import Module
    from kiln.transform import default_pipeline, pipeline, register_hook

    def my_pass(mod: Module) -> Module:
        return mod

    monkeypatch.setattr(pipeline, "_REGISTERED_HOOKS", {})
    register_hook("riscv64-linux", "tensor_opt", my_pass)
    names = default_pipeline("riscv64-linux").names()
    assert names.index("legalize") < names.index("my_pass") < names.index("plan-memory")
    assert "my_pass" not in default_pipeline("aarch64-linux").names()


_BOARD = {
    "name": "board",
    "triple": "aarch64-unknown-linux-musl",
    "cpu": "cortex-a53",
    "features": "+neon",
    "vector_bits": 128,
    "os": "linux",
    "zig_target": "aarch64-linux-musl",
}


def test_target_hook_files_are_loaded_by_the_pipeline() -> None:
    from kiln.targets import parse_target
    from kiln.transform import PHASES, target_hooks

    t = parse_target({**_BOARD, "hooks": {"before_codegen": ["graphs:mlp"]}}, "boards/board.toml")
    hooks = target_hooks(t)
    assert list(hooks) == list(PHASES)
    assert [p.fn.__name__ for p in hooks["before_codegen"]] == ["mlp"]
    assert [p.text for p in hooks["before_codegen"]] == ["graphs:mlp"]


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        (
            {"tensor_opts": ["graphs:mlp"]},
            "boards/board.toml: unknown hook phase 'tensor_opts'; phases are after_import, graph_opt, "
            "legalize, tensor_opt, before_codegen",
        ),
        ({"graph_opt": ["graphs.mlp"]}, "boards/board.toml: hook 'graphs.mlp' must look like"),
        ({"graph_opt": ["graphs:nope"]}, "boards/board.toml: cannot load hook 'graphs:nope'"),
    ],
)
def test_a_bad_target_hook_names_the_target_file(hooks: dict, message: str) -> None:
    from kiln.targets import TargetError, parse_target
    from kiln.transform import default_pipeline

    t = parse_target({**_BOARD, "hooks": hooks}, "boards/board.toml")
    with pytest.raises(TargetError, match=re.escape(message)):
        default_pipeline(t)


def test_registering_a_hook_for_an_unknown_phase_fails() -> None:
    from kiln.targets import TargetError
    from kiln.transform import register_hook

    with pytest.raises(TargetError, match="unknown phase 'late'; phases are after_import, graph_opt"):
        register_hook("board", "late", lambda m: m)


def test_fuse_ops_gives_each_node_to_one_group() -> None:
    """Two convolutions feeding one add (a ResNet projection shortcut): the add joins only one of them."""
    from kiln.frontend.nn import GraphBuilder

    rng = np.random.default_rng(0)
    g = GraphBuilder()
    x = g.input("x", (1, 4, 6, 6))
    a = g.conv2d(x, g.const(rng.standard_normal((4, 4, 1, 1)).astype("f4")))
    b = g.conv2d(x, g.const(rng.standard_normal((4, 4, 3, 3)).astype("f4")), pads=(1, 1, 1, 1))
    g.output(g.relu(g.add(a, b)), "y")
    mod = g.build()
    out = get_pass("fuse-ops")(mod)
    inner = [m for n in out.main.nodes for m in (n.attrs["body"].nodes if n.op == "fused" else [n])]
    assert sorted(m.op for m in inner) == ["add", "conv2d", "conv2d", "relu"]
    xin = _inputs(mod)
    np.testing.assert_allclose(interpret_fused(out, xin)["y"], interpret(mod, xin)["y"], rtol=1e-5, atol=1e-5)
