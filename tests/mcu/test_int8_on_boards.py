"""An int8 model on a microcontroller: the keyword-spotting DS-CNN of mcu_models quantized by onnxruntime
(static, QDQ, per-channel weights), compiled for the board with integer kernels, run on the emulated board and
compared with onnxruntime's result for the same quantized model (within one output quantization step)."""

from __future__ import annotations

import mcu_models as M
import numpy as np
import pytest
from boards import on_boards
from quant_models import graph_kernels, onnxruntime_outputs, output_step, quantized_bytes

import kiln
from kiln.ops.matmul import SMALL_INTS

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("board", on_boards(["mps2-an386"]))
def test_int8_kws_matches_onnxruntime_on_the_board(board: str) -> None:
    path = quantized_bytes(M.kws_dscnn(), "kws_dscnn", "qdq-per-channel")
    kernels = graph_kernels(path, board)
    assert kernels and all(all(d in SMALL_INTS for d in dts) for _, dts, _ in kernels), kernels
    pkg = kiln.compile(path, board, name="kws_int8")
    mem = pkg.manifest["memory"]
    assert mem["flash"]["total"] <= mem["flash"]["limit"] and mem["ram"]["total"] <= mem["ram"]["limit"]
    # int8 weights: a quarter of the float model's (plus per-channel scales and int32 biases)
    float_weights = kiln.compile(M.kws_dscnn(), board, name="kws").manifest["weight_bytes"]
    assert pkg.manifest["weight_bytes"] < 0.4 * float_weights
    x = M.sample_input((1, 1, 49, 10), seed=3)
    with pkg.open_session(timeout=None) as s:
        y = s.run({"x": x})["y"]
    want = onnxruntime_outputs(path, {"x": x})["y"]
    step = output_step(path, "y", want)
    assert np.abs(y.astype(np.float64) - want).max() <= step * (1 + 1e-4)
