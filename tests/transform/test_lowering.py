"""legalize + plan-memory + codegen: lowered modules compute what the interpreter computes (host JIT)."""

from __future__ import annotations

import numpy as np
import pytest

from graphs import conv_bn_relu, mlp, residual_block
from jit import jit_run
from kiln.driver import compile_module
from kiln.ops.interpreter import interpret
from kiln.targets import get_target

MODELS = {"conv_bn_relu": conv_bn_relu, "residual": residual_block, "mlp": mlp}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_lowered_module_matches_interpreter(model: str) -> None:
    from kiln.transform import PassContext

    mod = MODELS[model]()
    t = get_target("x86_64-linux")
    lowered = compile_module(mod, t, ctx=PassContext(verify_each=True))
    assert {n.op for n in lowered.main.nodes} <= {"call_tensor", "view"}
    rng = np.random.default_rng(0)
    x = {p.name: rng.standard_normal(p.type.static_shape).astype("f4") for p in mod.main.params}
    want = interpret(mod, x)
    got = jit_run(lowered, t, x)
    for v, g in zip(lowered.main.outputs, got, strict=True):
        np.testing.assert_allclose(g, want[v.name], rtol=1e-4, atol=1e-4)


def test_memory_plan_never_overlaps_live_tensors() -> None:
    t = get_target("x86_64-linux")
    lowered = compile_module(residual_block(), t)
    plan = lowered.attrs["memory_plan"]
    main = lowered.main
    spans = {}
    for pos, n in enumerate(main.nodes):
        for v in (*n.inputs, *n.outputs):
            kind, off = plan["storage"].get(v.uid, ("const", 0))
            if kind == "arena":
                lo, hi = spans.get(v.uid, (pos, pos, off, v.type.nbytes))[:2]
                spans[v.uid] = (min(lo, pos), max(hi, pos), off, v.type.nbytes)
    items = list(spans.values())
    for i, (a0, a1, ao, asz) in enumerate(items):
        assert ao + asz <= plan["arena_bytes"]
        for b0, b1, bo, bsz in items[i + 1 :]:
            if a1 >= b0 and b1 >= a0:  # both live at once
                assert ao + asz <= bo or bo + bsz <= ao


def test_identical_kernels_are_shared() -> None:
    from kiln.frontend.nn import GraphBuilder

    g = GraphBuilder()
    x = g.input("x", (4, 16))
    w = g.const(np.ones((16, 16), "f4"))
    g.output(g.relu(g.matmul(g.relu(g.matmul(x, w)), w)), "y")
    lowered = compile_module(g.build(), "x86_64-linux")
    calls = [n.attrs["func"] for n in lowered.main.nodes if n.op == "call_tensor"]
    assert len(calls) == 2 and len(set(calls)) == 1
