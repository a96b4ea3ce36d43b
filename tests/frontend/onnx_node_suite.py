"""ONNX's own node test cases (``onnx.backend.test.case.node``, shipped with the onnx package) for kiln.

One place that decides, for every case, whether it is *in scope* or *excluded* (with the reason), how its
inputs are fed (the inputs kiln takes as compile-time constants become initializers), and how its outputs are
compared. Used by ``tests/frontend/test_onnx_conformance.py`` (through the NumPy interpreter),
``tests/frontend/test_onnx_node_compiled.py`` (compiled, natively and a sample under QEMU) and
``scripts/onnx-node-report`` (every case compiled for a target, counts printed).

Excluded are only cases kiln does not aim to run: the operator categories ONNX inference backends leave out
(training, strings, sequences and optionals, random numbers, image decoding, the ai.onnx.ml and preview
domains), element types outside kiln's type set, and the listed semantic gaps in :data:`NOT_SUPPORTED`.
Everything else is in scope, including operators kiln does not import yet: those count as failures.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from kiln.frontend.onnx import ONNX_DTYPES

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from onnx.backend.test.case.node import collect_testcases

    CASES: dict[str, Any] = {c.name: c for c in collect_testcases() if c.kind == "node"}

# Operator categories kiln does not support by design (the importer says so, naming the node).
CATEGORIES: dict[str, set[str]] = {
    "training-only operator": {
        "Adagrad",
        "Adam",
        "Momentum",
        "Gradient",
        "NegativeLogLikelihoodLoss",
        "SoftmaxCrossEntropyLoss",
    },
    "string operator": {
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "RegexFullMatch",
        "TfIdfVectorizer",
        "LabelEncoder",
    },
    "sequence- or optional-typed operator": {
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SplitToSequence",
        "ConcatFromSequence",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
    },
    "random-number operator": {
        "Bernoulli",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
    },
    "image-decoding operator": {"ImageDecoder"},
    "ai.onnx.ml operator": {"ArrayFeatureExtractor", "Binarizer", "TreeEnsemble"},
}

# Inputs after the first that kiln takes as compile-time constants (per ONNX operator); all inputs for the
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
    "ReduceMin": {1},
    "ReduceProd": {1},
    "ReduceL1": {1},
    "ReduceL2": {1},
    "ReduceLogSum": {1},
    "ReduceLogSumExp": {1},
    "ReduceSumSquare": {1},
    "Dropout": {1, 2},
    "TopK": {1},
    "CumSum": {1},
    "CumProd": {1},
    "OneHot": {1},
    "Trilu": {1},
    "Compress": {1},
    "CenterCropPad": {1},
    "AffineGrid": {1},
    "NonMaxSuppression": {2, 3, 4},  # max_output_boxes_per_class, iou_threshold, score_threshold
    "DFT": {1, 2},  # dft_length, axis (opset 20)
    "Col2Im": {1, 2},
    "STFT": {1, 3},  # frame_step, frame_length
    "MelWeightMatrix": None,
    "MaxUnpool": {2},
    # the trip count and the initial condition: constants, so the loop unrolls (a run-time trip count makes it
    # a real loop, but test_loop11's scan output then has no compile-time size)
    "Loop": {0, 1},
    "HannWindow": None,
    "HammingWindow": None,
    "BlackmanWindow": None,
    "ConstantOfShape": None,
    "Range": None,
}

# Optional outputs kiln does not produce (the cases check the other outputs).
DROPPED_OUTPUTS = {"LayerNormalization": (1, 2)}

# ONNX element types kiln's compiler has (TensorProto codes): the importer's own table, less bfloat16, which
# kiln computes in float32 and returns as float32 (the cases compare bfloat16 tensors).
KILN_ELEM_TYPES = {k: v for k, v in ONNX_DTYPES.items() if k != onnx.TensorProto.BFLOAT16}

# Cases kiln does not support, by name pattern, with the reason (they are not run).
NOT_SUPPORTED = {
    r"^test_((blackman|hamming|hann)window|center_crop_pad|affine_grid|range)\w*_expanded": (
        "sizes computed from run-time inputs"
    ),
    r"^test_(max|average)pool_(1d|3d)|^test_lppool_(1d|3d)": "1-D and 3-D pooling",
    r"^test_maxpool_with_argmax": "MaxPool's Indices output",
    r"^test_(training_dropout|dropout_default_mask)": "training-mode dropout",
    r"^test_batchnorm_\w+_training_mode": "training-mode batch normalization",
    r"^test_resize_\w*(cubic|tf_crop|antialias|half_pixel_symmetric)": "resize modes kiln does not implement",
    r"^test_(conv|convtranspose)_3d|^test_convtranspose_autopad_same_3d": "3-D convolution",
    r"^test_resize_downsample_scales_linear_align_corners$": (
        "align_corners with a scale whose output length is fractional: onnxruntime divides by the integer "
        "output length (as the ONNX spec text says), the ONNX reference by the fractional one; kiln follows "
        "onnxruntime"
    ),
    r"^test_reduce_\w+_empty_set": "reductions over empty sets (zero-size tensors)",
    r"^test_identity_(sequence|opt)": "sequence and optional types",
    r"^test_split_to_sequence|^test_split_zero_size|^test_slice_start_out_of_bounds": "zero-size tensors",
    r"^test_if_(seq|opt)|^test_loop\d+_seq|^test_sequence_|^test_optional_": "sequence and optional types",
    r"^test_cast_(FLOAT|DOUBLE|FLOAT16)_to_STRING|^test_cast_STRING|^test_castlike_\w*STRING": "strings",
}


# In-scope cases kiln fails today, with the reason (tests/frontend/test_onnx_node_compiled.py expects them to
# fail, strictly). Regenerate the list from `scripts/onnx-node-report --out FILE` when it changes.
KNOWN_FAILURES: dict[str, str] = {}


@dataclass(frozen=True)
class Verdict:
    name: str
    excluded: str | None  # the reason, or None for an in-scope case


def _ops(case: Any) -> set[str]:
    return {n.op_type for n in case.model.graph.node}


def _domains(case: Any) -> set[str]:
    return {n.domain for n in case.model.graph.node} - {"", "ai.onnx"}


def _elem_types(model: onnx.ModelProto) -> set[int]:
    g = model.graph
    types = {vi.type.tensor_type.elem_type for vi in [*g.input, *g.output] if vi.type.HasField("tensor_type")}
    types |= {t.data_type for t in g.initializer}
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and n.op_type == "Cast":
                types.add(a.i)
            if a.type == onnx.AttributeProto.TENSOR:
                types.add(a.t.data_type)
    return types


def _non_tensor_io(model: onnx.ModelProto) -> bool:
    g = model.graph
    return any(not vi.type.HasField("tensor_type") for vi in [*g.input, *g.output])


def classify(name: str) -> Verdict:
    case = CASES[name]
    ops = _ops(case)
    for reason, members in CATEGORIES.items():
        hit = sorted(ops & members)
        if hit:
            return Verdict(name, f"{reason} ({', '.join(hit)})")
    if _domains(case):
        return Verdict(name, f"non-standard domain ({', '.join(sorted(_domains(case)))})")
    if _non_tensor_io(case.model):
        return Verdict(name, "sequence- or optional-typed inputs or outputs")
    for pattern, reason in NOT_SUPPORTED.items():
        if re.search(pattern, name):
            return Verdict(name, reason)
    odd = sorted(_elem_types(case.model) - set(KILN_ELEM_TYPES) - {0})
    if odd:
        names = ", ".join(onnx.TensorProto.DataType.Name(t).lower() for t in odd)
        return Verdict(name, f"element types outside kiln's type set ({names})")
    return Verdict(name, None)


VERDICTS: dict[str, Verdict] = {n: classify(n) for n in sorted(CASES)}
IN_SCOPE: list[str] = [n for n, v in VERDICTS.items() if v.excluded is None]


def data_sets(name: str) -> list[tuple[list[np.ndarray], list[Any]]]:
    case = CASES[name]

    def arr(x: Any) -> Any:
        return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x

    return [([arr(x) for x in ins], [arr(y) for y in outs]) for ins, outs in case.data_sets]


def bake(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Turn the inputs kiln needs as constants into initializers; return the model and the run-time feed."""
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


