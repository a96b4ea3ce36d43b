"""Quantized versions of the test models, made by onnxruntime.quantization, and onnxruntime as their oracle.

Formats (``FORMATS``):

* ``qdq`` / ``qdq-per-channel``: ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear around
  float operators), weights per tensor or per output channel, calibrated on a few random inputs;
* ``qoperator``: ``quantize_static`` in QOperator format with onnxruntime's default operator types: the
  standard QLinearConv and QLinearMatMul, and onnxruntime's com.microsoft contrib operators (QGemm,
  QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearSoftmax, ...);
* ``dynamic``: ``quantize_dynamic`` (DynamicQuantizeLinear + MatMulInteger / ConvInteger).

The oracle is onnxruntime at ``ORT_ENABLE_BASIC``: the quantized model as written. Its extended fusions
(``ORT_ENABLE_ALL``: LayerNorm, GELU, attention, QDQ int8 kernels) compute some float parts differently, which
moves the transformer's output by several quantization steps; the CNNs are also checked against it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from kiln.driver import load_model
from kiln.ir import Module, Node
from kiln.targets import get_target
from kiln.transform import Pipeline, default_pipeline
from kiln.transform.dispatch import expand_fused
from models import cache_dir, inputs_for, torch_onnx_path

FORMATS = ("qdq", "qdq-per-channel", "qoperator", "dynamic")


Feeds = Callable[[Path, int], dict[str, np.ndarray]]  # (model, seed) -> inputs


def _calibration(src: Path, feeds: Feeds, count: int = 4):  # noqa: ANN202
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds: Iterator[dict[str, np.ndarray]] = iter([feeds(src, 100 + s) for s in range(count)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    return Reader()


def quantize(src: Path, fmt: str, feeds: Feeds = inputs_for) -> Path:
    """``src`` quantized by onnxruntime in format ``fmt`` (one of :data:`FORMATS`), cached; static formats
    are calibrated on ``feeds(src, seed)`` (random normal inputs by default) for a few seeds."""
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; formats: {', '.join(FORMATS)}")
    out = cache_dir() / f"{src.stem}.{fmt}.onnx"
    if out.exists():
        return out
    pre = cache_dir() / f"{src.stem}.pre.onnx"
    if not pre.exists():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    if fmt == "dynamic":
        quantize_dynamic(str(pre), str(out))
    else:
        quantize_static(
            str(pre),
            str(out),
            _calibration(src, feeds),
            quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
            per_channel=fmt == "qdq-per-channel",
        )
    return out


@functools.cache
def quantized_torch_model(name: str, fmt: str) -> Path:
    """A model of :data:`models.TORCH_MODELS` quantized in format ``fmt``."""
    return quantize(torch_onnx_path(name), fmt)


def quantized_bytes(model: bytes, name: str, fmt: str) -> Path:
    """An ONNX model given as bytes (e.g. a board model) quantized in format ``fmt``."""
    src = cache_dir() / f"{name}.onnx"
    if not src.exists():
        src.write_bytes(model)
    return quantize(src, fmt)


def onnxruntime_outputs(path: Path, inputs: dict[str, np.ndarray], level: str = "ORT_ENABLE_BASIC") -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs), strict=True))


def output_step(path: Path, name: str, value: np.ndarray) -> float:
    """One quantization step of output ``name``: the scale of the DequantizeLinear that produces it (the
    largest, if per channel); for a float output (dynamic quantization ends in float), the step
    DynamicQuantizeLinear would quantize ``value`` with (its range, widened to include 0, over 255)."""
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    n = next((n for n in m.graph.node if name in n.output), None)
    if n is not None and n.op_type == "DequantizeLinear" and n.input[1] in inits:
        return float(np.max(inits[n.input[1]]))
    return (max(float(value.max()), 0.0) - min(float(value.min()), 0.0)) / 255


Kernel = tuple[str, tuple[str, ...], list[Node]]  # operator, operand dtypes, the fused group


def graph_kernels(model: Path | bytes | Module, target: str) -> list[Kernel]:
    """The convolutions and matrix products the default pipeline hands to ``legalize`` for ``target``: per
    one, its operator, its operands' dtypes and the fused group (anchor plus epilogue) it is lowered with."""
    passes = default_pipeline(target).passes
    upto = next(i for i, p in enumerate(passes) if p.name == "legalize")
    mod = Pipeline(passes[:upto])(load_model(model).with_attrs(target=get_target(target)))
    out = []
    for n in mod.main.nodes:
        group = expand_fused([n])
        for m in group:
            if m.op in ("conv2d", "matmul"):
                out.append((m.op, tuple(v.type.dtype for v in m.inputs[:2]), group))
    return out


def integer_kernels(kernels: list[Kernel], fmt: str) -> list[Kernel]:
    """The kernels (of :func:`graph_kernels`) of a model quantized in format ``fmt`` that compute in integers:
    8-bit operands and, for the static formats, the requantize to 8 bits in the kernel's epilogue (the others
    are the row and column sums a product of two run-time operands takes its zero points out with)."""
    from kiln.ops.matmul import SMALL_INTS

    out = [k for k in kernels if all(d in SMALL_INTS for d in k[1])]
    if fmt != "dynamic":  # dynamic quantization ends its products in float
        out = [k for k in out if {"int8", "uint8"} & {n.attrs.get("to") for n in k[2] if n.op == "cast"}]
    return out


def check_against_onnxruntime(path: Path, got: dict, feed: dict, level: str) -> float:
    """Asserts every output is within one quantization step of onnxruntime's (:func:`output_step`); returns
    the largest error in steps."""
    worst = 0.0
    for name, want in onnxruntime_outputs(path, feed, level).items():
        step = output_step(path, name, want)
        err = float(np.abs(got[name].astype(np.float64) - want).max()) / step
        assert err <= 1 + 1e-4, f"{name}: {err:.2f} steps from onnxruntime ({level})"
        worst = max(worst, err)
    return worst


def quantized_products(path: Path) -> int:
    """How many convolutions and matrix products of the ONNX model are quantized: QDQ Conv/Gemm with
    weights dequantized from an initializer and MatMul on two dequantized operands, QLinearConv,
    QLinearMatMul, QGemm with constant weights, ConvInteger/MatMulInteger with constant weights."""
    g = onnx.load(str(path)).graph
    inits = {t.name for t in g.initializer}
    dq = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    count = 0
    for n in g.node:
        if n.op_type in ("Conv", "Gemm") and dq.get(n.input[1]) in inits and n.input[0] in dq:
            count += 1
        elif n.op_type == "MatMul" and n.input[0] in dq and n.input[1] in dq:
            count += 1
        elif n.op_type in ("QLinearConv", "QLinearMatMul"):
            count += 1
        elif n.op_type == "QGemm" and n.input[3] in inits:
            count += 1
        elif n.op_type in ("ConvInteger", "MatMulInteger") and n.input[1] in inits:
            count += 1
    return count
