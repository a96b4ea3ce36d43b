"""ONNX's node test cases compiled by kiln and run: in-scope cases natively on x86-64 (slow tier), and a fixed
sample under qemu-user on AArch64 and RV64 with RVV.

Natively the suite runs a fixed quarter of the ~1300 passing cases (chosen by a hash of the name, so the same
ones every run) plus every known failure, to keep the full suite inside CI's time budget; the interpreter runs
every case (test_onnx_conformance.py) and tests/ops compiles every operator on every target.
``KILN_FULL_MATRIX=1`` compiles every in-scope case, and ``scripts/onnx-node-report`` counts them all.

Each case is passed, excluded with the reason (``onnx_node_suite.VERDICTS``) or a known failure with the reason
(``onnx_node_suite.KNOWN_FAILURES``, strict: a case that starts passing must leave the list). The same counts
come out of ``scripts/onnx-node-report``.
"""

from __future__ import annotations

import os
import zlib

import onnx_node_suite as suite
import pytest

NATIVE = "x86_64-linux"
EMULATED = ("aarch64-linux", "riscv64-linux-rvv")

# A fixed sample for the emulated targets: one or two cases per family, small.
QEMU_SAMPLE = (
    "test_convtranspose_1d",
    "test_convtranspose_pads",
    "test_top_k",
    "test_argmax_keepdims_example",
    "test_cumsum_1d_reverse_exclusive",
    "test_einsum_batch_matmul",
    "test_gather_elements_1",
    "test_gathernd_example_int32_batch_dim1",
    "test_scatter_elements_with_reduction_max",
    "test_scatternd_add",
    "test_onehot_negative_indices",
    "test_tril",
    "test_depthtospace_crd_mode_example",
    "test_instancenorm_example",
    "test_group_normalization_example",
    "test_rms_normalization_2d_axis1",
    "test_mish",
    "test_atan",
    "test_isnan",
    "test_reduce_log_sum_exp_do_not_keepdims_example",
    "test_lstm_with_peepholes",
    "test_gru_defaults",
    "test_if",
    "test_attention_4d",
    "test_qlinearmatmul_2D_uint8_float32",
    "test_dynamicquantizelinear",
    "test_nonzero_example",
    "test_nonmaxsuppression_two_batches",
    "test_roialign_aligned_false",
    "test_unique_sorted_with_axis",
    "test_det_nd",
    "test_dft_irfft",
    "test_col2im_pads",
)

# Operators whose every in-scope case is compiled natively (not only the fixed quarter): the data-dependent
# ones (bounded outputs, run-time loop bounds), the quantized ones (their rounding is exact, one unit off
# is a failure) and the ones added last.
ALWAYS_COMPILED = {
    "QLinearMatMul",
    "QLinearConv",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "NonZero",
    "NonMaxSuppression",
    "Unique",
    "RoiAlign",
    "Det",
    "BitCast",
    "DFT",
    "Col2Im",
    "MaxUnpool",
    "DeformConv",
    "Loop",
    "Scan",
    "STFT",
    "MelWeightMatrix",
    "TensorScatter",
    "MaxRoiPool",
    "GlobalLpPool",
}


# Gaps outside kiln, per (target, case); strict: they fail loudly once fixed.
EMULATION_GAPS = {
    ("riscv64-linux-rvv", name): (
        "QEMU 7.2 (Debian 12) aborts translating vfcvt.rtz.x.f.v (decode_save_opc assertion), the float to "
        "integer conversion of the requantization; the code is valid RVV"
    )
    for name in ("test_qlinearmatmul_2D_uint8_float32", "test_dynamicquantizelinear")
}


def _native_sample(name: str) -> bool:
    if suite._ops(suite.CASES[name]) & ALWAYS_COMPILED:
        return True
    return os.environ.get("KILN_FULL_MATRIX") == "1" or zlib.crc32(name.encode()) % 4 == 0


def _params() -> list[object]:
    out: list[object] = []
    for name in suite.IN_SCOPE:
        why = suite.KNOWN_FAILURES.get(name)
        if not why and not _native_sample(name):
            continue
        marks = [pytest.mark.slow] + ([pytest.mark.xfail(reason=why, strict=True)] if why else [])
        out.append(pytest.param(NATIVE, name, marks=marks, id=f"{NATIVE}-{name}"))
    for target in EMULATED:
        for name in QEMU_SAMPLE:
            marks = [pytest.mark.slow, pytest.mark.qemu]
            if (target, name) in EMULATION_GAPS:
                marks.append(pytest.mark.xfail(reason=EMULATION_GAPS[(target, name)], strict=True))
            out.append(pytest.param(target, name, marks=marks, id=f"{target}-{name}"))
    return out


def test_the_sample_and_the_failure_list_name_in_scope_cases() -> None:
    assert set(QEMU_SAMPLE) <= set(suite.IN_SCOPE)
    assert not set(QEMU_SAMPLE) & set(suite.KNOWN_FAILURES)
    assert set(suite.KNOWN_FAILURES) <= set(suite.IN_SCOPE)
    assert len(suite.IN_SCOPE) - len(suite.KNOWN_FAILURES) >= 0.95 * len(suite.IN_SCOPE)


@pytest.mark.parametrize(("target", "name"), _params())
def test_onnx_node_case_compiled(target: str, name: str) -> None:
    suite.run_case(name, suite.compiled_runner(target))
