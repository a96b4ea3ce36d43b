"""Real models end to end: import ONNX, compile for a target, run natively or under qemu-user, and compare
every output with onnxruntime (rtol 1e-3, atol 1e-4). Every model compiled here is also run.

* Natively (x86-64): every light model of the ONNX zoo through its random-weights variant (the shipped
  originals have the same graphs with every weight 0.02, so their softmax is nearly uniform and a wrong kernel
  could still "match": they are not compiled at all); the large ones (Inception, ResNet-50, VGG/AlexNet/ZFNet,
  DenseNet) are ``slow``. The PyTorch-built models (exported to ONNX by tests/models.py).
* Under qemu-user (AArch64, Armv7, RV64 scalar and RVV), all ``slow``: one light model per family, each on some
  of the emulated targets and every target by several models (:func:`_spread`), so emulator time goes to
  distinct cases rather than the same model four times. SqueezeNet and ShuffleNet whole; the light variants of
  Inception-v1, DenseNet-121 and VGG-19 (their own layers on a smaller image, tests/models.py LIGHT_VARIANTS;
  natively too); ResNet, MobileNet, an MLP and a transformer through the PyTorch models. The large models
  themselves run natively only: under emulation one of them takes minutes, many more on a loaded machine.

The fast tier (``-m "not slow"``) keeps the native runs of the small light models (random weights) and the
PyTorch models.
Emulated runs have no wall-clock limit per call (tests/running.py).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import running

import kiln
import models

RTOL, ATOL = 1e-3, 1e-4
NATIVE = "x86_64-linux"
EMULATED = ("aarch64-linux", "armv7-linux", "riscv64-linux", "riscv64-linux-rvv")
LARGE = models.LARGE_LIGHT_MODELS  # natively only, slow
SMALL = tuple(m for m in models.LIGHT_MODELS if m not in LARGE)  # under 1 GFLOP: whole under emulation too
QEMU = (pytest.mark.qemu, pytest.mark.slow)


@functools.cache
def _reference(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = models.inputs_for(Path(path))
    return x, models.onnxruntime_outputs(Path(path), x)


def _check(path: str, target: str) -> None:
    x, want = _reference(path)
    got = running.run(kiln.compile(path, target), x)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(
            got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=f"{path} on {target}: output {name}"
        )


def _param(model: str, target: str, *marks: pytest.MarkDecorator) -> object:
    if target != NATIVE:
        marks = (*marks, *QEMU)
    return pytest.param(model, target, marks=marks, id=f"{model}-{target}")


def _spread(names: list[str] | tuple[str, ...], per_model: int) -> list[tuple[str, str]]:
    """(model, emulated target) pairs: each model on ``per_model`` targets, taken round-robin over the sorted
    names so that every emulated target gets its share."""
    order = sorted(names)
    return [
        (m, EMULATED[(i * per_model + k) % len(EMULATED)])
        for i, m in enumerate(order)
        for k in range(per_model)
    ]


def _native_light(model: str) -> object:
    if model not in LARGE:
        return _param(model, NATIVE)
    # one worker draws the random weights (VGG-19: 550 MB, 40 s) for here and tests/frontend
    return _param(model, NATIVE, pytest.mark.slow, pytest.mark.xdist_group(f"light-{model}"))


@pytest.mark.parametrize(
    ("model", "target"),
    [_native_light(m) for m in models.LIGHT_MODELS] + [_param(m, t) for m, t in _spread(SMALL, 2)],
)
def test_light_model_with_random_weights(model: str, target: str) -> None:
    _check(str(models.light_random_path(model)), target)


@pytest.mark.parametrize(
    ("model", "target"),
    [_param(m, NATIVE, pytest.mark.slow) for m in sorted(models.LIGHT_VARIANTS)]
    + [_param(m, t) for m, t in _spread(tuple(models.LIGHT_VARIANTS), 1)],
)
def test_light_variant_of_a_large_model(model: str, target: str) -> None:
    _check(str(models.light_variant_path(model)), target)


@pytest.mark.parametrize(
    ("model", "target"),
    [_param(m, NATIVE) for m in models.TORCH_MODELS]
    + [_param(m, t) for m, t in _spread(models.TORCH_MODELS, 2)],
)
def test_pytorch_model(model: str, target: str) -> None:
    _check(str(models.torch_onnx_path(model)), target)
