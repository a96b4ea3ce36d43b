"""onnxruntime's quantized contrib operators (domain com.microsoft, what ``quantize_static`` writes in QOperator
format): each node imported as dequantize -> float operator -> quantize and evaluated by the operators' NumPy
references, within one quantization step of onnxruntime running the node; a chain of them compiled for
x86-64 matches too; an unsupported contrib operator is an error naming the node, the operator and what to do.
The whole quantized models are in tests/e2e/test_quantized_models.py (``qoperator``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from quant_models import graph_kernels

import kiln
from kiln.frontend import UnsupportedOperatorError, from_onnx
from kiln.ops.interpreter import interpret

MS = "com.microsoft"
_rng = np.random.default_rng(11)
_TYPES = {
    np.dtype("uint8"): TensorProto.UINT8,
    np.dtype("int8"): TensorProto.INT8,
    np.dtype("bool"): TensorProto.BOOL,
}


def _q8(*shape: int, dtype: str = "uint8") -> np.ndarray:
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    return _rng.integers(lo, hi, shape).astype(dtype)


def _s(v: float) -> np.ndarray:
    return np.array(v, np.float32)


def _z(v: int, dtype: str = "uint8") -> np.ndarray:
    return np.array(v, dtype)


def _model(
    op: str, inputs: list[tuple[str, np.ndarray | None, bool]], attrs: dict[str, Any], out_type: int
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One ``op`` node; ``inputs``: (name, value, is_initializer), value None for an absent optional input."""
    node = helper.make_node(
        op, [n if v is not None else "" for n, v, _ in inputs], ["y"], name="the_node", domain=MS, **attrs
    )
    feeds = {n: v for n, v, init in inputs if v is not None and not init}
    g = helper.make_graph(
        [node],
        "contrib",
        [helper.make_tensor_value_info(n, _TYPES[v.dtype], v.shape) for n, v in feeds.items()],
        [helper.make_tensor_value_info("y", out_type, None)],
        [numpy_helper.from_array(v, n) for n, v, init in inputs if v is not None and init],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    return helper.make_model(g, opset_imports=opsets, ir_version=8), feeds


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(["y"], feeds)[0]


def _triple(
    name: str, x: np.ndarray, scale: float, zp: int, const: bool = False
) -> list[tuple[str, Any, bool]]:
    return [(name, x, const), (f"{name}_s", _s(scale), True), (f"{name}_z", _z(zp, str(x.dtype)), True)]


def _cases() -> dict[str, tuple[str, list[tuple[str, Any, bool]], dict[str, Any], int]]:
    u8 = TensorProto.UINT8
    a, b = _q8(2, 3, 4, 5), _q8(1, 3, 1, 5)
    out = {
        "add-broadcast": (
            "QLinearAdd",
            [
                *_triple("a", a, 0.05, 120),
                *_triple("b", b, 0.03, 130),
                ("ys", _s(0.07), True),
                ("yz", _z(128), True),
            ],
            {},
            u8,
        ),
        "mul": (
            "QLinearMul",
            [
                *_triple("a", a, 0.02, 128),
                *_triple("b", _q8(2, 3, 4, 5), 0.04, 100),
                ("ys", _s(0.09), True),
                ("yz", _z(60), True),
            ],
            {},
            u8,
        ),
        "add-int8": (
            "QLinearAdd",
            [
                *_triple("a", _q8(3, 8, dtype="int8"), 0.05, -3),
                *_triple("b", _q8(3, 8, dtype="int8"), 0.03, 5),
                ("ys", _s(0.08), True),
                ("yz", _z(1, "int8"), True),
            ],
            {},
            TensorProto.INT8,
        ),
        "sigmoid": (
            "QLinearSigmoid",
            [*_triple("x", _q8(4, 16), 0.06, 128), ("ys", _s(1 / 256), True), ("yz", _z(0), True)],
            {},
            u8,
        ),
        "leaky-relu": (
            "QLinearLeakyRelu",
            [*_triple("x", _q8(4, 16), 0.05, 140), ("ys", _s(0.04), True), ("yz", _z(30), True)],
            {"alpha": 0.2},
            u8,
        ),
        "softmax-opset13": (
            "QLinearSoftmax",
            [*_triple("x", _q8(3, 4, 10), 0.08, 128), ("ys", _s(1 / 256), True), ("yz", _z(0), True)],
            {"axis": -1, "opset": 13},
            u8,
        ),
        "softmax-opset11-axis1": (
            "QLinearSoftmax",
            [*_triple("x", _q8(3, 4, 5), 0.08, 128), ("ys", _s(1 / 256), True), ("yz", _z(0), True)],
            {"axis": 1, "opset": 11},
            u8,
        ),
        "global-average-pool": (
            "QLinearGlobalAveragePool",
            [*_triple("x", _q8(1, 6, 5, 7), 0.05, 128), ("ys", _s(0.03), True), ("yz", _z(120), True)],
            {"channels_last": 0},
            u8,
        ),
        "global-average-pool-nhwc": (
            "QLinearGlobalAveragePool",
            [*_triple("x", _q8(1, 5, 7, 6), 0.05, 128), ("ys", _s(0.03), True), ("yz", _z(120), True)],
            {"channels_last": 1},
            u8,
        ),
        "average-pool": (
            "QLinearAveragePool",
            [*_triple("x", _q8(1, 3, 9, 9), 0.05, 128), ("ys", _s(0.04), True), ("yz", _z(128), True)],
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
            u8,
        ),
        "concat": (
            "QLinearConcat",
            [
                ("ys", _s(0.06), True),
                ("yz", _z(125), True),
                *_triple("a", _q8(2, 3, 4), 0.05, 128),
                *_triple("b", _q8(2, 5, 4), 0.07, 110),
                *_triple("c", _q8(2, 1, 4), 0.06, 125, const=True),
            ],
            {"axis": 1},
            u8,
        ),
        "where": (
            "QLinearWhere",
            [
                ("cond", _rng.random((3, 6)) > 0.5, False),
                *_triple("x", _q8(3, 6), 0.05, 128),
                *_triple("w", _q8(1, 6), 0.03, 100),
                ("zs", _s(0.06), True),
                ("zz", _z(120), True),
            ],
            {},
            u8,
        ),
        "gemm-bias": (
            "QGemm",
            [
                *_triple("a", _q8(4, 12), 0.05, 128),
                *_triple("b", _q8(12, 7, dtype="int8"), 0.02, 0, const=True),
                ("c", _rng.integers(-500, 500, 7).astype(np.int32), True),
                ("ys", _s(0.5), True),
                ("yz", _z(128), True),
            ],
            {},
            u8,
        ),
        "gemm-transb-alpha-per-column": (
            "QGemm",
            [
                *_triple("a", _q8(4, 12), 0.05, 128),
                ("b", _q8(7, 12, dtype="int8"), True),
                ("b_s", (_rng.random(7) * 0.02 + 0.01).astype(np.float32), True),
                ("b_z", np.zeros(7, np.int8), True),
                ("c", _rng.integers(-500, 500, 7).astype(np.int32), True),
                ("ys", _s(0.3), True),
                ("yz", _z(100), True),
            ],
            {"transB": 1, "alpha": 0.5},
            u8,
        ),
        "conv-nhwc": (
            "QLinearConv",
            [
                *_triple("x", _q8(1, 6, 5, 3), 0.05, 128),
                *_triple("w", _q8(4, 3, 3, 3, dtype="int8"), 0.02, 0, const=True),
                ("ys", _s(0.2), True),
                ("yz", _z(110), True),
                ("bias", _rng.integers(-300, 300, 4).astype(np.int32), True),
            ],
            {"channels_last": 1, "pads": [1, 1, 1, 1]},
            u8,
        ),
        "gemm-float-output": (
            "QGemm",
            [
                *_triple("a", _q8(4, 12), 0.05, 128),
                *_triple("b", _q8(12, 7, dtype="int8"), 0.02, 0, const=True),
            ],
            {},
            TensorProto.FLOAT,
        ),
    }
    return out


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_contrib_operator_matches_onnxruntime(case: str) -> None:
    op, inputs, attrs, out_type = CASES[case]
    model, feeds = _model(op, inputs, attrs, out_type)
    want = _ort(model, feeds)
    mod = from_onnx(model)
    assert not any(n.op.startswith("q") for n in mod.main.nodes)  # kiln's own operators: no contrib op left
    got = interpret(mod, feeds)["y"]
    assert got.dtype == want.dtype and got.shape == want.shape
    if out_type == TensorProto.FLOAT:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:  # within one quantization step
        assert int(np.abs(got.astype(np.int32) - want.astype(np.int32)).max()) <= 1


def test_qlinear_reduce_mean_matches_numpy() -> None:
    """onnxruntime has no CPU kernel for QLinearReduceMean: NumPy computes the definition."""
    x = _q8(2, 6, 5)
    inputs = [*_triple("x", x, 0.05, 128), ("ys", _s(0.02), True), ("yz", _z(128), True)]
    model, feeds = _model("QLinearReduceMean", inputs, {"axes": [2], "keepdims": 1}, TensorProto.UINT8)
    mean = ((x.astype(np.float64) - 128) * np.float32(0.05)).mean(axis=2, keepdims=True)
    want = np.clip(np.rint(mean / np.float32(0.02)) + 128, 0, 255)
    got = interpret(from_onnx(model), feeds)["y"]
    assert got.dtype == np.uint8 and got.shape == (2, 6, 1)
    assert int(np.abs(got.astype(np.int32) - want).max()) <= 1


def test_contrib_chain_compiles_with_integer_gemm_and_matches_onnxruntime() -> None:
    """QGemm -> QLinearLeakyRelu -> QLinearAdd (with itself) -> QLinearSigmoid compiled for x86-64; the QGemm
    becomes an int8 matrix product (fuse-qdq)."""
    w = _q8(16, 8, dtype="int8")
    bias = _rng.integers(-300, 300, 8).astype(np.int32)
    nodes = [
        helper.make_node(
            "QGemm", ["x", "xs", "xz", "w", "ws", "wz", "bias", "hs", "hz"], ["h"], name="gemm", domain=MS
        ),
        helper.make_node(
            "QLinearLeakyRelu", ["h", "hs", "hz", "rs", "rz"], ["r"], name="act", domain=MS, alpha=0.1
        ),
        helper.make_node(
            "QLinearAdd", ["r", "rs", "rz", "h", "hs", "hz", "as", "az"], ["s"], name="add", domain=MS
        ),
        helper.make_node("QLinearSigmoid", ["s", "as", "az", "ys", "yz"], ["y"], name="sig", domain=MS),
    ]
    consts = {"xs": _s(0.05), "xz": _z(128), "w": w, "ws": _s(0.02), "wz": _z(0, "int8"), "bias": bias}
    consts |= {"hs": _s(0.2), "hz": _z(120), "rs": _s(0.15), "rz": _z(40), "as": _s(0.3), "az": _z(90)}
    consts |= {"ys": _s(1 / 256), "yz": _z(0)}
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [5, 16])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [5, 8])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)], ir_version=8
    )
    x = _q8(5, 16)
    want = _ort(model, {"x": x})
    pkg = kiln.compile(model, "x86_64-linux")
    got = pkg.run({"x": x})["y"]
    assert got.dtype == np.uint8 and int(np.abs(got.astype(np.int32) - want.astype(np.int32)).max()) <= 1

    kernels = graph_kernels(model, "x86_64-linux")
    assert [(op, dts) for op, dts, _ in kernels] == [("matmul", ("uint8", "int8"))]


def test_unsupported_contrib_operator_names_node_op_and_what_to_do() -> None:
    node = helper.make_node("QAttention", ["x"], ["y"], name="attn_quant", domain=MS)
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    with pytest.raises(UnsupportedOperatorError) as err:
        from_onnx(model)
    msg = str(err.value)
    assert "com.microsoft.QAttention (nodes: attn_quant)" in msg
    assert "QLinearAdd" in msg and "QuantFormat.QDQ" in msg and "op_types_to_quantize" in msg
