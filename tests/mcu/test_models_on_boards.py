"""The acceptance models on every board, against onnxruntime (fp32, 1e-4): a keyword-spotting DS-CNN on
49x10 MFCCs, a small MLP, and a MobileNet-style person detector on 96x96 grayscale (as wide as fits the
board's flash). Each compiles with kiln.compile, is checked to fit, and runs on the emulated board."""

from __future__ import annotations

import functools

import mcu_models as M
import numpy as np
import pytest
from boards import on_boards
from onnx import TensorProto, helper

import kiln
from kiln.package import Package

pytestmark = pytest.mark.qemu

#: Person-detector width per board: alpha 0.25 (the Visual Wake Words model, 0.84 MB of fp32 weights) where
#: it fits, narrower on the AN547's 512 KiB of ITCM.
PERSON_ALPHA = {"mps3-an547": 0.125}


@functools.cache
def model(name: str, board: str) -> tuple[bytes, tuple[int, ...]]:
    if name == "kws":
        return M.kws_dscnn(), (1, 1, 49, 10)
    if name == "mlp":
        return M.mlp(), (1, 1, 49, 10)
    return M.person_detect(PERSON_ALPHA.get(board, 0.25)), (1, 1, 96, 96)


def check_on_board(name: str, board: str) -> Package:
    onnx_bytes, shape = model(name, board)
    pkg = kiln.compile(onnx_bytes, board, name=name)
    mem = pkg.manifest["memory"]
    assert mem["flash"]["total"] <= mem["flash"]["limit"] and mem["ram"]["total"] <= mem["ram"]["limit"]
    assert mem["flash"]["weights"] >= pkg.manifest["weight_bytes"] > 0
    x = M.sample_input(shape)
    with pkg.open_session(timeout=None) as s:
        y = s.run({"x": x})["y"]
    np.testing.assert_allclose(y, M.reference(onnx_bytes, x), rtol=1e-4, atol=1e-4)
    return pkg


@pytest.mark.parametrize("board", on_boards())
@pytest.mark.parametrize("name", ["kws", "mlp"])
def test_kws_and_mlp_match_onnxruntime_on_the_board(name: str, board: str) -> None:
    pkg = check_on_board(name, board)
    if name == "kws":  # the arena is the plan's, in RAM; the weights are in flash
        assert pkg.manifest["memory"]["ram"]["arena"] == pkg.manifest["arena_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("board", on_boards())
def test_person_detector_matches_onnxruntime_on_the_board(board: str) -> None:
    check_on_board("person", board)


@pytest.mark.parametrize("board", on_boards())
def test_int64_inputs_convert_on_the_board(board: str) -> None:
    """Token ids and masks come as int64: their conversions to and from float are library calls on 32-bit
    cores, which must link against the board's compiler_rt (an encoder's mask once failed to link)."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "half"], ["y"]),
        helper.make_node("Cast", ["y"], ["back"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "ids",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("back", TensorProto.INT64, [1, 8]),
        ],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ids = np.array([[-(2**40) - 3, -7, -1, 0, 1, 5, 3**20, 2**50 + 2]], np.int64)
    with kiln.compile(m.SerializeToString(), board, name="ids").open_session(timeout=None) as s:
        out = s.run({"ids": ids})
    want = ids.astype(np.float32) * np.float32(0.5)
    np.testing.assert_array_equal(out["y"], want)
    np.testing.assert_array_equal(out["back"], want.astype(np.int64))
