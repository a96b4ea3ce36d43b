"""The benchmark set's real-size PyTorch models (tests/models.py BENCH_MODELS: ResNet-18, MobileNetV2,
EfficientNet-B0-, ConvNeXt-Tiny- and ViT-B/16-style nets at 224x224, a 6-layer encoder with an attention mask,
an MLP at batch 1 and 64), compiled natively for x86-64 and compared output by output with onnxruntime.

Each takes 0.04-17 GFLOPs and 6-330 MB of weights (30 s to minutes to export, compile and run on a loaded
machine), so all are ``slow``; the small models of tests/e2e/test_models.py cover the same operators quickly.
"""

from __future__ import annotations

import numpy as np
import pytest
import running

import kiln
import models

TARGET = "x86_64-linux"
# onnxruntime reorders the sums of the long reductions (K = 3072-4096) and of 12-20 stacked layers
RTOL, ATOL = 2e-3, 2e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", models.BENCH_MODELS)
def test_real_size_model_matches_onnxruntime(name: str) -> None:
    path = models.torch_onnx_path(name)
    x = models.inputs_for(path)
    want = models.onnxruntime_outputs(path, x)
    got = running.run(kiln.compile(str(path), TARGET), x)
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert np.abs(w).max() > 1e-3, f"{name}: output {k} is all but zero, so it cannot tell kernels apart"
        np.testing.assert_allclose(got[k], w, rtol=RTOL, atol=ATOL, err_msg=f"{name}: output {k}")
