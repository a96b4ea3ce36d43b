"""Every operator's lowering: the single-node models of tests/op_cases.py compiled for x86_64-linux with
``kiln.compile`` and run (``Package.run``) against the operators' NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
from op_cases import CASES

import kiln
from kiln.frontend import from_onnx
from kiln.ir.interpreter import interpret

TARGET = "x86_64-linux"

# Lowering gaps outside the operators (reported to the codegen owner); strict: they fail loudly once fixed.
KNOWN_GAPS: dict[str, str] = {}


def _param(case_id: str) -> object:
    gap = KNOWN_GAPS.get(case_id)
    return pytest.param(case_id, marks=pytest.mark.xfail(reason=gap, strict=True)) if gap else case_id


@pytest.mark.parametrize("case_id", [_param(c) for c in sorted(CASES)])
def test_compiled_operator_matches_reference(case_id: str) -> None:
    case = CASES[case_id]
    mod = from_onnx(case.model, name=case_id.replace("-", "_"))
    want = interpret(mod, case.feed)
    got = kiln.compile(mod, TARGET).run(case.feed)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape and g.dtype == w.dtype, f"{name}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(
                g, w, rtol=max(case.rtol, 1e-4), atol=max(case.atol, 1e-5), err_msg=name
            )


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_lowering_applies_the_epilogue_to_its_first_output(case_id: str) -> None:
    """Fusion hooks into any operator through ``ctx.apply_epilogue``: every value stored into the first
    output must pass through it, with a full index into that output."""
    from kiln.ir import tensor as T
    from kiln.ops import LowerContext, get_op
    from kiln.targets import get_target

    for n in from_onnx(CASES[case_id].model).main.nodes:
        ins = [T.Buffer(f"in{i}", v.type.static_shape, v.type.dtype) for i, v in enumerate(n.inputs)]
        outs = [T.Buffer(f"out{i}", v.type.static_shape, v.type.dtype) for i, v in enumerate(n.outputs)]
        wrapped: list[T.Expr] = []

        def epilogue(value: T.Expr, idx: tuple, flat: object, outs: list = outs) -> T.Expr:
            assert len(idx) == outs[0].ndim
            wrapped.append(value + 0 if value.dtype.startswith("float") else value)
            return wrapped[-1]

        body = get_op(n.op).lower(LowerContext(get_target(TARGET), epilogue, "k"), ins, outs, n.attrs)
        stored = [
            s.value for s in T.walk_stmts(body) if isinstance(s, T.Store) and s.buffer.name == outs[0].name
        ]
        assert stored and all(v in wrapped for v in stored), (
            f"{n.op}: a store into its output skips the epilogue"
        )
