"""widen-float16: a half-precision model computes in float32 (weights widened once, float16 only at the
interface), so a float16 product over K=256 and its softmax are as close to the exact result as float16
rounding of the output allows; without the pass they are ~20x further off."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.frontend import from_onnx
from kiln.transform import get_pass

DEFAULT_WITHOUT_WIDENING = (
    "fuse-qdq,fold-constants,simplify,fold-batch-norm,fold-constants,eliminate-dead-code,fuse-ops,legalize,"
    "plan-memory"
)


def _model(rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    w = (rng.standard_normal((256, 64)) / 16).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Softmax", ["m"], ["y"], axis=-1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), w


def _exact(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    m = x.astype(np.float64) @ w.astype(np.float64)
    e = np.exp(m - m.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_a_float16_model_is_as_exact_as_rounding_its_output() -> None:
    rng = np.random.default_rng(0)
    model, w = _model(rng)
    x = rng.standard_normal((4, 256)).astype(np.float16)
    exact = _exact(x, w)
    rounding = np.abs(exact.astype(np.float16).astype(np.float64) - exact).max()
    got = kiln.compile(model, "x86_64-linux").run({"x": x})["y"]
    assert got.dtype == np.float16  # the interface keeps its type
    assert np.abs(got.astype(np.float64) - exact).max() <= 1.01 * rounding
    narrow = kiln.compile(model, "x86_64-linux", pipeline=DEFAULT_WITHOUT_WIDENING).run({"x": x})["y"]
    assert np.abs(narrow.astype(np.float64) - exact).max() > 5 * rounding  # what the pass is for


def test_only_the_interface_stays_float16() -> None:
    model, _ = _model(np.random.default_rng(1))
    mod = get_pass("widen-float16")(from_onnx(onnx.load_from_string(model)))
    main = mod.main
    assert [p.type.dtype for p in main.params] == ["float16"] and main.outputs[0].type.dtype == "float16"
    inner = [n for n in main.nodes if n.op != "cast"]
    assert inner and all(v.type.dtype == "float32" for n in inner for v in (*n.inputs, *n.outputs))
    casts = [n for n in main.nodes if n.op == "cast"]
    assert [(c.inputs[0].type.dtype, c.attrs["to"]) for c in casts] == [
        ("float16", "float32"),
        ("float32", "float16"),
    ]
