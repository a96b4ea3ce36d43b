"""Whole models through the ONNX frontend: the light model zoo shipped with onnx and PyTorch-exported
networks (tests/models.py) import, and ``interpret`` of the imported module matches onnxruntime.

The light models' own weights are all 0.02 (every class gets the same probability), so their outputs are
compared on the random-weights variants, which also expose the pre-softmax logits.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest

import models
from kiln.frontend import from_onnx
from kiln.ir import Constant, Module
from kiln.ops.interpreter import interpret

RTOL, ATOL = 1e-4, 1e-5


@functools.cache
def _imported(path: str) -> Module:
    return from_onnx(path)


@functools.cache
def _reference(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = models.inputs_for(Path(path))
    return x, models.onnxruntime_outputs(Path(path), x)


def _compare(path: str) -> None:
    x, want = _reference(path)
    got = interpret(_imported(path), x)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        scale = float(np.abs(w).max()) or 1.0
        np.testing.assert_allclose(got[name], w, rtol=RTOL, atol=ATOL * scale, err_msg=f"{path}: {name}")


HEAVY = ("vgg19", "zfnet512", "bvlc_alexnet")  # 240-560 MB of weights: writing, loading, running them is slow


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=pytest.mark.slow) if m in HEAVY else m for m in models.LIGHT_MODELS]
)
def test_light_model_imports(name: str) -> None:
    path = models.light_path(name)
    onnx_model = onnx.load(str(path))
    mod = _imported(str(path))
    main = mod.main
    # every weight is ConstantOfShape(0.02) of a constant shape and the weights are listed as graph inputs:
    # all of them become constants, the one image input stays a parameter
    assert [p.name for p in main.params] == [models.inputs_for(path).popitem()[0]]
    assert main.params[0].type.shape == (1, 3, 224, 224)
    weights = [c for c in main.constants() if c.data.ndim == 4]
    assert weights and all(np.all(c.data == np.float32(0.02)) for c in weights if c.data.size > 1)
    assert not {n.op for n in main.nodes} & {"constant_of_shape", "shape", "range", "identity"}
    # node names are kept for errors and profiles
    onnx_names = {n.name or n.output[0] for n in onnx_model.graph.node}
    assert all(n.name in onnx_names for n in main.nodes)
    assert [v.name for v in main.outputs] == [o.name for o in onnx_model.graph.output]


# The large models (1-20 GFLOPs) are not interpreted here: tests/e2e/test_models.py compiles them and compares
# the compiled outputs with onnxruntime directly, which checks this import too.
SMALL_LIGHT_MODELS = [m for m in models.LIGHT_MODELS if m not in models.LARGE_LIGHT_MODELS]


@pytest.mark.parametrize("name", SMALL_LIGHT_MODELS)
def test_light_model_with_random_weights_matches_onnxruntime(name: str) -> None:
    _compare(str(models.light_random_path(name)))


@pytest.mark.parametrize("name", models.TORCH_MODELS)
def test_pytorch_model_matches_onnxruntime(name: str) -> None:
    path = str(models.torch_onnx_path(name))
    _compare(path)
    ops = {n.op for n in _imported(path).main.nodes}
    assert not ops & {"shape", "constant_of_shape", "range", "identity"}  # shape arithmetic folded away


def test_transformer_uses_layer_norm_and_softmax() -> None:
    ops = {n.op for n in _imported(str(models.torch_onnx_path("transformer"))).main.nodes}
    assert {"layer_norm", "softmax", "matmul", "transpose", "reshape"} <= ops


def test_cnn_batch_norms_are_folded_by_the_exporter_or_imported() -> None:
    for name in ("resnet18ish", "mobilenetv2ish"):
        main = _imported(str(models.torch_onnx_path(name))).main
        assert {"conv2d", "global_avg_pool2d", "matmul"} <= {n.op for n in main.nodes}
        assert all(isinstance(n.inputs[1], Constant) for n in main.nodes if n.op == "conv2d")
