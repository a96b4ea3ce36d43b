"""The model zoo (tests/zoo_models.py): one small but real model per family people bring from the wild (an OCR
text detector with transposed-convolution upsampling, a voice activity detector with an LSTM, a state input and
an ``If`` on its sample-rate input, a segmentation net with bilinear Resize, a vision transformer, a BERT-style
encoder with an attention mask, EfficientNet-, MobileNetV3-, RegNet- and ConvNeXt-style nets) and int8 versions
of two of the CNNs and of the encoder, quantized by onnxruntime.quantization. Each is compiled by kiln and
compared with onnxruntime on the same model and inputs:

* natively (x86-64) at full size; its light variant (tests/zoo_models.py) under qemu-user on AArch64 and RISC-V
  (``qemu`` and ``slow``, like tests/e2e/test_models.py), the int8 ones also on a Cortex-M4F board
  (qemu-system-arm, mps2-an386);
* float models within rtol 1e-3, atol 1e-4 (tests/e2e/test_models.py's tolerance: float32 sums accumulated in
  another order; the largest error seen is a few 1e-6 on outputs of magnitude 1-5);
* int8 models within one quantization step of the output (tests/e2e/test_quantized_models.py), computed by
  integer kernels (every quantized convolution and matrix product has 8-bit operands, int32 accumulation and,
  for the static formats, the requantize fused into the kernel);
* the VAD twice with one package, at 16 kHz and 8 kHz: its ``If`` is decided at run time, and onnxruntime's
  outputs for the two rates differ by far more than the tolerance, so matching both shows the right branch ran.

RISC-V: the float models run on RV64GCV (riscv64-linux-rvv). QEMU 7.2 (Debian 12) aborts translating
``vfcvt.rtz.x.f.v`` (float to integer) when it is the first floating-point instruction of a translation block
(its decode_save_opc assertion; fixed in QEMU 8): every int8 requantize loop hits this, so the int8 models run
on RV64GC (riscv64-linux) instead, and so does a float model whose code happens to put the conversion of its
inline exp at a block start (:data:`EMULATION_GAPS`: an expected failure on RVV that names the abort, and the
same model on RV64GC). The code is valid RVV; tests/ops records the same gap per operator.
"""

from __future__ import annotations

import numpy as np
import pytest
import running
from quant_models import (
    check_against_onnxruntime,
    graph_kernels,
    integer_kernels,
    quantize,
    quantized_products,
)
from zoo_models import ZOO, zoo_feeds, zoo_path

import kiln
from kiln.device import DeviceLost
from kiln.package import Package
from models import onnxruntime_outputs

RTOL, ATOL = 1e-3, 1e-4
NATIVE = "x86_64-linux"
EMULATED = ("aarch64-linux", "riscv64-linux-rvv")
SCALAR_RISCV = "riscv64-linux"
QEMU = (pytest.mark.qemu, pytest.mark.slow)
QEMU_ABORT = "decode_save_opc"
# Light models whose RVV code QEMU 7.2 cannot translate (see the module docstring); they also run on RV64GC.
EMULATION_GAPS = {
    ("convnext", "riscv64-linux-rvv"): (
        "QEMU 7.2 aborts translating vfcvt.rtz.x.f.v at the start of a translation block (decode_save_opc "
        "assertion): the layer norm's x^2 (Pow) and GELU's erf convert floats to integers in their inline exp"
    ),
}
# (model, quantization format): two CNNs (per-channel weights with transposed convolutions; per-tensor with
# hardswish and squeeze-excitation) and the encoder (static QDQ and dynamic, how encoders are usually quantized)
INT8 = (("dbnet", "qdq-per-channel"), ("mobilenetv3", "qdq"), ("bert", "qdq"), ("bert", "dynamic"))
INT8_EMULATED = ("aarch64-linux", SCALAR_RISCV, "mps2-an386")  # and a microcontroller (Cortex-M4F board)


def _param(*values: str, target: str) -> object:
    marks = QEMU if target != NATIVE else ()
    return pytest.param(*values, target, marks=marks, id="-".join((*values, target)))


def _float_cases() -> list[object]:
    cases = [_param(m, target=NATIVE) for m in ZOO] + [_param(m, target=t) for m in ZOO for t in EMULATED]
    return cases + [_param(m, target=SCALAR_RISCV) for m, t in EMULATION_GAPS if t == "riscv64-linux-rvv"]


def _run(pkg: Package, feeds: list[dict[str, np.ndarray]], gap: str | None) -> list[dict[str, np.ndarray]]:
    try:
        with running.open_session(pkg) as s:
            return [s.run(feed) for feed in feeds]
    except DeviceLost as e:
        if gap is not None and QEMU_ABORT in str(e):
            pytest.xfail(gap)
        raise


@pytest.mark.parametrize(("model", "target"), _float_cases())
def test_zoo_model_matches_onnxruntime(model: str, target: str) -> None:
    path = zoo_path(model, light=target != NATIVE)
    feeds = zoo_feeds(path)
    results = _run(kiln.compile(path, target), feeds, EMULATION_GAPS.get((model, target)))
    wants = [onnxruntime_outputs(path, feed) for feed in feeds]
    for feed, got, want in zip(feeds, results, wants, strict=True):
        assert sorted(got) == sorted(want)
        where = f"{model} on {target}" + (f" at {feed['sr']} Hz" if "sr" in feed else "")
        for name in want:
            np.testing.assert_allclose(
                got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=f"{where}: {name}"
            )
    if (
        model == "vad"
    ):  # the branches' results differ by 10x the tolerance: matching both means the If ran the
        # branch the sample rate chose
        for name in wants[0]:
            assert not np.allclose(wants[0][name], wants[1][name], rtol=10 * RTOL, atol=10 * ATOL), name


def _int8_cases() -> list[object]:
    return [_param(m, f, target=NATIVE) for m, f in INT8] + [
        _param(m, f, target=t) for m, f in INT8 for t in INT8_EMULATED
    ]


@pytest.mark.parametrize(("model", "fmt", "target"), _int8_cases())
def test_int8_zoo_model_within_one_step_of_onnxruntime(model: str, fmt: str, target: str) -> None:
    path = quantize(zoo_path(model, light=target != NATIVE), fmt, lambda p, seed: zoo_feeds(p, seed)[0])
    kernels = graph_kernels(path, target)
    assert len(integer_kernels(kernels, fmt)) == quantized_products(path) > 0, [
        (op, d) for op, d, _ in kernels
    ]
    feed = zoo_feeds(path, seed=5)[0]
    got = running.run(kiln.compile(path, target), feed)
    check_against_onnxruntime(path, got, feed, "ORT_ENABLE_BASIC")
    if model != "bert":  # onnxruntime's own int8 kernels (its QDQ fusions) agree within a step too
        check_against_onnxruntime(path, got, feed, "ORT_ENABLE_ALL")
