"""from_onnx's rules: what becomes a constant, a parameter or a node; what folds away at import; how
unsupported models are reported."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from kiln.frontend import ModelLoadError, UnsupportedOperatorError, from_onnx
from kiln.frontend.onnx import ImportErrorInNode
from kiln.ir import Constant, Sym
from kiln.ops.interpreter import interpret


def _model(nodes, inputs, outputs, inits=(), opset=17):  # noqa: ANN001, ANN202
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _vi(name: str, shape: tuple | None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


# ------------------------------------------------------------------------------------------------ errors
def test_unsupported_operators_are_all_listed_with_their_nodes() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Multinomial", ["a"], ["b"], name="hm1"),
        helper.make_node("RandomNormalLike", ["b", "k"], ["c"], name="top"),
        helper.make_node("Multinomial", ["c"], ["d"], name="hm2"),
        helper.make_node("Mystery", ["d"], ["e"], name="custom", domain="com.example"),
        helper.make_node("Bernoulli", ["e"], ["y"]),  # unnamed: reported by its output
    ]
    m = _model(nodes, [_vi("x", (2, 3))], [_vi("y", None)], [_init("k", np.array([1], np.int64))])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOperatorError) as err:
        from_onnx(m)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    for op, nodes_ in (
        ("Multinomial", ("hm1", "hm2")),
        ("RandomNormalLike", ("top",)),
        ("com.example.Mystery", ("custom",)),
        ("Bernoulli", ("y",)),
    ):
        assert op in msg and all(n in msg for n in nodes_), (op, msg)
    assert "Relu" not in msg


def test_every_node_of_an_unsupported_operator_is_named() -> None:
    nodes = [helper.make_node("Bernoulli", [f"v{i}"], [f"v{i + 1}"], name=f"hardmax_{i}") for i in range(25)]
    m = _model(nodes, [_vi("v0", (2, 3))], [_vi("v25", None)])
    with pytest.raises(UnsupportedOperatorError, match="hardmax_24") as err:
        from_onnx(m)
    assert all(f"hardmax_{i}" in str(err.value) for i in range(25))


@pytest.mark.parametrize(
    ("op", "why"),
    [
        ("Adam", "training-only"),
        ("StringNormalizer", "strings"),
        ("SequenceLength", "sequence or optional"),
        ("RandomUniformLike", "random numbers"),
        ("ImageDecoder", "decodes image files"),
    ],
)
def test_unsupported_categories_say_why(op: str, why: str) -> None:
    m = _model([helper.make_node(op, ["x"], ["y"], name="the_node")], [_vi("x", (2, 3))], [_vi("y", None)])
    with pytest.raises(
        UnsupportedOperatorError, match=f"{op} \\(nodes: the_node\\): not supported, because .*{why}"
    ):
        from_onnx(m)


def test_truncated_file_is_a_clear_load_error(tmp_path: Path) -> None:
    data = models.light_path("squeezenet").read_bytes()
    bad = tmp_path / "squeezenet_truncated.onnx"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="squeezenet_truncated.onnx.*not a valid ONNX model"):
        from_onnx(bad)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        from_onnx(data[:1000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot protobuf at all" * 10)
    with pytest.raises(ModelLoadError, match="garbage.onnx"):
        from_onnx(str(garbage))
    with pytest.raises(ModelLoadError, match="no such file"):
        from_onnx(tmp_path / "missing.onnx")


def test_shape_input_computed_at_run_time_names_the_node() -> None:
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="the_reshape")]
    m = _model(nodes, [_vi("x", (2, 6)), _vi("s", (2,), TensorProto.INT64)], [_vi("y", None)])
    with pytest.raises(ImportErrorInNode, match="the_reshape.*constant"):
        from_onnx(m)


def test_an_unsupported_optional_output_fails_only_when_used() -> None:
    ln = helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean", "inv"], name="ln")
    inits = [_init("s", np.ones(4, np.float32))]
    unused = _model([ln], [_vi("x", (2, 4))], [_vi("y", None)], inits)
    assert [n.op for n in from_onnx(unused).main.nodes] == ["layer_norm"]
    used = _model([ln], [_vi("x", (2, 4))], [_vi("y", None), _vi("mean", None)], inits)
    with pytest.raises(ImportErrorInNode, match="'mean'.*output 1 of LayerNormalization node 'ln'"):
        from_onnx(used)


def test_training_mode_dropout_is_rejected() -> None:
    node = helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="drop")
    inits = [_init("r", np.array(0.5, np.float32)), _init("t", np.array(True))]
    with pytest.raises(ImportErrorInNode, match="drop.*training mode"):
        from_onnx(_model([node], [_vi("x", (2, 4))], [_vi("y", None)], inits))


# ---------------------------------------------------------------------------------- constants and params
def test_old_ir_initializers_listed_as_inputs_are_constants() -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    m = _model([node], [_vi("x", (2, 3)), _vi("w", (3, 4))], [_vi("y", None)], [_init("w", w)])
    m.ir_version = 3
    main = from_onnx(m).main
    assert [p.name for p in main.params] == ["x"]
    (n,) = main.nodes
    assert isinstance(n.inputs[1], Constant) and np.array_equal(n.inputs[1].data, w)


def test_symbolic_dims_become_syms_unless_bound() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    m = _model([node], [_vi("x", ("batch", 3, None))], [_vi("y", None)])
    (x,) = from_onnx(m).main.params
    assert x.type.shape[:2] == (Sym("batch"), 3) and isinstance(x.type.shape[2], Sym)
    (x,) = from_onnx(m, shapes={"x": (4, 3, 5)}).main.params
    assert x.type.shape == (4, 3, 5)
    with pytest.raises(ValueError, match="unknown inputs.*'z'"):
        from_onnx(m, shapes={"z": (1,)})


def test_dynamic_batch_pytorch_mlp() -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
        torch.nn.Softmax(dim=-1),
    ).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(2, 8),),
            buf,  # type: ignore[arg-type]
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            opset_version=17,
        )
    data = buf.getvalue()
    mod = from_onnx(data)
    assert mod.main.params[0].type.shape == (Sym("n"), 8)
    assert mod.main.outputs[0].type.shape == (Sym("n"), 3)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    want = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(interpret(mod, {"x": x})["y"], want, rtol=1e-5, atol=1e-6)
    bound = from_onnx(data, shapes={"x": (5, 8)}, name="mlp5")
    assert bound.main.outputs[0].type.shape == (5, 3) and bound.main.attrs["model_name"] == "mlp5"
    np.testing.assert_allclose(interpret(bound, {"x": x})["y"], want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- rewrites
def test_nodes_out_of_dataflow_order_are_imported_in_it() -> None:
    """ONNX wants nodes sorted, onnxruntime takes any order: a consumer listed before its producer, and an If
    whose branch reads a value computed by a node listed after it, import as if sorted."""
    branch = lambda name, op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["h"], [f"{name}_out"])], name, [], [_vi(f"{name}_out", (2, 3))]
    )
    nodes = [
        helper.make_node("Add", ["r", "s"], ["y"]),
        helper.make_node(
            "If", ["c"], ["s"], then_branch=branch("pos", "Relu"), else_branch=branch("neg", "Neg")
        ),
        helper.make_node("Mul", ["x", "x"], ["h"]),
        helper.make_node("Relu", ["x"], ["r"]),
    ]
    m = _model(nodes, [_vi("x", (2, 3)), _vi("c", (), TensorProto.BOOL)], [_vi("y", (2, 3))])
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    mod = from_onnx(m)
    for c in (True, False):
        got = interpret(mod, {"x": x, "c": np.array(c)})["y"]
        np.testing.assert_array_equal(got, np.maximum(x, 0) + (x * x if c else -x * x))


def test_float16_model_with_input_casts_appended_last() -> None:
    """onnxruntime's float16 conversion (keep_io_types: float32 inputs and outputs) appends the inputs' casts
    at the end of the graph, after the nodes that use them."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["y"])]
    m = _model(nodes, [_vi("x", (2, 4))], [_vi("y", (2, 3))], [_init("w", w)])
    m = convert_float_to_float16(m, keep_io_types=True)
    assert [n.op_type for n in m.graph.node][-1] == "Cast"  # the converter's order, not a sorted one
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    want = np.tanh(x.astype(np.float16).astype(np.float32) @ w.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(interpret(from_onnx(m), {"x": x})["y"], want, rtol=2e-3, atol=2e-3)


def test_identity_and_inference_dropout_are_removed() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a"], ["b", "mask"]),
        helper.make_node("Relu", ["b"], ["y"], name="relu"),
    ]
    main = from_onnx(_model(nodes, [_vi("x", (2, 3))], [_vi("y", None)], opset=12)).main
    assert [(n.op, n.name) for n in main.nodes] == [("relu", "relu")]
    assert main.nodes[0].inputs[0] is main.params[0]


