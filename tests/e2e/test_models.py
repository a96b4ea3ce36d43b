"""Real models end to end: import ONNX, compile for each target, run natively or under qemu-user, and compare
every output with onnxruntime (rtol 1e-3, atol 1e-4).

Light models are compared through their random-weights variant (which also exposes the pre-softmax logits);
the originals are compiled and run natively too. PyTorch-built models are exported to ONNX by tests/models.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import kiln
import models

RTOL, ATOL = 1e-3, 1e-4
EMULATED = ("aarch64-linux", "riscv64-linux")
ARMV7_MODELS = ("squeezenet", "shufflenet", "resnet50")


@functools.cache
def _reference(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from pathlib import Path

    x = models.inputs_for(Path(path))
    return x, models.onnxruntime_outputs(Path(path), x)


def _check(path: str, target: str) -> None:
    x, want = _reference(path)
    got = kiln.compile(path, target).run(x)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(
            got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=f"{path} on {target}: output {name}"
        )


def _light_cases() -> list:  # noqa: ANN202
    cases = []
    for m in models.LIGHT_MODELS:
        targets = ["x86_64-linux", *EMULATED] + (["armv7-linux"] if m in ARMV7_MODELS else [])
        heavy = m in ("vgg19", "densenet121", "resnet50", "inception_v2", "zfnet512")
        for t in targets:
            marks = [pytest.mark.slow] if heavy and t != "x86_64-linux" else []
            cases.append(pytest.param(m, t, marks=marks, id=f"{m}-{t}"))
    return cases


@pytest.mark.parametrize(("model", "target"), _light_cases())
def test_light_model_with_random_weights(model: str, target: str) -> None:
    _check(str(models.light_random_path(model)), target)


@pytest.mark.parametrize("model", models.LIGHT_MODELS)
def test_original_light_model_natively(model: str) -> None:
    _check(str(models.light_path(model)), "x86_64-linux")


@pytest.mark.slow
@pytest.mark.parametrize("model", [m for m in models.LIGHT_MODELS if m not in ARMV7_MODELS])
def test_light_model_compiles_for_armv7_and_rvv(model: str) -> None:
    for target in ("armv7-linux", "riscv64-linux-rvv"):
        pkg = kiln.compile(str(models.light_path(model)), target)
        assert pkg.manifest["target"]["name"] == target and "bin/runner" in pkg.files


@pytest.mark.parametrize("target", ["x86_64-linux", *EMULATED, "riscv64-linux-rvv", "armv7-linux"])
@pytest.mark.parametrize("model", models.TORCH_MODELS)
def test_pytorch_model(model: str, target: str) -> None:
    _check(str(models.torch_onnx_path(model)), target)
