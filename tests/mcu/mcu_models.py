"""Microcontroller-sized models for the board tests, built with PyTorch (fixed seeds) and exported to ONNX:

* ``kws_dscnn``: a keyword-spotting DS-CNN (the "DS-CNN small" shape of Hello Edge: a 10x4 stride-2
  convolution to 64 channels, four depthwise-separable 3x3 blocks, global average pooling, 12 classes) on a
  49x10 MFCC input;
* ``mlp``: a 3-layer perceptron on the same 490 features;
* ``person_detect``: a MobileNet-v1-style person detector on a 96x96 grayscale image (the Visual Wake Words
  shape; ``alpha`` scales its width so that it fits a board's flash).

BatchNorm layers have random statistics and are folded by kiln; onnxruntime is the oracle.
"""

from __future__ import annotations

import functools
import io

import numpy as np


def _export(model, shape: tuple[int, ...]) -> bytes:
    import torch

    model.eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            torch.zeros(shape),
            buf,
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


def _bn(torch, c: int):
    bn = torch.nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


def _dw_block(torch, cin: int, cout: int, stride: int):
    nn = torch.nn
    return [
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        _bn(torch, cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False),
        _bn(torch, cout),
        nn.ReLU(),
    ]


@functools.cache
def kws_dscnn(channels: int = 64, blocks: int = 4) -> bytes:
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    layers = [nn.Conv2d(1, channels, (10, 4), (2, 2), (5, 1), bias=False), _bn(torch, channels), nn.ReLU()]
    for _ in range(blocks):
        layers += _dw_block(torch, channels, channels, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 12)]
    return _export(nn.Sequential(*layers), (1, 1, 49, 10))


@functools.cache
def mlp() -> bytes:
    import torch

    torch.manual_seed(1)
    nn = torch.nn
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(490, 144), nn.ReLU(), nn.Linear(144, 144), nn.ReLU(), nn.Linear(144, 12)
    )
    return _export(model, (1, 1, 49, 10))


#: MobileNet v1 (channels at alpha = 1, stride) after the first 3x3 stride-2 convolution.
MOBILENET_V1 = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)


@functools.cache
def person_detect(alpha: float = 0.25) -> bytes:
    import torch

    torch.manual_seed(2)
    nn = torch.nn
    width = [max(8, int(c * alpha)) for c, _ in MOBILENET_V1]
    first = max(8, int(32 * alpha))
    layers = [nn.Conv2d(1, first, 3, 2, 1, bias=False), _bn(torch, first), nn.ReLU()]
    cin = first
    for c, (_, stride) in zip(width, MOBILENET_V1, strict=True):
        layers += _dw_block(torch, cin, c, stride)
        cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 2)]
    return _export(nn.Sequential(*layers), (1, 1, 96, 96))


def reference(model: bytes, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for input ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]  # type: ignore[no-any-return]


def sample_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