def test_gemm_becomes_matmul_with_weights_transposed_at_import() -> None:
    w = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    b = np.arange(5, dtype=np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=2.0, beta=0.5, name="fc")
    m = _model([node], [_vi("x", (3, 4))], [_vi("y", None)], [_init("w", w), _init("b", b)])
    main = from_onnx(m).main
    assert [n.op for n in main.nodes] == ["matmul", "add"] and all(n.name == "fc" for n in main.nodes)
    weight = main.nodes[0].inputs[1]
    assert isinstance(weight, Constant) and np.allclose(weight.data, 2.0 * w.T)
    assert isinstance(main.nodes[1].inputs[1], Constant) and np.allclose(
        main.nodes[1].inputs[1].data, 0.5 * b
    )


def test_shape_arithmetic_folds_at_import() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, ConstantOfShape, Range and Cast of constants."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node(
            "ConstantOfShape", ["width"], ["ones"], value=numpy_helper.from_array(np.array([1.0], np.float32))
        ),
        helper.make_node("Range", ["r0", "r1", "r2"], ["ramp_i"]),
        helper.make_node("Cast", ["ramp_i"], ["ramp"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ones", "ramp"], ["scale"]),
        helper.make_node("Mul", ["flat", "scale"], ["y"], name="the_mul"),
    ]
    inits = [
        _init("zero", np.array(0, np.int64)),
        _init("zero1", np.array([0], np.int64)),
        _init("minus1", np.array([-1], np.int64)),
        _init("width", np.array([12], np.int64)),
        _init("r0", np.array(0, np.int64)),
        _init("r1", np.array(12, np.int64)),
        _init("r2", np.array(1, np.int64)),
    ]
    m = _model(nodes, [_vi("x", (2, 3, 4))], [_vi("y", None)], inits)
    main = from_onnx(m).main
    assert [n.op for n in main.nodes] == ["reshape", "mul"]
    assert main.nodes[0].attrs["shape"] == (2, 12)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(interpret(from_onnx(m), {"x": x})["y"], x.reshape(2, 12) * np.arange(12))


def test_shape_of_a_symbolic_tensor_stays_and_interprets() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ConstantOfShape", ["s"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", ("n", 3))], [_vi("y", None)])
    with pytest.raises(ImportErrorInNode, match="constant_of_shape"):
        from_onnx(m)  # its output shape is data: not importable while n is unknown
    m2 = _model(nodes[:1], [_vi("x", ("n", 3))], [_vi("s", None)])
    mod = from_onnx(m2)
    assert [n.op for n in mod.main.nodes] == ["shape"]
    assert list(interpret(mod, {"x": np.zeros((7, 3), np.float32)})["s"]) == [7, 3]
    assert [n.op for n in from_onnx(m, shapes={"x": (7, 3)}).main.nodes] == []  # folds once bound


