"""The demo (examples/demo.py) does what it claims: a trained classifier, compiled and run through a local farm,
classifies held-out digits as well as onnxruntime does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.targets import get_target

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def _demo():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("kiln_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kiln_demo"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains a classifier and starts a farm: about a minute on a loaded machine
def test_trained_digits_classifier_through_the_farm(tmp_path: Path) -> None:
    demo = _demo()
    train_x, train_y, test_x, test_y = demo.digits()
    model = demo.train_classifier(train_x, train_y, tmp_path / "digits.onnx", epochs=10)
    images, labels = test_x[:120], test_y[:120]
    want = demo.onnxruntime_logits(model, images)
    assert (want.argmax(1) == labels).mean() > 0.8  # it learned: chance is 10%

    (result,) = demo.evaluate(model, [get_target("x86_64-linux")], images, labels, want)
    assert result.max_logit_diff < 1e-4
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = int((top2[:, 1] - top2[:, 0] > 1e-4).sum())  # images whose top class is not a near tie
    assert result.same_as_reference >= clear
    assert abs(result.accuracy - (want.argmax(1) == labels).mean()) <= (len(labels) - clear) / len(labels)
    assert result.latency_ms > 0
