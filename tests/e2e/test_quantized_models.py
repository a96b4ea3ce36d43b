"""int8 models quantized by onnxruntime.quantization (QDQ per tensor and per channel, QOperator, dynamic) from
the tests' CNNs and transformer encoder: compiled by kiln, within one output quantization step of
onnxruntime's result for the same quantized model, and computed by integer kernels (the ``fuse-qdq`` pass
fired: every quantized convolution and matrix product has 8-bit operands, int32
accumulation and, for the static formats, its requantize fused into the same kernel)."""

from __future__ import annotations

import pytest
import running
from quant_models import (
    check_against_onnxruntime,
    graph_kernels,
    integer_kernels,
    quantized_products,
    quantized_torch_model,
)

import kiln
from kiln.ops.matmul import SMALL_INTS
from models import inputs_for

TARGET = "x86_64-linux"
FAST = {("resnet18ish", "qdq"), ("resnet18ish", "qdq-per-channel"), ("mobilenetv2ish", "qoperator")}


def _cases() -> list[object]:
    out = []
    for model in ("resnet18ish", "mobilenetv2ish", "transformer"):
        for fmt in ("qdq", "qdq-per-channel", "qoperator", "dynamic"):
            marks = [] if (model, fmt) in FAST else [pytest.mark.slow]
            out.append(pytest.param(model, fmt, marks=marks, id=f"{model}-{fmt}"))
    return out


@pytest.mark.parametrize(("model", "fmt"), _cases())
def test_quantized_model_matches_onnxruntime_with_integer_kernels(model: str, fmt: str) -> None:
    path = quantized_torch_model(model, fmt)
    kernels = graph_kernels(path, TARGET)
    integer = integer_kernels(kernels, fmt)  # for the static formats, with the requantize in the epilogue
    assert len(integer) == quantized_products(path) > 0, [(op, dts) for op, dts, _ in kernels]
    if model != "transformer":  # every convolution of the CNNs is an integer one
        assert all(dts[0] in SMALL_INTS for op, dts, _ in kernels if op == "conv2d")
    feed = inputs_for(path, seed=5)
    got = kiln.compile(path, TARGET).run(feed)
    worst = check_against_onnxruntime(path, got, feed, "ORT_ENABLE_BASIC")
    if model != "transformer":  # onnxruntime's own int8 kernels (its QDQ fusions) agree within a step too
        worst = max(worst, check_against_onnxruntime(path, got, feed, "ORT_ENABLE_ALL"))
    print(f"{model} {fmt}: {len(integer)} integer kernels, largest error {worst:.3f} steps")


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("target", ["aarch64-linux", "riscv64-linux", "armv7-linux"])
def test_int8_cnn_under_qemu_user_matches_onnxruntime(target: str) -> None:
    """The per-channel QDQ ResNet-style CNN, integer kernels and all, on the other instruction sets."""
    path = quantized_torch_model("resnet18ish", "qdq-per-channel")
    assert all(dts[0] in SMALL_INTS for op, dts, _ in graph_kernels(path, target) if op == "conv2d")
    feed = inputs_for(path, seed=5)
    got = running.run(kiln.compile(path, target), feed)
    check_against_onnxruntime(path, got, feed, "ORT_ENABLE_BASIC")
