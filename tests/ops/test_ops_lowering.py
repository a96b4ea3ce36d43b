"""Every operator's lowering: the single-node models of tests/op_cases.py compiled with ``kiln.compile`` for
x86_64-linux (native) and for the emulated vector targets (AArch64 NEON, Armv7 NEON, RV64 with RVV, under
qemu-user), and run (``Package.run``; emulated runs without a wall-clock limit, tests/running.py) against the
operators' NumPy references. The emulated targets are ``slow``: the fast tier runs every operator natively.

Under emulation each case runs on one of the three emulated targets, taken in turn over the sorted case names
(a case whose known gap is on its turn's target moves to the next), so the full suite spends its emulator time
on distinct cases: every operator compiled for a second instruction set, every instruction set by a third of
the cases. ``KILN_FULL_MATRIX=1`` runs every case on every target."""

from __future__ import annotations

import os

import numpy as np
import pytest
import running
from op_cases import CASES

import kiln
from kiln.frontend import from_onnx
from kiln.ops.interpreter import interpret

TARGET = "x86_64-linux"
EMULATED = ("aarch64-linux", "armv7-linux", "riscv64-linux-rvv")
TARGETS = (TARGET, *EMULATED)
FULL_MATRIX = os.environ.get("KILN_FULL_MATRIX") == "1"

# Gaps outside the operators, per (target, case); strict: they fail loudly once fixed.
KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("riscv64-linux-rvv", "cast-float-int32"): (
        "QEMU 7.2 (Debian 12) aborts translating vfcvt.rtz.x.f.v (decode_save_opc assertion); the code is "
        "valid RVV, LLVM's own vectorizer emits the same instruction"
    ),
}
# the same QEMU abort for other float -> integer conversions (CastLike, requantization, grid sample taps, the
# sequence lengths of a recurrent layer)
KNOWN_GAPS.update(
    {
        ("riscv64-linux-rvv", case_id): KNOWN_GAPS[("riscv64-linux-rvv", "cast-float-int32")]
        for case_id in (
            "castlike-int32",
            "lstm-bidirectional-initial-state-lens",
            "dynamic-quantize-linear",
            "quantize-linear-uint8",
            "quantize-linear-per-axis-int8",
            "qlinear-conv-per-channel",
            "qlinear-matmul",
            "grid-sample-cubic-reflection",
            "dft-rfft-length-opset20",  # sin/cos range reduction (vfcvt.rtz.x.f.v)
        )
    }
)


def _emulated_targets(index: int, case_id: str) -> tuple[str, ...]:
    """The emulated targets case number ``index`` (in sorted order) runs on."""
    if FULL_MATRIX:
        return EMULATED
    for k in range(len(EMULATED)):
        target = EMULATED[(index + k) % len(EMULATED)]
        if (target, case_id) not in KNOWN_GAPS:
            return (target,)
    return (EMULATED[index % len(EMULATED)],)


def _params() -> list[object]:
    out: list[object] = []
    for index, case_id in enumerate(sorted(CASES)):
        for target in (TARGET, *_emulated_targets(index, case_id)):
            gap = KNOWN_GAPS.get((target, case_id))
            marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
            if target != TARGET:  # runs under qemu-user: the full suite's, not the fast tier's
                marks += [pytest.mark.qemu, pytest.mark.slow]
            out.append(pytest.param(target, case_id, marks=marks, id=f"{target}-{case_id}"))
    return out


def test_every_case_runs_on_a_second_instruction_set() -> None:
    emulated = [p for p in _params() if p.values[0] != TARGET]
    assert {p.values[1] for p in emulated} == set(CASES)
    per_target = {t: sum(p.values[0] == t for p in emulated) for t in EMULATED}
    assert min(per_target.values()) >= len(CASES) // (len(EMULATED) + 1), per_target


def test_the_fast_tier_runs_every_operator_natively() -> None:
    """``-m "not slow"`` compiles and runs every case on x86-64; only the emulated targets are slow."""
    native = [p for p in _params() if p.values[0] == TARGET]
    assert sorted(p.values[1] for p in native) == sorted(CASES)
    assert not [p.id for p in native if any(m.name == "slow" for m in p.marks)]


@pytest.mark.parametrize(("target", "case_id"), _params())
def test_compiled_operator_matches_reference(target: str, case_id: str) -> None:
    case = CASES[case_id]
    mod = from_onnx(case.model, name=case_id.replace("-", "_"))
    want = interpret(mod, case.feed)
    got = running.run(kiln.compile(mod, target), case.feed)
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
