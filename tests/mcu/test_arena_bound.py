"""The arena is as small as it can be: plan-memory's arena equals the lower bound (the most bytes live at once:
tensors written or still to be read, plus the running kernel's scratch, each aligned), computed here from the
lowered module's own lifetimes, for the board models and the graph tests' models; and no two buffers that
are live at once overlap."""

from __future__ import annotations

import mcu_models as M
import pytest

from graphs import conv_bn_relu, mlp, residual_block
from kiln.driver import compile_module, load_model
from kiln.ir import Constant, Module
from kiln.ir.tensor import workspace_bytes
from kiln.runtime_c.abi import align_up

BOARD = "mps2-an386"


def buffers(mod: Module) -> dict[object, tuple[int, int, int]]:
    """Every arena buffer of ``main``: key -> (aligned bytes, first node, last node). Tensors: from the node
    that writes them to the last that reads them or a view of them; scratch: the call that needs it."""
    main = mod.main
    funcs = mod.tensor_functions()
    root: dict[int, object] = {}
    for n in main.nodes:
        if n.op == "view":
            root[n.outputs[0].uid] = root.get(n.inputs[0].uid, n.inputs[0])
    outside = {p.uid for p in main.params} | {getattr(root.get(v.uid, v), "uid", None) for v in main.outputs}
    out: dict[object, tuple[int, int, int]] = {}
    for pos, n in enumerate(main.nodes):
        for v in n.inputs:
            r = root.get(v.uid, v)
            if not isinstance(r, Constant) and r.uid in out:  # type: ignore[attr-defined]
                size, first, _ = out[r.uid]  # type: ignore[attr-defined]
                out[r.uid] = (size, first, pos)  # type: ignore[attr-defined]
        if n.op == "view":
            continue
        for o in n.outputs:
            if o.uid not in outside:
                out[o.uid] = (align_up(o.type.nbytes), pos, pos)
        if n.op == "call_tensor" and workspace_bytes(funcs[n.attrs["func"]]):
            out[("scratch", pos)] = (align_up(workspace_bytes(funcs[n.attrs["func"]])), pos, pos)
    return out


def live_bytes_bound(mod: Module) -> int:
    bufs = buffers(mod)
    return max(
        (sum(s for s, f, la in bufs.values() if f <= pos <= la) for pos in range(len(mod.main.nodes))),
        default=0,
    )


def check_plan(mod: Module) -> tuple[int, int]:
    plan = mod.attrs["memory_plan"]
    bufs = buffers(mod)
    where = {k: plan["scratch"][k[1]] if isinstance(k, tuple) else plan["storage"][k][1] for k in bufs}
    items = list(bufs.items())
    for i, (a, (asz, a0, a1)) in enumerate(items):
        assert where[a] % 64 == 0 and where[a] + asz <= plan["arena_bytes"]
        for b, (bsz, b0, b1) in items[i + 1 :]:
            if a1 >= b0 and b1 >= a0:  # live at once: disjoint bytes
                assert where[a] + asz <= where[b] or where[b] + bsz <= where[a], (a, b)
    bound = live_bytes_bound(mod)
    assert plan["lower_bound"] == bound
    return plan["arena_bytes"], bound


def lowered(model: object) -> Module:
    return compile_module(load_model(model), BOARD)


def test_kws_arena_equals_the_live_bytes_lower_bound() -> None:
    mod = lowered(M.kws_dscnn())
    arena, bound = check_plan(mod)
    assert arena == bound, f"KWS arena {arena} B, lower bound {bound} B"
    scratch = mod.attrs["memory_plan"]["scratch_bytes"]
    assert scratch > 0 and arena < mod.attrs["memory_plan"]["tensor_bytes"] + scratch  # scratch shares bytes


@pytest.mark.parametrize("name", ["mlp", "person", "conv_bn_relu", "residual_block", "graph_mlp"])
def test_arena_is_no_larger_than_the_lower_bound(name: str) -> None:
    model = {
        "mlp": M.mlp,
        "person": M.person_detect,
        "conv_bn_relu": conv_bn_relu,
        "residual_block": residual_block,
        "graph_mlp": mlp,
    }[name]()
    arena, bound = check_plan(lowered(model))
    assert arena == bound
