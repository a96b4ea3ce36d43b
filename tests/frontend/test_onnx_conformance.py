"""ONNX's own per-operator test cases (``onnx.backend.test.case.node``) through ``from_onnx`` + ``interpret``.

Every case of every ONNX operator kiln imports runs here, except the ones listed in :data:`NOT_SUPPORTED`
with the reason. Inputs that kiln needs as constants (shapes, axes, pads, scales...) become initializers;
data inputs stay runtime parameters. The expected outputs are the ones ONNX ships with the case (computed by
its reference implementation), compared with the case's own tolerances.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kiln.frontend import from_onnx
from kiln.frontend.onnx import CONVERTERS
from kiln.ops.interpreter import interpret

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from onnx.backend.test.case.node import collect_testcases

    _CASES = {c.name: c for c in collect_testcases() if c.kind == "node"}

# Inputs after the first that kiln takes as static attributes (per ONNX operator); all inputs for the
# operators listed with None.
STATIC_INPUTS: dict[str, set[int] | None] = {
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Slice": {1, 2, 3, 4},
    "Pad": {1, 2, 3},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Clip": {1, 2},
    "Split": {1},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "ReduceMean": {1},
    "ReduceSum": {1},
    "ReduceMax": {1},
    "Dropout": {1, 2},
    "ConstantOfShape": None,
    "Range": None,
}

# Optional outputs kiln does not produce (the cases check the other outputs).
DROPPED_OUTPUTS = {"LayerNormalization": (1, 2)}

# Cases kiln does not support, by name pattern, with the reason (they are not run).
NOT_SUPPORTED = {
    r"(?i)_(u?int[24]|uint(16|32|64)|bfloat16|float8\w*|float4\w*|string)(_|$)": "element types kiln lacks",
    r"^test_(blackman|hamming|hann)window\w*_expanded|^test_center_crop_pad\w*_expanded": (
        "sizes computed from runtime inputs"
    ),
    r"^test_(max|average)pool_(1d|3d)": "1-D and 3-D pooling",
    r"^test_maxpool_with_argmax": "MaxPool's Indices output",
    r"^test_maxpool_2d_uint8": "uint8 pooling",
    r"^test_(training_dropout|dropout_default_mask)": "training-mode dropout",
    r"^test_batchnorm_\w+_training_mode": "training-mode batch normalization",
    r"^test_resize_\w*(cubic|tf_crop|antialias|half_pixel_symmetric)": "resize modes kiln does not implement",
    r"^test_(conv|convtranspose)_3d": "3-D convolution",
    r"^test_resize_downsample_scales_linear_align_corners$": (
        "align_corners with a scale whose output length is fractional: onnxruntime divides by the integer "
        "output length (as the ONNX spec text says), the ONNX reference by the fractional one; kiln follows "
        "onnxruntime"
    ),
    r"^test_reduce_max_empty_set": "max over an empty set",
    r"^test_gather_elements|^test_gathernd": "other gather operators",
    r"^test_identity_(sequence|opt)": "sequence and optional types",
    r"^test_split_to_sequence|^test_split_zero_size": "sequences, zero-size splits",
}


def _reason(name: str) -> str | None:
    for pattern, reason in NOT_SUPPORTED.items():
        if reason is not None and re.search(pattern, name):
            return reason
    return None


def _ops(case: object) -> set[str]:
    return {n.op_type for n in case.model.graph.node}  # type: ignore[attr-defined]


SUPPORTED = sorted(
    name for name, c in _CASES.items() if _ops(c) and _ops(c) <= set(CONVERTERS) and _reason(name) is None
)


def _bake(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Turn the inputs kiln needs as constants into initializers; return the model and the runtime feed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    static = set()
    for n in g.node:
        spec = STATIC_INPUTS.get(n.op_type, set())
        names = {name for i, name in enumerate(n.input) if spec is None or i in spec}
        static |= {j for j, vi in enumerate(g.input) if vi.name in names}
    feed = {}
    keep = []
    for j, (vi, x) in enumerate(zip(g.input, inputs, strict=False)):
        if j in static:
            g.initializer.append(numpy_helper.from_array(np.asarray(x), vi.name))
        else:
            feed[vi.name] = x
            keep.append(vi)
    del g.input[:]
    g.input.extend(keep)
    dropped = {n.output[i] for n in g.node for i in DROPPED_OUTPUTS.get(n.op_type, ()) if i < len(n.output)}
    outs = [o for o in g.output if o.name not in dropped]
    del g.output[:]
    g.output.extend(outs)
    return m, feed


def test_the_conformance_suite_covers_the_operators_kiln_imports() -> None:
    covered = set().union(*(_ops(_CASES[n]) for n in SUPPORTED))
    assert len(SUPPORTED) > 300
    for op in ("Resize", "Slice", "Pad", "Gather", "Softmax", "LRN", "MaxPool", "AveragePool", "Split"):
        assert op in covered


@pytest.mark.parametrize("name", SUPPORTED)
def test_onnx_node_case(name: str) -> None:
    case = _CASES[name]
    assert case.model is not None and case.data_sets is not None
    for inputs, outputs in case.data_sets:
        inputs = [numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x for x in inputs]
        outputs = [numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x for x in outputs]
        model, feed = _bake(case.model, inputs)
        mod = from_onnx(model)
        got = interpret(mod, feed)
        wanted = dict(zip((o.name for o in case.model.graph.output), outputs, strict=True))
        for vi in model.graph.output:
            want = wanted[vi.name]
            if not isinstance(want, np.ndarray):
                continue
            result = got[vi.name]
            assert result.shape == want.shape, f"{vi.name}: shape {result.shape}, expected {want.shape}"
            assert result.dtype == want.dtype, f"{vi.name}: dtype {result.dtype}, expected {want.dtype}"
            if want.dtype == bool or want.dtype.kind in "iu":
                np.testing.assert_array_equal(result, want, err_msg=vi.name)
            else:
                np.testing.assert_allclose(
                    result, want, rtol=max(case.rtol, 1e-5), atol=max(case.atol, 1e-6), err_msg=vi.name
                )
