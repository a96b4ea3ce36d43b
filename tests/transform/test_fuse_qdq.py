"""fuse-qdq: hand-built QDQ graphs (uint8 and int8 activations with zero points, padding, per-channel and
per-tensor weights, a weight zero point, Gemm with transB and bias, Relu, a product of two run-time values)
become integer kernels whose results (NumPy interpreter) are within one output step of onnxruntime's for the
same ONNX graph; what does not match (weights computed at run time) is left in float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.frontend import from_onnx
from kiln.ir import verify
from kiln.ops import type_rule
from kiln.ops.interpreter import interpret
from kiln.transform import get_pass

RNG = np.random.default_rng(3)


def _t(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(a, name)


def _qdq(x: str, s: float, z: np.ndarray, tag: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """QuantizeLinear then DequantizeLinear of ``x`` (per tensor); the result is named ``tag``."""
    inits = [_t(f"{tag}_s", np.array(s, np.float32)), _t(f"{tag}_z", z)]
    nodes = [
        helper.make_node("QuantizeLinear", [x, f"{tag}_s", f"{tag}_z"], [f"{tag}_q"]),
        helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_z"], [tag]),
    ]
    return nodes, inits


def _model(nodes, inits, x_shape, y_shape) -> bytes:  # noqa: ANN001
    g = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def conv_model(act_dtype: type, per_channel: bool, weights_at_run_time: bool = False) -> tuple[bytes, float]:
    zx, zy = (
        (np.array(128, act_dtype), np.array(20, act_dtype))
        if act_dtype is np.uint8
        else (
            np.array(-5, act_dtype),
            np.array(-100, act_dtype),
        )
    )
    nodes, inits = _qdq("x", 0.03, zx, "xd")
    wq = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    ws = RNG.uniform(0.002, 0.01, 4).astype(np.float32) if per_channel else np.array(0.005, np.float32)
    inits += [_t("wq", wq), _t("ws", ws), _t("b", RNG.standard_normal(4).astype(np.float32) * 0.3)]
    if weights_at_run_time:  # the weights go through an operator with a run-time operand: no constant
        nodes.append(helper.make_node("ReduceMin", ["x"], ["zero0"], keepdims=0))
        nodes.append(helper.make_node("Mul", ["zero0", "nought"], ["zero"]))
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w0"], axis=0))
        nodes.append(helper.make_node("Add", ["w0", "zero"], ["w"]))
        inits.append(_t("nought", np.array(0, np.float32)))
    else:
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0))
    nodes.append(helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c"], ["r"]))
    q, i = _qdq("r", 0.02, zy, "y")
    return _model(nodes + q, inits + i, [1, 3, 7, 6], [1, 4, 7, 6]), 0.02


def gemm_model() -> tuple[bytes, float]:
    """Gemm(transB=1) with a bias, uint8 weights with a zero point, int8 activations."""
    nodes, inits = _qdq("x", 0.05, np.array(3, np.int8), "xd")
    inits += [
        _t("wq", RNG.integers(0, 256, (8, 16)).astype(np.uint8)),
        _t("ws", np.array(0.004, np.float32)),
        _t("wz", np.array(131, np.uint8)),
        _t("b", RNG.standard_normal(8).astype(np.float32)),
    ]
    nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]))
    nodes.append(helper.make_node("Gemm", ["xd", "w", "b"], ["g"], transB=1))
    q, i = _qdq("g", 0.03, np.array(7, np.int8), "y")
    return _model(nodes + q, inits + i, [5, 16], [5, 8]), 0.03


def attention_model() -> tuple[bytes, float]:
    """MatMul of two quantized run-time values (x and x transposed, both with zero points), batched."""
    nodes, inits = _qdq("x", 0.04, np.array(100, np.uint8), "a")
    nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]))
    q, i = _qdq("xt", 0.05, np.array(-7, np.int8), "b")
    nodes += [*q, helper.make_node("MatMul", ["a", "b"], ["m"])]
    q2, i2 = _qdq("m", 0.1, np.array(5, np.int8), "y")
    return _model(nodes + q2, inits + i + i2, [2, 6, 9], [2, 6, 6]), 0.1


def _onnxruntime(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _kernels(mod) -> list[tuple[str, tuple[str, ...], dict]]:  # noqa: ANN001
    return [
        (n.op, tuple(v.type.dtype for v in n.inputs[:2]), n.attrs)
        for n in mod.main.nodes
        if n.op in ("conv2d", "matmul")
    ]


CASES = {
    "conv-uint8-per-channel": lambda: conv_model(np.uint8, True),
    "conv-int8-per-tensor": lambda: conv_model(np.int8, False),
    "gemm-uint8-weights-with-zero-point": gemm_model,
    "matmul-of-two-run-time-values": attention_model,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_qdq_becomes_an_integer_kernel_within_a_step_of_onnxruntime(case: str) -> None:
    model, step = CASES[case]()
    mod = from_onnx(model)
    fused = get_pass("fuse-qdq")(mod)
    verify(fused, infer=type_rule)
    kernels = _kernels(fused)  # two run-time operands: their row and column sums are products too
    assert len(kernels) == (3 if case.startswith("matmul-of-two") else 1), kernels
    kernel = kernels[0]
    assert all(d in ("int8", "uint8", "int16") for k in kernels for d in k[1]), kernels
    if case.startswith("conv-uint8"):
        assert kernel[2]["pad_value"] == 128  # the padding reads the input's zero point
    x = RNG.standard_normal(mod.main.params[0].type.static_shape).astype(np.float32) * 2
    want = _onnxruntime(model, x)
    got = interpret(fused, {"x": x})["y"]
    assert np.abs(got.astype(np.float64) - want).max() <= step * (1 + 1e-4)


def test_weights_computed_at_run_time_are_left_in_float() -> None:
    model, _ = conv_model(np.uint8, True, weights_at_run_time=True)
    mod = from_onnx(model)
    fused = get_pass("fuse-qdq")(mod)
    assert [k[1] for k in _kernels(fused)] == [("float32", "float32")]
    x = RNG.standard_normal(mod.main.params[0].type.static_shape).astype(np.float32)
    np.testing.assert_array_equal(interpret(fused, {"x": x})["y"], interpret(mod, {"x": x})["y"])