# Operators whose result size depends on the values: kiln gives them a bounded output (the largest size,
# the real entries first, then padding; see kiln.ops.selection). Per ONNX operator and output index: the axis
# the padding is along and the padding value.
BOUNDED_OUTPUTS: dict[str, dict[int, tuple[int, int]]] = {
    "NonZero": {0: (1, -1)},
    "NonMaxSuppression": {0: (0, -1)},
    "Unique": {0: (0, 0), 1: (0, -1), 3: (0, 0)},  # Y along its axis (attribute), indices, counts
}


def _unpad(model: onnx.ModelProto, got: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``got`` with the bounded outputs cut to their real entries, after checking that the rest is padding."""
    out = {k: np.asarray(v) for k, v in got.items()}
    for node in model.graph.node:
        spec = BOUNDED_OUTPUTS.get(node.op_type, {})
        if not spec:
            continue
        count: int | None = None
        if node.op_type == "Unique":  # the count: the real first-occurrence indices (or counts)
            for k, pad in ((1, -1), (3, 0)):
                if len(node.output) > k and node.output[k] in out:
                    count = int(np.count_nonzero(out[node.output[k]] != pad))
                    break
        for k, (axis, pad) in spec.items():
            if k >= len(node.output) or node.output[k] not in out:
                continue
            r = out[node.output[k]]
            if node.op_type == "Unique" and k == 0:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                axis = int(attrs["axis"]) % r.ndim if "axis" in attrs else 0
            n = count
            if n is None:  # NonZero, NonMaxSuppression: -1 never is a real index
                lead = np.take(r, 0, axis=1 - axis) if r.ndim == 2 else r
                n = int(np.count_nonzero(lead != pad))
            head, tail = np.split(r, [n], axis=axis)
            assert np.all(tail == pad), f"{node.output[k]}: the entries after the first {n} are not all {pad}"
            out[node.output[k]] = np.ascontiguousarray(head)
    return out


def compare(name: str, model: onnx.ModelProto, got: Mapping[str, np.ndarray], outputs: list[Any]) -> None:
    """Assert that ``got`` holds the expected outputs (dtype and shape exactly; integers exactly; floats
    within the case's tolerances, NaN where NaN is expected); bounded outputs are compared without their
    padding (checked to be padding)."""
    case = CASES[name]
    wanted = dict(zip((o.name for o in case.model.graph.output), outputs, strict=True))
    got = _unpad(model, got)
    for vi in model.graph.output:
        want = wanted[vi.name]
        if not isinstance(want, np.ndarray):
            continue
        result = np.asarray(got[vi.name])
        assert result.shape == want.shape, f"{vi.name}: shape {result.shape}, expected {want.shape}"
        assert result.dtype == want.dtype, f"{vi.name}: dtype {result.dtype}, expected {want.dtype}"
        if want.dtype == bool or want.dtype.kind in "iu":
            np.testing.assert_array_equal(result, want, err_msg=vi.name)
        else:
            # float16 results: ONNX's reference rounds every intermediate to float16, kiln does not, so the
            # two may differ by a unit in the last place of float16 (2^-10 relative) beyond the case's rtol
            rtol = max(case.rtol, 1e-5) + (2.0**-10 if want.dtype == np.float16 else 0.0)
            np.testing.assert_allclose(result, want, rtol=rtol, atol=max(case.atol, 1e-6), err_msg=vi.name)


def run_case(
    name: str, runner: Callable[[onnx.ModelProto, dict[str, np.ndarray]], Mapping[str, np.ndarray]]
) -> None:
    """Run every data set of case ``name`` with ``runner(model, feed) -> outputs`` and compare."""
    for inputs, outputs in data_sets(name):
        model, feed = bake(CASES[name].model, inputs)
        compare(name, model, runner(model, feed), outputs)


def compiled_runner(
    target: str,
) -> Callable[[onnx.ModelProto, dict[str, np.ndarray]], Mapping[str, np.ndarray]]:
    """``runner`` that imports the model and compiles it for ``target`` (kiln.compile) and runs it there."""
    import kiln
    from kiln.frontend import from_onnx

    try:
        from running import run as run_package  # tests/running.py: emulated runs without a wall-clock limit
    except ImportError:  # outside the test suite's path

        def run_package(pkg: Any, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
            return pkg.run(inputs)  # type: ignore[no-any-return]

    def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        mod = from_onnx(model, name="node_case")
        return run_package(kiln.compile(mod, target), feed)

    return run


def interpreted_runner(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    from kiln.frontend import from_onnx

    try:
        from kiln.ops.interpreter import interpret
    except ImportError:  # before the interpreter moved to kiln.ops
        from kiln.ir.interpreter import interpret  # type: ignore[no-redef]
    return interpret(from_onnx(model), feed)