def test_sum_becomes_a_chain_of_adds_and_batchnorm_maps_to_batch_norm() -> None:
    c = 3
    nodes = [
        helper.make_node("Sum", ["a", "b", "c"], ["s"], name="sum"),
        helper.make_node(
            "BatchNormalization", ["s", "g", "beta", "mu", "var"], ["y"], name="bn", epsilon=1e-3
        ),
    ]
    inits = [_init(k, np.linspace(0.5, 1.5, c).astype(np.float32)) for k in ("g", "beta", "mu", "var")]
    m = _model(nodes, [_vi(k, (1, c, 2, 2)) for k in "abc"], [_vi("y", None)], inits, opset=15)
    main = from_onnx(m).main
    assert [n.op for n in main.nodes] == ["add", "add", "batch_norm"]
    assert main.nodes[-1].attrs["epsilon"] == pytest.approx(1e-3)


def test_upsample_and_opset10_resize() -> None:
    inits = [_init("sc", np.array([1, 1, 2, 2], np.float32))]
    for op, opset in (("Upsample", 9), ("Resize", 10)):
        node = helper.make_node(op, ["x", "sc"], ["y"], mode="nearest")
        main = from_onnx(_model([node], [_vi("x", (1, 2, 3, 3))], [_vi("y", None)], inits, opset=opset)).main
        (n,) = main.nodes
        assert n.op == "resize" and n.attrs["coordinate_transformation_mode"] == "asymmetric"
        assert main.outputs[0].type.shape == (1, 2, 6, 6)


def test_importing_twice_gives_the_same_module_text() -> None:
    """Temporary value names are numbered per import, not per importer object, so a model imports to the same
    IR every time (packages and printed IR are reproducible)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [2, 8])
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    texts = [str(from_onnx(model)) for _ in range(3)]
    assert "__" in texts[0]  # the converter does use temporary names
    assert texts[0] == texts[1] == texts[2]


def test_bfloat16_weights_and_casts_compute_in_float32() -> None:
    """A model with bfloat16 weights (Cast to float before use, a Cast to bfloat16 on the way): the weights'
    exact bfloat16 values, widened, in float32 arithmetic; NumPy in float64 is the oracle."""
    import ml_dtypes

    import kiln

    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3)).astype(ml_dtypes.bfloat16)
    nodes = [
        helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "wf"], ["m"]),
        helper.make_node("Cast", ["m"], ["y"], to=TensorProto.BFLOAT16),
    ]
    init = helper.make_tensor("w", TensorProto.BFLOAT16, [4, 3], w.astype(np.float32).reshape(-1).tolist())
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 3])],
        [init],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 4)).astype(np.float32)
    got = kiln.compile(model.SerializeToString(), "x86_64-linux").run({"x": x})["y"]
    assert got.dtype == np.float32  # bfloat16 at the interface becomes float32 (NumPy has no bfloat16)
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.astype(np.float64), rtol=1e-6, atol=1e-6)
