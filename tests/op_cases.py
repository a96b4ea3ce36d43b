"""Single-node ONNX models, one or more per operator and attribute combination, with seeded random inputs.

Shared by the operator tests: ``tests/ops/test_ops_reference.py`` checks each kiln operator's NumPy reference (and
shape inference) against onnxruntime on these models, ``tests/ops/test_ops_lowering.py`` compiles them and checks
the generated code against the reference.

    from op_cases import CASES, ort_outputs, interpret_checked
    case = CASES["softmax-opset11-axis1"]
    case.model, case.feed, case.kiln_ops
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kiln.ir import Constant, Module
from kiln.ops import get_op

_TYPES = {
    np.dtype("float32"): TensorProto.FLOAT,
    np.dtype("float64"): TensorProto.DOUBLE,
    np.dtype("int64"): TensorProto.INT64,
    np.dtype("int32"): TensorProto.INT32,
    np.dtype("bool"): TensorProto.BOOL,
    np.dtype("uint8"): TensorProto.UINT8,
    np.dtype("int8"): TensorProto.INT8,
    np.dtype("int16"): TensorProto.INT16,
}


@dataclasses.dataclass
class OpCase:
    """One ONNX node: ``inputs`` in order (runtime arrays, constants, or None for an absent optional input)."""

    id: str
    op_type: str
    inputs: list[tuple[str, np.ndarray | None, bool]]  # (name, value, is_constant)
    attrs: dict[str, Any]
    opset: int
    kiln_ops: set[str]  # the kiln operators the import must produce (exactly)
    outputs: int = 1
    rtol: float = 1e-5
    atol: float = 1e-6

    @property
    def model(self) -> onnx.ModelProto:
        names = [n if v is not None else "" for n, v, _ in self.inputs]
        outs = [f"y{i}" for i in range(self.outputs)]
        node = helper.make_node(self.op_type, names, outs, name=f"{self.op_type}_node", **self.attrs)
        graph_inputs = [
            helper.make_tensor_value_info(n, _TYPES[v.dtype], v.shape)
            for n, v, const in self.inputs
            if v is not None and not const
        ]
        inits = [numpy_helper.from_array(v, n) for n, v, const in self.inputs if v is not None and const]
        outputs = [onnx.ValueInfoProto(name=o) for o in outs]  # types filled in by ONNX shape inference
        graph = helper.make_graph([node], self.id.replace("-", "_"), graph_inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=8)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)

    @property
    def feed(self) -> dict[str, np.ndarray]:
        return {n: v for n, v, const in self.inputs if v is not None and not const}


def ort_outputs(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by name from onnxruntime (graph optimizations off: it computes the node as written)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feed)), strict=True))


def interpret_checked(mod: Module, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Like :func:`kiln.ops.interpreter.interpret`, and also checks that every node's reference results have
    exactly the shapes and dtypes its operator's ``infer`` gave them."""
    f = mod.main
    env: dict[int, np.ndarray] = {p.uid: np.asarray(feed[p.name]) for p in f.params}

    def get(v: Any) -> np.ndarray:
        return v.data if isinstance(v, Constant) else env[v.uid]

    for n in f.nodes:
        results = get_op(n.op).reference([get(v) for v in n.inputs], n.attrs)
        assert len(results) == len(n.outputs), f"{n.op}: {len(results)} results for {len(n.outputs)} outputs"
        for var, r in zip(n.outputs, results, strict=True):
            assert r.shape == var.type.static_shape, (
                f"{n.op} {n.attrs}: infer {var.type}, reference {r.shape}"
            )
            assert str(r.dtype) == var.type.dtype, f"{n.op} {n.attrs}: infer {var.type}, reference {r.dtype}"
            env[var.uid] = r
    return {v.name: get(v) for v in f.outputs}


# ------------------------------------------------------------------------------------------------ catalogue
_rng = np.random.default_rng(1234)


def _x(*shape: int, lo: float | None = None, hi: float | None = None, dtype: str = "float32") -> np.ndarray:
    if lo is not None:
        return _rng.uniform(lo, lo if hi is None else hi, shape).astype(dtype)
    return _rng.standard_normal(shape).astype(dtype)


def _i(*values: Any) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f(*values: Any) -> np.ndarray:
    return np.array(values, dtype=np.float32)


CASES: dict[str, OpCase] = {}


def case(
    id: str,
    op_type: str,
    inputs: Sequence[tuple[str, np.ndarray | None] | tuple[str, np.ndarray | None, bool]],
    kiln_ops: set[str] | str,
    opset: int = 17,
    **kw: Any,
) -> None:
    attrs = kw.pop("attrs", {})
    ins = [(t[0], t[1], bool(t[2]) if len(t) > 2 else False) for t in inputs]
    ops = {kiln_ops} if isinstance(kiln_ops, str) else set(kiln_ops)
    assert id not in CASES, id
    CASES[id] = OpCase(id, op_type, ins, attrs, opset, ops, **kw)  # type: ignore[arg-type]


def C(name: str, value: np.ndarray) -> tuple[str, np.ndarray, bool]:  # noqa: N802 - reads like a constant
    return (name, value, True)


# --- normalization
for shape in ((2, 3, 4, 5), (2, 3), (1, 4, 6)):
    c = shape[1]
    for eps in (1e-5, 1e-2):
        case(
            f"batchnorm-{'x'.join(map(str, shape))}-eps{eps}",
            "BatchNormalization",
            [("x", _x(*shape)), C("s", _x(c)), C("b", _x(c)), C("m", _x(c)), C("v", _x(c, lo=0.5, hi=2.0))],
            "batch_norm",
            opset=15,
            attrs={"epsilon": eps},
        )
for size, alpha, beta, bias in ((3, 1e-4, 0.75, 1.0), (5, 0.1, 0.5, 2.0), (7, 0.5, 1.0, 1.0)):
    case(
        f"lrn-size{size}-a{alpha}",
        "LRN",
        [("x", _x(1, 6, 5, 5))],
        "lrn",
        attrs={"size": size, "alpha": alpha, "beta": beta, "bias": bias},
    )
for axis, bias in ((-1, True), (1, True), (-1, False), (2, False)):
    shape = (2, 5, 8)
    norm = shape[axis:] if axis >= 0 else shape[axis:]
    ins: list[Any] = [("x", _x(*shape)), C("scale", _x(*norm))]
    if bias:
        ins.append(C("bias", _x(*norm)))
    case(f"layernorm-axis{axis}-bias{bias}", "LayerNormalization", ins, "layer_norm", attrs={"axis": axis})
case(
    "layernorm-eps",
    "LayerNormalization",
    [("x", _x(3, 16)), C("s", _x(16))],
    "layer_norm",
    attrs={"epsilon": 1e-2},
)

# --- pooling
_POOL_X = _x(1, 3, 9, 10)
for op, kiln in (("MaxPool", "max_pool2d"), ("AveragePool", "avg_pool2d")):
    variants: list[tuple[str, dict[str, Any]]] = [
        ("k3s2", {"kernel_shape": [3, 3], "strides": [2, 2]}),
        ("k3s2p1-ceil", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
        ("k2-asym-pads", {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0]}),
        ("k3-dil2", {"kernel_shape": [3, 3], "dilations": [2, 2]}),
        ("same-upper", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ("same-lower", {"kernel_shape": [4, 4], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
        ("valid", {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "VALID"}),
    ]
    if op == "AveragePool":
        variants += [
            (
                "k3s2p1-incl",
                {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
            ),
            (
                "k3s2p1-ceil-incl",
                {
                    "kernel_shape": [3, 3],
                    "strides": [2, 2],
                    "pads": [1, 1, 1, 1],
                    "ceil_mode": 1,
                    "count_include_pad": 1,
                },
            ),
        ]
    for vid, attrs in variants:
        case(f"{kiln}-{vid}", op, [("x", _POOL_X)], kiln, opset=19, attrs=attrs)
case("global_avg_pool2d-2x3x5x6", "GlobalAveragePool", [("x", _x(2, 3, 5, 6))], "global_avg_pool2d")
case("global_avg_pool2d-1x8x1x1", "GlobalAveragePool", [("x", _x(1, 8, 1, 1))], "global_avg_pool2d")
case("global_max_pool", "GlobalMaxPool", [("x", _x(2, 3, 4, 5))], "reduce_max")

# --- softmax family: opset < 13 flattens to 2-D at `axis`, opset >= 13 normalizes along `axis`
for op, kiln in (("Softmax", "softmax"), ("LogSoftmax", "log_softmax")):
    case(f"{kiln}-opset11-default-axis", op, [("x", _x(2, 3, 4))], {kiln, "reshape"}, opset=11)
    case(f"{kiln}-opset11-axis2", op, [("x", _x(2, 3, 4))], kiln, opset=11, attrs={"axis": 2})
    case(f"{kiln}-opset11-axis0", op, [("x", _x(2, 3, 4))], {kiln, "reshape"}, opset=11, attrs={"axis": 0})
    for axis in (-1, 0, 1):
        case(f"{kiln}-opset13-axis{axis}", op, [("x", _x(2, 3, 4))], kiln, opset=13, attrs={"axis": axis})
    case(f"{kiln}-large-values", op, [("x", _x(3, 7) * 200)], kiln, opset=13)

# --- reductions
for op, kiln in (("ReduceMean", "reduce_mean"), ("ReduceSum", "reduce_sum"), ("ReduceMax", "reduce_max")):
    x = _x(2, 3, 4, 5)
    for axes, keep in (([1], 1), ([2, 3], 0), ([-1, 0], 1), (None, 0)):
        label = "all" if axes is None else "_".join(map(str, axes))
        rattrs: dict[str, Any] = {"keepdims": keep}
        if op == "ReduceSum":  # axes is an input since opset 13
            ins = [("x", x)] + ([C("axes", _i(*axes))] if axes is not None else [])
            case(f"{kiln}-axes{label}-keep{keep}", op, ins, kiln, opset=13, attrs=rattrs)
        else:
            if axes is not None:
                rattrs["axes"] = axes
            case(f"{kiln}-axes{label}-keep{keep}", op, [("x", x)], kiln, opset=13, attrs=rattrs)
    ins18: list[Any] = [("x", x), C("axes", _i(1, 2))]
    case(f"{kiln}-opset18-axes-input", op, ins18, kiln, opset=18, attrs={"keepdims": 0})
    case(f"{kiln}-noop-empty-axes", op, [("x", x)], "identity", opset=18, attrs={"noop_with_empty_axes": 1})

# --- views and data movement
case("reshape-zero-minus-one", "Reshape", [("x", _x(2, 3, 4)), C("s", _i(0, -1))], "reshape", opset=14)
case("reshape-4d", "Reshape", [("x", _x(2, 3, 4)), C("s", _i(4, 1, 3, 2))], "reshape", opset=14)
for axis in (0, 1, 2, -1):
    case(f"flatten-axis{axis}", "Flatten", [("x", _x(2, 3, 4, 5))], "reshape", opset=13, attrs={"axis": axis})
case("squeeze-all", "Squeeze", [("x", _x(1, 3, 1, 4))], "reshape", opset=13)
case("squeeze-axes", "Squeeze", [("x", _x(1, 3, 1, 4)), C("a", _i(-2))], "reshape", opset=13)
case("squeeze-opset11", "Squeeze", [("x", _x(1, 3, 1, 4))], "reshape", opset=11, attrs={"axes": [0]})
case("unsqueeze-axes", "Unsqueeze", [("x", _x(3, 4)), C("a", _i(0, -1))], "reshape", opset=13)
case("unsqueeze-opset11", "Unsqueeze", [("x", _x(3, 4))], "reshape", opset=11, attrs={"axes": [1]})
for perm in ((0, 2, 1, 3), (3, 1, 0, 2), None):
    attrs = {"perm": list(perm)} if perm else {}
    label = "".join(map(str, perm)) if perm else "default"
    case(f"transpose-{label}", "Transpose", [("x", _x(2, 3, 4, 5))], "transpose", attrs=attrs)
for axis in (0, 1, -1):
    shapes = [[2, 3, 4] for _ in range(3)]
    for k, n in enumerate((1, 2, 3)):
        shapes[k][axis] = n
    ins = [("a", _x(*shapes[0])), C("b", _x(*shapes[1])), ("c", _x(*shapes[2]))]
    case(f"concat-axis{axis}", "Concat", ins, "concat", attrs={"axis": axis})
_BIG = np.iinfo(np.int64).max
for label, starts, ends, sl_axes, steps in (
    ("inner", (1, 1), (-1, -1), (1, 2), None),
    ("reverse", (-1,), (-_BIG,), (0,), (-1,)),
    ("reverse-step2", (_BIG, 4), (-_BIG, 0), (1, 2), (-2, -1)),
    ("clamped-ends", (0, 2), (100, 1000), (0, 2), None),
    ("steps3", (0,), (_BIG,), (-1,), (3,)),
    ("empty-default-axes", (0, 0, 1), (2, 3, 6), None, None),
):
    x = _x(4, 5, 6)
    ins = [("x", x), C("s", _i(*starts)), C("e", _i(*ends))]
    if sl_axes is not None or steps is not None:
        ins.append(C("a", _i(*(sl_axes if sl_axes is not None else range(len(starts))))))
    if steps is not None:
        ins.append(C("st", _i(*steps)))
    case(f"slice-{label}", "Slice", ins, "slice", opset=13)
case(
    "slice-opset9",
    "Slice",
    [("x", _x(4, 5))],
    "slice",
    opset=9,
    attrs={"starts": [1, 0], "ends": [3, 100], "axes": [0, 1]},
)
case(
    "split-sizes",
    "Split",
    [("x", _x(2, 6, 3)), C("s", _i(2, 3, 1))],
    "split",
    opset=13,
    outputs=3,
    attrs={"axis": 1},
)
case("split-equal", "Split", [("x", _x(2, 6, 3))], "split", opset=13, outputs=3, attrs={"axis": 1})
case(
    "split-opset18-uneven",
    "Split",
    [("x", _x(7, 2))],
    "split",
    opset=18,
    outputs=3,
    attrs={"axis": 0, "num_outputs": 3},
)
case(
    "split-opset11-attr",
    "Split",
    [("x", _x(2, 5))],
    "split",
    opset=11,
    outputs=2,
    attrs={"axis": -1, "split": [4, 1]},
)
case(
    "gather-const-negative",
    "Gather",
    [("x", _x(5, 4)), C("i", _i(0, -1, 2, -5))],
    "gather",
    attrs={"axis": 0},
)
case(
    "gather-runtime-axis1",
    "Gather",
    [("x", _x(3, 6, 2)), ("i", _i(*_rng.integers(-6, 6, 8)).reshape(2, 4))],
    "gather",
    attrs={"axis": 1},
)
case(
    "gather-scalar-axis2",
    "Gather",
    [("x", _x(2, 3, 4)), C("i", np.array(-2, dtype=np.int64))],
    "gather",
    attrs={"axis": 2},
)
case(
    "gather-int32-indices",
    "Gather",
    [
        (
            "x",
            _x(
                6,
            ),
        ),
        ("i", np.array([5, 0, -3], dtype=np.int32)),
    ],
    "gather",
)
for mode in ("constant", "reflect", "edge"):
    ins = [("x", _x(2, 3, 4, 5)), C("p", _i(0, 0, 1, 2, 0, 0, 2, 1))]
    if mode == "constant":
        ins.append(C("v", _f(1.5)))
    case(f"pad-{mode}", "Pad", ins, "pad", opset=13, attrs={"mode": mode})
case("pad-crop", "Pad", [("x", _x(4, 5)), C("p", _i(-1, 2, 1, -2))], "pad", opset=13)
case(
    "pad-opset18-axes",
    "Pad",
    [("x", _x(2, 3, 4)), C("p", _i(1, 2)), ("", None), C("a", _i(-1))],
    "pad",
    opset=18,
    attrs={"mode": "edge"},
)
case("pad-wrap", "Pad", [("x", _x(3, 4)), C("p", _i(1, 2, 2, 3))], "pad", opset=19, attrs={"mode": "wrap"})
case(
    "pad-opset2-attrs", "Pad", [("x", _x(3, 4))], "pad", opset=2, attrs={"pads": [1, 0, 0, 2], "value": -2.0}
)
case("expand-broadcast", "Expand", [("x", _x(3, 1)), C("s", _i(2, 3, 4))], "expand", opset=13)
case("expand-ones", "Expand", [("x", _x(2, 1, 5)), C("s", _i(1, 4, 1))], "expand", opset=13)
case("tile", "Tile", [("x", _x(2, 3, 1)), C("r", _i(2, 1, 3))], "tile", opset=13)

# --- resize
_RX = _x(1, 2, 5, 7)
for label, scales, sizes, attrs in (
    ("nearest-x2", (1, 1, 2, 2), None, {"mode": "nearest"}),
    (
        "nearest-asym-floor",
        (1, 1, 1.5, 2.5),
        None,
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
    ),
    ("nearest-down", (1, 1, 0.5, 0.5), None, {"mode": "nearest"}),
    ("nearest-ceil-sizes", None, (1, 2, 8, 4), {"mode": "nearest", "nearest_mode": "ceil"}),
    ("linear-half-pixel", (1, 1, 2, 3), None, {"mode": "linear"}),
    ("linear-down", (1, 1, 0.5, 0.6), None, {"mode": "linear"}),
    (
        "linear-align-corners",
        None,
        (1, 2, 9, 4),
        {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    ),
    (
        "linear-pytorch",
        None,
        (1, 2, 1, 12),
        {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
    ),
    ("linear-asym", (1, 1, 2, 2), None, {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}),
):
    ins = [("x", _RX), ("", None), C("sc", _f(*scales)) if scales else ("", None)]
    if sizes:
        ins.append(C("sz", _i(*sizes)))
    case(f"resize-{label}", "Resize", ins, "resize", opset=13, attrs=attrs, atol=1e-5)
case(
    "upsample-opset9-nearest",
    "Upsample",
    [("x", _RX), C("sc", _f(1, 1, 2, 3))],
    "resize",
    opset=9,
    attrs={"mode": "nearest"},
)

# --- elementwise
_UNARY: list[tuple[str, set[str] | str, dict[str, Any], np.ndarray]] = [
    ("Relu", "relu", {}, _x(3, 4)),
    ("Neg", "neg", {}, _x(3, 4)),
    ("Abs", "abs", {}, _x(3, 4)),
    ("Exp", "exp", {}, _x(3, 4)),
    ("Log", "log", {}, _x(3, 4, lo=0.1, hi=5)),
    ("Sqrt", "sqrt", {}, _x(3, 4, lo=0.0, hi=5)),
    ("Tanh", "tanh", {}, _x(3, 4) * 3),
    ("Erf", "erf", {}, _x(3, 4) * 2),
    ("Floor", "floor", {}, _x(3, 4) * 3),
    ("Ceil", "ceil", {}, _x(3, 4) * 3),
    ("Round", "round", {}, np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6], dtype=np.float32)),
    ("Reciprocal", "reciprocal", {}, _x(3, 4, lo=0.5, hi=3)),
    ("Sigmoid", "sigmoid", {}, _x(3, 4) * 4),
    ("Softplus", "softplus", {}, _x(3, 4) * 10),
    ("Softsign", "softsign", {}, _x(3, 4) * 3),
    ("Elu", "elu", {"alpha": 0.5}, _x(3, 4) * 2),
    ("Selu", "selu", {}, _x(3, 4) * 2),
    ("LeakyRelu", "leaky_relu", {"alpha": 0.2}, _x(3, 4)),
    ("HardSigmoid", "hard_sigmoid", {"alpha": 0.3, "beta": 0.4}, _x(3, 4) * 3),
    ("HardSwish", "hard_swish", {}, _x(3, 4) * 4),
    ("Sign", "sign", {}, np.array([-2.0, 0.0, 3.5, -0.1], dtype=np.float32)),
    ("Sin", "sin", {}, _x(3, 4) * 3),
    ("Cos", "cos", {}, _x(3, 4) * 3),
    ("Not", "not", {}, _x(3, 4) > 0),
    ("Identity", "identity", {}, _x(3, 4)),
]
for op, ukiln, uattrs, x in _UNARY:
    case(f"{op.lower()}", op, [("x", x)], ukiln, attrs=uattrs)
case("gelu-exact", "Gelu", [("x", _x(3, 4) * 3)], "gelu", opset=20)
case("gelu-tanh", "Gelu", [("x", _x(3, 4) * 3)], "gelu", opset=20, attrs={"approximate": "tanh"})
case("clip-opset6-attrs", "Clip", [("x", _x(3, 4))], "clip", opset=6, attrs={"min": -0.5, "max": 0.7})
case("clip-opset13-min-only", "Clip", [("x", _x(3, 4)), C("lo", _f(0.1).reshape(()))], "clip", opset=13)
case(
    "clip-opset13-max-only",
    "Clip",
    [("x", _x(3, 4)), ("", None), C("hi", _f(0.2).reshape(()))],
    "clip",
    opset=13,
)
case("dropout-inference", "Dropout", [("x", _x(3, 4))], "identity", opset=13)

_A, _B = _x(2, 3, 4), _x(3, 1)
for op, kiln in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div")):
    case(f"{op.lower()}-broadcast", op, [("a", _A), ("b", _B)], kiln)
    case(f"{op.lower()}-const-scalar", op, [("a", _A), C("b", _f(1.5).reshape(()))], kiln)
case("div-int", "Div", [("a", _i(7, -7, 9, -9, 0)), ("b", _i(2, 2, -4, -4, 3))], "div")
case("pow", "Pow", [("a", _x(3, 4, lo=0.1, hi=3)), ("b", _x(4, lo=-2, hi=2))], "pow", atol=1e-5)
case("max-3", "Max", [("a", _x(3, 4)), ("b", _x(4)), ("c", _x(3, 1))], "maximum")
case("min-3", "Min", [("a", _x(3, 4)), ("b", _x(4)), ("c", _x(3, 1))], "minimum")
case("max-1", "Max", [("a", _x(3, 4))], "identity")
case("sum-3", "Sum", [("a", _x(3, 4)), ("b", _x(4)), ("c", _x(3, 1))], "add")
case("mod-int", "Mod", [("a", _i(-7, 7, -7, 7, 5)), ("b", _i(3, -3, -3, 3, 5))], "mod")
case("mod-int-fmod", "Mod", [("a", _i(-7, 7, -7, 7)), ("b", _i(3, -3, -3, 3))], "mod", attrs={"fmod": 1})
case("mod-float-fmod", "Mod", [("a", _x(3, 4) * 5), ("b", _x(4, lo=0.5, hi=2))], "mod", attrs={"fmod": 1})
case("prelu", "PRelu", [("x", _x(2, 3, 4)), C("slope", _x(3, 1))], "prelu")
for op, kiln in (
    ("Equal", "equal"),
    ("Less", "less"),
    ("Greater", "greater"),
    ("LessOrEqual", "less_equal"),
    ("GreaterOrEqual", "greater_equal"),
):
    a = _rng.integers(-2, 3, (3, 4)).astype(np.float32)
    case(f"{op.lower()}", op, [("a", a), ("b", np.round(_x(4)))], kiln)
for op, kiln in (("And", "and"), ("Or", "or"), ("Xor", "xor")):
    case(f"{op.lower()}", op, [("a", _x(3, 4) > 0), ("b", _x(4) > 0)], kiln)
case("where", "Where", [("c", _x(3, 4) > 0), ("a", _x(3, 4)), ("b", _x(4))], "where")
case("cast-float-int32", "Cast", [("x", _x(3, 4) * 10)], "cast", attrs={"to": TensorProto.INT32})
case("cast-int64-float", "Cast", [("x", _i(*range(-3, 5)))], "cast", attrs={"to": TensorProto.FLOAT})
case(
    "cast-float-bool",
    "Cast",
    [("x", np.array([0.0, 1.5, -2.0], np.float32))],
    "cast",
    attrs={"to": TensorProto.BOOL},
)

# --- matrix products and convolutions
for ta, tb, alpha, beta, c_shape in (
    (0, 0, 1.0, 1.0, (5,)),
    (1, 0, 1.0, 1.0, (4, 5)),
    (0, 1, 0.5, 2.0, (1, 5)),
    (1, 1, 1.0, 1.0, None),
):
    a = _x(*((6, 4) if ta else (4, 6)))
    b = _x(*((5, 6) if tb else (6, 5)))
    ins = [("a", a), C("b", b)] + ([C("c", _x(*c_shape))] if c_shape else [])
    ops = {"matmul"} | ({"add"} if c_shape else set()) | ({"transpose"} if ta else set())
    case(
        f"gemm-ta{ta}-tb{tb}-a{alpha}-b{beta}-c{c_shape}",
        "Gemm",
        ins,
        ops,
        attrs={"transA": ta, "transB": tb, "alpha": alpha, "beta": beta},
        rtol=1e-4,
        atol=1e-5,
    )
case(
    "gemm-transA-runtime",
    "Gemm",
    [("a", _x(6, 4)), C("b", _x(6, 5))],
    {"matmul", "transpose"},
    attrs={"transA": 1},
    rtol=1e-4,
    atol=1e-5,
)
case("matmul-2d", "MatMul", [("a", _x(4, 6)), ("b", _x(6, 3))], "matmul", rtol=1e-4, atol=1e-5)
case("matmul-batched", "MatMul", [("a", _x(2, 4, 6)), C("b", _x(6, 3))], "matmul", rtol=1e-4, atol=1e-5)
case(
    "conv-1d",
    "Conv",
    [("x", _x(1, 3, 12)), C("w", _x(4, 3, 3)), C("b", _x(4))],
    {"conv2d", "reshape"},
    attrs={"pads": [1, 1], "strides": [2]},
    rtol=1e-4,
    atol=1e-5,
)
case(
    "conv-same-upper-s2",
    "Conv",
    [("x", _x(1, 3, 9, 8)), C("w", _x(4, 3, 3, 3))],
    "conv2d",
    attrs={"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    rtol=1e-4,
    atol=1e-5,
)
case(  # depthwise with stride 2: the padded plane split into column phases
    "conv-depthwise-stride2",
    "Conv",
    [("x", _x(1, 6, 11, 13)), C("w", _x(6, 1, 5, 5)), C("b", _x(6))],
    "conv2d",
    attrs={"group": 6, "strides": [2, 2], "pads": [2, 1, 2, 2]},
    rtol=1e-4,
    atol=1e-5,
)
case(
    "conv-group-dilated",
    "Conv",
    [("x", _x(1, 4, 9, 9)), C("w", _x(4, 2, 3, 3))],
    "conv2d",
    attrs={"group": 2, "dilations": [2, 2], "pads": [2, 2, 2, 2]},
    rtol=1e-4,
    atol=1e-5,
)

# --- operators from real models (issue 10). Small shapes: every case also runs under QEMU.
for op, kiln_op, x in (
    ("Tan", "tan", _x(3, 4, lo=-1.4, hi=1.4)),
    ("Atan", "atan", _x(3, 4) * 4),
    ("Asin", "asin", _x(3, 4, lo=-1.0, hi=1.0)),
    ("Acos", "acos", _x(3, 4, lo=-1.0, hi=1.0)),
    ("Sinh", "sinh", _x(3, 4) * 3),
    ("Cosh", "cosh", _x(3, 4) * 3),
    ("Asinh", "asinh", _x(3, 4) * 5),
    ("Acosh", "acosh", _x(3, 4, lo=1.0, hi=20.0)),
    ("Atanh", "atanh", _x(3, 4, lo=-0.95, hi=0.95)),
    ("Mish", "mish", _x(3, 4) * 4),
    ("Celu", "celu", _x(3, 4) * 3),
    ("ThresholdedRelu", "thresholded_relu", _x(3, 4) * 2),
    ("Shrink", "shrink", _x(3, 4) * 2),
):
    case(op.lower(), op, [("x", x)], kiln_op, opset=18)
case("celu-alpha", "Celu", [("x", _x(3, 4) * 3)], "celu", opset=18, attrs={"alpha": 0.5})
case("thresholded-relu-alpha", "ThresholdedRelu", [("x", _x(3, 4))], "thresholded_relu", attrs={"alpha": 0.3})
case("shrink-bias", "Shrink", [("x", _x(3, 4) * 2)], "shrink", attrs={"lambd": 0.8, "bias": 0.3})
_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -1.5, 3.0], dtype=np.float32)
case("isnan", "IsNaN", [("x", _SPECIAL)], "is_nan", opset=20)
case("isinf", "IsInf", [("x", _SPECIAL)], "is_inf", opset=20)
case("isinf-negative-only", "IsInf", [("x", _SPECIAL)], "is_inf", opset=20, attrs={"detect_positive": 0})
case("mean-3", "Mean", [("a", _x(3, 4)), ("b", _x(4)), ("c", _x(3, 1))], "mean")
case("castlike-int32", "CastLike", [("x", _x(3, 4) * 10), ("like", np.zeros(1, np.int32))], "cast", opset=19)
case(
    "where-broadcast-all",
    "Where",
    [("c", _x(3, 1) > 0), ("a", _x(1, 4)), C("b", _f(-1.0).reshape(()))],
    "where",
)

# remaining reductions
_RX4 = _x(2, 3, 4)
for op, kiln_op, rx in (
    ("ReduceMin", "reduce_min", _RX4),
    ("ReduceProd", "reduce_prod", _RX4 * 0.5 + 1),
    ("ReduceL1", "reduce_l1", _RX4),
    ("ReduceL2", "reduce_l2", _RX4),
    ("ReduceLogSum", "reduce_log_sum", np.abs(_RX4) + 0.1),
    ("ReduceLogSumExp", "reduce_log_sum_exp", _RX4 * 30),
    ("ReduceSumSquare", "reduce_sum_square", _RX4),
):
    case(f"{kiln_op}-axes1-keep", op, [("x", rx), C("a", _i(1))], kiln_op, opset=18, atol=1e-4)
    case(f"{kiln_op}-all", op, [("x", rx)], kiln_op, opset=18, attrs={"keepdims": 0}, atol=1e-4)
case(
    "reduce_min-int32",
    "ReduceMin",
    [("x", _rng.integers(-50, 50, (3, 5)).astype(np.int32))],
    "reduce_min",
    opset=13,
    attrs={"axes": [1]},
)

# arg extremes, top-k, running sums
_TIES = np.round(_x(3, 6) * 1.5)  # small integers: ties on purpose
for op, kiln_op in (("ArgMax", "arg_max"), ("ArgMin", "arg_min")):
    case(f"{kiln_op}-axis1", op, [("x", _TIES)], kiln_op, opset=13, attrs={"axis": 1})
    case(
        f"{kiln_op}-axis0-last",
        op,
        [("x", _TIES)],
        kiln_op,
        opset=13,
        attrs={"axis": 0, "keepdims": 0, "select_last_index": 1},
    )
case("topk-largest", "TopK", [("x", _TIES), C("k", _i(3))], "top_k", opset=11, outputs=2)
case(
    "topk-smallest-axis0",
    "TopK",
    [("x", _x(5, 3)), C("k", _i(2))],
    "top_k",
    opset=11,
    outputs=2,
    attrs={"axis": 0, "largest": 0},
)
case("cumsum-axis1", "CumSum", [("x", _x(2, 5)), C("a", _i(1))], "cumsum", opset=14)
case(
    "cumsum-exclusive-reverse",
    "CumSum",
    [("x", _x(3, 4)), C("a", np.array(0, np.int32))],
    "cumsum",
    opset=14,
    attrs={"exclusive": 1, "reverse": 1},
)
case("cumsum-int64", "CumSum", [("x", _i(*range(1, 7)).reshape(2, 3)), C("a", _i(-1))], "cumsum", opset=14)
case("hardmax", "Hardmax", [("x", _TIES)], "hardmax", opset=13)

# gathers, scatters, one-hot, triangles
case(
    "gather-elements-axis1",
    "GatherElements",
    [("x", _x(3, 4)), ("i", _rng.integers(-4, 4, (3, 2)).astype(np.int64))],
    "gather_elements",
    attrs={"axis": 1},
)
case(
    "gather-nd",
    "GatherND",
    [("x", _x(3, 4, 2)), ("i", np.array([[0, 1], [2, -1], [1, 3]], np.int64))],
    "gather_nd",
)
case(
    "gather-nd-batch1",
    "GatherND",
    [("x", _x(2, 3, 4)), ("i", np.array([[[1], [0]], [[2], [2]]], np.int64))],
    "gather_nd",
    attrs={"batch_dims": 1},
)
case(
    "scatter-elements-axis1",
    "ScatterElements",
    [("x", _x(3, 4)), C("i", np.array([[1, 3], [0, -1], [2, 2]], np.int64)), ("u", _x(3, 2))],
    "scatter_elements",
    attrs={"axis": 1},
)
case(
    "scatter-elements-add",
    "ScatterElements",
    [("x", _x(3, 4)), ("i", np.array([[1, 1], [0, 3], [2, 2]], np.int64)), ("u", _x(3, 2))],
    "scatter_elements",
    attrs={"axis": 1, "reduction": "add"},
)
case(
    "scatter-nd",
    "ScatterND",
    [("x", _x(4, 3)), C("i", np.array([[2], [0]], np.int64)), ("u", _x(2, 3))],
    "scatter_nd",
)
case(
    "scatter-nd-mul",
    "ScatterND",
    [("x", _x(2, 3)), ("i", np.array([[0, 1], [1, 2], [0, 1]], np.int64)), ("u", _x(3))],
    "scatter_nd",
    attrs={"reduction": "mul"},
)
for axis in (-1, 0):
    case(
        f"onehot-axis{axis}",
        "OneHot",
        [("i", np.array([[0, 3], [-1, 2]], np.int64)), C("d", _i(4)), C("v", _f(-1.0, 2.0))],
        "one_hot",
        opset=11,
        attrs={"axis": axis},
    )
case("trilu-upper", "Trilu", [("x", _x(2, 3, 4))], "where", opset=14)
case("trilu-lower-k1", "Trilu", [("x", _x(4, 3)), C("k", _i(-1))], "where", opset=14, attrs={"upper": 0})

# depth/space rearrangements (reshape + transpose)
for mode in ("DCR", "CRD"):
    case(
        f"depth-to-space-{mode.lower()}",
        "DepthToSpace",
        [("x", _x(1, 8, 2, 3))],
        {"reshape", "transpose"},
        opset=13,
        attrs={"blocksize": 2, "mode": mode},
    )
case(
    "space-to-depth",
    "SpaceToDepth",
    [("x", _x(1, 2, 4, 6))],
    {"reshape", "transpose"},
    attrs={"blocksize": 2},
)

# normalizations built from layer_norm and elementwise operators
case(
    "instance-norm",
    "InstanceNormalization",
    [("x", _x(2, 3, 4, 5)), C("s", _x(3)), C("b", _x(3))],
    {"layer_norm", "mul", "add"},
    atol=1e-5,
)
case(
    "group-norm",
    "GroupNormalization",
    [("x", _x(2, 4, 3, 3)), C("s", _x(4)), C("b", _x(4))],
    {"reshape", "layer_norm", "mul", "add"},
    opset=21,
    attrs={"num_groups": 2},
    atol=1e-5,
)
case(
    "rms-norm",
    "RMSNormalization",
    [("x", _x(2, 3, 8)), C("s", _x(8))],
    {"mul", "reduce_mean", "add", "sqrt", "div"},
    opset=23,
    atol=1e-5,
)
case(
    "lp-norm",
    "LpNormalization",
    [("x", np.concatenate([_x(3, 4), np.zeros((1, 4), np.float32)]))],
    {"reduce_l2", "div", "equal", "where"},
    attrs={"axis": 1},
)

# transposed convolutions
_CTX = _x(1, 2, 3, 4)
for label, w_shape, attrs in (
    ("basic-bias", (2, 3, 3, 3), {}),
    ("s2-outpad", (2, 2, 3, 3), {"strides": [2, 2], "output_padding": [1, 0]}),
    ("pads-dil", (2, 3, 2, 3), {"pads": [1, 0, 0, 1], "dilations": [2, 1]}),
    ("group2", (2, 2, 3, 2), {"group": 2, "strides": [1, 2]}),
    ("same-upper-s2", (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("output-shape", (2, 1, 3, 3), {"strides": [2, 2], "output_shape": [6, 9]}),
):
    ins = [("x", _CTX), C("w", _x(*w_shape))]
    if label == "basic-bias":
        ins.append(C("b", _x(w_shape[1])))
    case(
        f"conv-transpose-{label}", "ConvTranspose", ins, "conv_transpose2d", attrs=attrs, rtol=1e-4, atol=1e-5
    )
case(
    "conv-transpose-1d",
    "ConvTranspose",
    [("x", _x(1, 2, 5)), C("w", _x(2, 3, 3)), C("b", _x(3))],
    {"conv_transpose2d", "reshape"},
    attrs={"strides": [2], "pads": [1, 0]},
    rtol=1e-4,
    atol=1e-5,
)

# einsum: two-operand contractions become matmul (+ transposes/reshapes); the rest the general operator
case(
    "einsum-batched-matmul",
    "Einsum",
    [("a", _x(2, 3, 4)), ("b", _x(2, 4, 5))],
    "matmul",
    opset=12,
    attrs={"equation": "bij,bjk->bik"},
    rtol=1e-4,
    atol=1e-5,
)
case(
    "einsum-attention-scores",
    "Einsum",
    [("q", _x(1, 2, 3, 4)), ("k", _x(1, 2, 5, 4))],
    {"matmul", "reshape", "transpose"},
    opset=12,
    attrs={"equation": "bhqd,bhkd->bhqk"},
    rtol=1e-4,
    atol=1e-5,
)
case(
    "einsum-ellipsis-transpose-out",
    "Einsum",
    [("a", _x(2, 3, 4)), C("b", _x(4, 5))],
    {"matmul", "reshape", "transpose"},
    opset=12,
    attrs={"equation": "...ij,jk->k...i"},
    rtol=1e-4,
    atol=1e-5,
)
case(
    "einsum-dot",
    "Einsum",
    [("a", _x(6)), ("b", _x(6))],
    {"matmul", "reshape"},
    opset=12,
    attrs={"equation": "i,i"},
    rtol=1e-4,
    atol=1e-5,
)
case("einsum-diagonal", "Einsum", [("a", _x(4, 4))], "einsum", opset=12, attrs={"equation": "ii->i"})
case(
    "einsum-three-operands",
    "Einsum",
    [("a", _x(2, 3)), ("b", _x(3, 4)), ("c", _x(4))],
    "einsum",
    opset=12,
    attrs={"equation": "ij,jk,k->i"},
    rtol=1e-4,
    atol=1e-5,
)

# 8-bit integer matrices: int32 accumulation (3s times 5s over K = 64 is 960, which int8 cannot hold)
case(
    "matmul-integer-int32-accumulation",
    "MatMulInteger",
    [("a", np.full((2, 64), 3, np.int8)), C("b", np.full((64, 3), 5, np.int8))],
    "matmul",
    opset=10,
)
case(
    "matmul-integer-uint8-int8",
    "MatMulInteger",
    [
        ("a", _rng.integers(0, 256, (3, 20)).astype(np.uint8)),
        C("b", _rng.integers(-128, 128, (20, 4)).astype(np.int8)),
    ],
    "matmul",
    opset=10,
)
case(
    "matmul-integer-zero-points",
    "MatMulInteger",
    [
        ("a", _rng.integers(0, 256, (3, 20)).astype(np.uint8)),
        C("b", _rng.integers(0, 256, (20, 4)).astype(np.uint8)),
        C("za", np.array(128, np.uint8)),
        C("zb", np.array([3, 100, 0, 255], np.uint8)),
    ],
    {"matmul", "sub"},  # 8-bit operands; the zero points fold into B and a correction
    opset=10,
)

# NaN propagates through max, min, relu and clip (IEEE 754-2019 maximum/minimum; onnxruntime agrees)
_NAN_X = np.array([[np.nan, 1.0, -2.0, 3.0], [0.5, np.nan, 2.0, -1.0]], np.float32)
_NAN_Y = np.array([[1.0, np.nan, 0.0, 5.0]], np.float32)
case("relu-nan", "Relu", [("x", _NAN_X)], "relu")
case("max-nan", "Max", [("a", _NAN_X), ("b", _NAN_Y)], "maximum")
case("min-nan", "Min", [("a", _NAN_X), ("b", _NAN_Y)], "minimum")
case("clip-nan", "Clip", [("x", _NAN_X)], "clip", opset=6, attrs={"min": -1.0, "max": 1.0})
case("clip-int8-default-bounds", "Clip", [("x", np.array([-128, -1, 0, 1, 127], np.int8))], "clip", opset=13)
case(
    "pow-int32-exponent",
    "Pow",
    [("a", _x(3, 4, lo=0.5, hi=2)), ("b", np.array([0, 1, 2, 3], np.int32))],
    "pow",
    opset=15,
    atol=1e-5,
)

# running products, sequence reversal, Lp pooling
case(
    "cumprod-axis1",
    "CumProd",
    [("x", _x(2, 5, lo=0.5, hi=1.5)), C("a", _i(1))],
    "cumprod",
    opset=26,
    rtol=1e-4,
)
case(
    "cumprod-exclusive-reverse",
    "CumProd",
    [("x", _x(3, 4, lo=0.5, hi=1.5)), C("a", _i(0))],
    "cumprod",
    opset=26,
    attrs={"exclusive": 1, "reverse": 1},
    rtol=1e-4,
)
case(
    "reverse-sequence",
    "ReverseSequence",
    [("x", _x(4, 3, 2)), ("lens", np.array([4, 1, 3], np.int64))],
    "reverse_sequence",
    attrs={"batch_axis": 1, "time_axis": 0},
)
case(
    "lp-pool-p2",
    "LpPool",
    [("x", _x(1, 2, 5, 5))],
    {"abs", "pow", "avg_pool2d", "mul"},
    opset=18,
    attrs={"kernel_shape": [2, 2], "strides": [2, 2], "p": 2},
    rtol=1e-4,
    atol=1e-5,
)

# recurrent layers, unrolled (sequence length 3, hidden size 4)
_RNN_X = _x(3, 2, 5)
for op, gates in (("RNN", 1), ("GRU", 3), ("LSTM", 4)):
    ops = {"matmul", "reshape", "slice", "add", "concat", "tanh", "identity"}  # weight transposes fold
    ops |= {"sigmoid", "mul"} if op != "RNN" else set()
    ops |= {"sub"} if op == "GRU" else set()
    case(
        f"{op.lower()}-forward-bias",
        op,
        [
            ("x", _RNN_X),
            C("w", _x(1, gates * 4, 5)),
            C("r", _x(1, gates * 4, 4)),
            C("b", _x(1, 2 * gates * 4)),
        ],
        ops,
        opset=14,
        outputs=2,
        attrs={"hidden_size": 4},
        rtol=1e-4,
        atol=1e-5,
    )
case(
    "lstm-bidirectional-initial-state-lens",
    "LSTM",
    [
        ("x", _RNN_X),
        C("w", _x(2, 16, 5)),
        C("r", _x(2, 16, 4)),
        ("", None),
        ("lens", np.array([3, 2], np.int32)),
        ("h0", _x(2, 2, 4)),
        ("c0", _x(2, 2, 4)),
    ],
    {
        "matmul",
        "reshape",
        "slice",
        "add",
        "concat",
        "tanh",
        "sigmoid",
        "mul",
        "less",
        "where",
        "reverse_sequence",
        "identity",
    },
    opset=14,
    outputs=3,
    attrs={"hidden_size": 4, "direction": "bidirectional"},
    rtol=1e-4,
    atol=1e-5,
)

# quantization: integer kernels with a fused requantize
_QX = _x(2, 3, 4)
case(
    "quantize-linear-uint8",
    "QuantizeLinear",
    [("x", _QX * 3), C("s", _f(0.05).reshape(())), C("z", np.array(128, np.uint8))],
    {"div", "round", "cast", "add", "clip"},
    opset=13,
)
case(
    "quantize-linear-per-axis-int8",
    "QuantizeLinear",
    [("x", _QX * 3), C("s", _f(0.02, 0.05, 0.1)), C("z", np.array([0, -3, 5], np.int8))],
    {"div", "round", "cast", "add", "clip"},
    opset=13,
    attrs={"axis": 1},
)
case(
    "dequantize-linear-per-axis",
    "DequantizeLinear",
    [
        ("q", _rng.integers(-128, 128, (2, 3, 4)).astype(np.int8)),
        C("s", _f(0.02, 0.05, 0.1)),
        C("z", np.array([0, -3, 5], np.int8)),
    ],
    {"cast", "sub", "mul"},
    opset=13,
    attrs={"axis": 1},
)
case(
    "dynamic-quantize-linear",
    "DynamicQuantizeLinear",
    [("x", _QX * 3)],
    {"reduce_max", "reduce_min", "maximum", "minimum", "sub", "div", "neg", "round", "clip", "cast", "add"},
    opset=11,
    outputs=3,
)
case(
    "qlinear-matmul",
    "QLinearMatMul",
    [
        ("a", _rng.integers(0, 256, (3, 16)).astype(np.uint8)),
        C("as", _f(0.02).reshape(())),
        C("az", np.array(120, np.uint8)),
        C("b", _rng.integers(-128, 128, (16, 5)).astype(np.int8)),
        C("bs", _f(0.01).reshape(())),
        C("bz", np.array(0, np.int8)),
        C("ys", _f(0.05).reshape(())),
        C("yz", np.array(10, np.uint8)),
    ],
    {"cast", "sub", "mul", "matmul", "div", "round", "add", "clip"},  # DQ, matmul, Q: fuse-qdq's input
    opset=10,
)
case(
    "qlinear-conv-per-channel",
    "QLinearConv",
    [
        ("x", _rng.integers(0, 256, (1, 2, 5, 5)).astype(np.uint8)),
        C("xs", _f(0.02).reshape(())),
        C("xz", np.array(100, np.uint8)),
        C("w", _rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)),
        C("ws", _f(0.01, 0.02, 0.005)),
        C("wz", np.zeros(3, np.int8)),
        C("ys", _f(0.1).reshape(())),
        C("yz", np.array(128, np.uint8)),
        C("bias", np.array([100, -50, 0], np.int32)),
    ],
    {"cast", "sub", "mul", "conv2d", "div", "round", "add", "clip"},  # DQ, conv, Q: fuse-qdq's input
    opset=10,
    attrs={"pads": [1, 1, 1, 1]},
)
case(
    "conv-integer",
    "ConvInteger",
    [
        ("x", _rng.integers(0, 256, (1, 2, 4, 4)).astype(np.uint8)),
        C("w", _rng.integers(0, 256, (2, 2, 2, 2)).astype(np.uint8)),
        C("xz", np.array(7, np.uint8)),
    ],
    {"conv2d", "sub"},  # 8-bit operands, padded with the zero point, corrected per channel
    opset=10,
)

# grid sampling, bit operations
_GS_GRID = _x(1, 3, 4, 2, lo=-1.2, hi=1.2)
for mode, pad, corners in (("linear", "zeros", 0), ("nearest", "border", 1), ("cubic", "reflection", 0)):
    case(
        f"grid-sample-{mode}-{pad}",
        "GridSample",
        [("x", _x(1, 2, 4, 5)), ("g", _GS_GRID)],
        "grid_sample",
        opset=20,
        attrs={"mode": mode, "padding_mode": pad, "align_corners": corners},
        rtol=1e-4,
        atol=1e-5,
    )
_BS_X = np.array([-128, -5, -1, 0, 1, 3, 64, 127], np.int8)
_BS_N = np.array([1, 2, 7, 3, 0, 8, 1, 9], np.int8)
for direction in ("LEFT", "RIGHT"):
    case(
        f"bitshift-{direction.lower()}-uint8",
        "BitShift",
        [("x", np.arange(8, dtype=np.uint8) * 37), ("n", np.arange(8, dtype=np.uint8))],
        "bit_shift",
        opset=11,
        attrs={"direction": direction},
    )
case(
    "bitwise-and-int32",
    "BitwiseAnd",
    [
        ("a", _rng.integers(-1000, 1000, (3, 4)).astype(np.int32)),
        ("b", _rng.integers(-1000, 1000, (4,)).astype(np.int32)),
    ],
    "bitwise_and",
    opset=18,
)
case(
    "bitwise-xor-uint8",
    "BitwiseXor",
    [
        ("a", _rng.integers(0, 256, (3, 4)).astype(np.uint8)),
        ("b", _rng.integers(0, 256, (3, 4)).astype(np.uint8)),
    ],
    "bitwise_xor",
    opset=18,
)
case("bitwise-not-int8", "BitwiseNot", [("a", _BS_X)], "bitwise_not", opset=18)
case("swish-alpha", "Swish", [("x", _x(3, 4) * 3)], "swish", opset=24, attrs={"alpha": 1.5})
case(
    "bitwise-or-int16",
    "BitwiseOr",
    [
        ("a", _rng.integers(-300, 300, (2, 5)).astype(np.int16)),
        ("b", _rng.integers(-300, 300, (2, 5)).astype(np.int16)),
    ],
    "bitwise_or",
    opset=18,
)

# --- issue 10: the remaining ONNX operators. Operators with a bounded output (NonZero, NonMaxSuppression, Unique:
# the largest size, padded) are compared with onnxruntime on inputs whose real count is the bound (every
# element nonzero, every box kept up to the limit, every element distinct); tests/frontend's ONNX node cases
# check them with padding.
case(
    "bitcast-float32-int32",
    "BitCast",
    [("x", _x(3, 4))],
    "bitcast",
    opset=26,
    attrs={"to": TensorProto.INT32},
)
case(
    "bitcast-int64-float64",
    "BitCast",
    [("x", _rng.integers(-(2**40), 2**40, (5,)).astype(np.int64))],
    "bitcast",
    opset=26,
    attrs={"to": TensorProto.DOUBLE},
)
case("det-batched", "Det", [("x", _x(2, 3, 4, 4))], "det", opset=22, rtol=1e-4, atol=1e-5)
case(
    "det-singular-and-pivoting",
    "Det",
    [("x", np.array([[[0, 1, 2], [1, 0, 3], [4, -3, 8]], [[1, 2, 3], [2, 4, 6], [1, 0, 1]]], np.float32))],
    "det",
    opset=22,
    rtol=1e-5,
    atol=1e-5,
)
case(
    "nonzero-float-all-nonzero",
    "NonZero",
    [("x", _x(2, 3, 4) + np.where(_x(2, 3, 4) > 0, 3, -3).astype(np.float32))],
    "non_zero",
    opset=13,
)
_NMS_BOXES = np.concatenate([_x(2, 7, 2, lo=0, hi=10), _x(2, 7, 2, lo=1, hi=4)], axis=2)
_NMS_BOXES[..., 2:] += _NMS_BOXES[..., :2]  # y1, x1, y2, x2 corners
for center in (0, 1):
    case(
        f"nms-limit-center{center}",
        "NonMaxSuppression",
        [
            ("boxes", _NMS_BOXES),
            ("scores", _x(2, 3, 7, lo=0, hi=1)),
            C("max_out", _i(4)),
            C("iou", _f(1.0)),  # nothing is suppressed: the selection is the 4 best boxes of each class
        ],
        "non_max_suppression",
        opset=11,
        attrs={"center_point_box": center},
    )
for mode, ratio, ctm in (("avg", 2, "half_pixel"), ("max", 0, "output_half_pixel"), ("avg", 0, "half_pixel")):
    case(
        f"roialign-{mode}-ratio{ratio}-{ctm}",
        "RoiAlign",
        [
            ("x", _x(2, 3, 8, 9)),
            (
                "rois",
                np.array([[0.5, 1, 6, 5], [2, 2.5, 8.5, 7.9], [-1, -2, 3, 9], [4, 4, 4.2, 4.1]], np.float32),
            ),
            ("batch", _i(0, 1, 1, 0)),
        ],
        "roi_align",
        opset=16,
        attrs={
            "mode": mode,
            "output_height": 3,
            "output_width": 2,
            "sampling_ratio": ratio,
            "spatial_scale": 0.9,
            "coordinate_transformation_mode": ctm,
        },
        rtol=1e-4,
        atol=1e-5,
    )
for srt in (0, 1):
    case(
        f"unique-distinct-sorted{srt}",
        "Unique",
        [("x", _rng.permutation(12).astype(np.float32).reshape(3, 4) - 5)],
        "unique",
        opset=11,
        attrs={"sorted": srt},
        outputs=4,
    )
case(
    "unique-axis1-distinct",
    "Unique",
    [("x", _rng.integers(-3, 3, (2, 5)).astype(np.int64) * 10 + np.arange(5))],
    "unique",
    opset=11,
    attrs={"sorted": 1, "axis": 1},
    outputs=4,
)
case(
    "dft-real-axis1-opset17",
    "DFT",
    [("x", _x(2, 12, 3, 1))],
    "dft",
    opset=17,
    attrs={"axis": 1},
    rtol=1e-4,
    atol=1e-4,
)
case(
    "dft-complex-inverse-opset17",
    "DFT",
    [("x", _x(3, 7, 2))],
    "dft",
    opset=17,
    attrs={"axis": 1, "inverse": 1},
    rtol=1e-4,
    atol=1e-5,
)
case(
    "dft-rfft-length-opset20",
    "DFT",
    [("x", _x(2, 9, 1)), C("n", _i(16)[0]), C("axis", _i(1)[0])],
    "dft",
    opset=20,
    attrs={"onesided": 1},
    rtol=1e-4,
    atol=1e-4,
)
case(
    "col2im-strides-pads-dilations",
    "Col2Im",
    [("x", _x(2, 3 * 4, 9)), C("image", _i(5, 7)), C("block", _i(2, 2))],
    "col2im",
    opset=18,
    attrs={"strides": [2, 2], "pads": [1, 0, 0, 1], "dilations": [1, 2]},
)
_UNPOOL_X = _x(1, 2, 4, 4)
_UNPOOL_I = np.argmax(
    _UNPOOL_X.reshape(1, 2, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, 2, 2, 4), axis=-1
)  # the positions MaxPool(2, stride 2) picks, as flat indices into the 4 x 4 input
_UNPOOL_IDX = (
    np.arange(2).reshape(1, 2, 1, 1) * 16
    + (np.arange(2).reshape(1, 1, 2, 1) * 2 + _UNPOOL_I // 2) * 4
    + np.arange(2).reshape(1, 1, 1, 2) * 2
    + _UNPOOL_I % 2
).astype(np.int64)
case(
    "maxunpool-2x2",
    "MaxUnpool",
    [("x", _x(1, 2, 2, 2)), ("i", _UNPOOL_IDX)],
    "max_unpool",
    opset=11,
    attrs={"kernel_shape": [2, 2], "strides": [2, 2]},
)


def _loop_body(scan: bool) -> onnx.GraphProto:
    """(i, cond, x) -> (sum(x') < 40, x' = x * 0.5 + i + 1[, x']): the condition is computed at run time."""
    nodes = [
        helper.make_node("Mul", ["x", "half"], ["xh"]),
        helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["fi", "one"], ["f1"]),
        helper.make_node("Add", ["xh", "f1"], ["x2"]),
        helper.make_node("ReduceSum", ["x2"], ["s"], keepdims=0),
        helper.make_node("Less", ["s", "limit"], ["c2"]),
    ]
    outs = [
        helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
        helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 3]),
    ]
    if scan:
        nodes.append(helper.make_node("Neg", ["x2"], ["ys"]))
        outs.append(helper.make_tensor_value_info("ys", TensorProto.FLOAT, [2, 3]))
    consts = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("limit", TensorProto.FLOAT, [], [40.0 if not scan else 1e9]),
    ]
    inputs = [
        helper.make_tensor_value_info("i", TensorProto.INT64, []),
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
    ]
    return helper.make_graph(nodes, "body", inputs, outs, consts)


# a real loop: the trip count is a run-time input (and the condition stops it after a few iterations)
case(
    "loop-run-time-trip-count",
    "Loop",
    [("m", np.array(100, np.int64)), C("cond", np.array(True)), ("x0", _x(2, 3))],
    "loop",
    opset=16,
    attrs={"body": _loop_body(scan=False)},
)
# a constant trip count with a condition computed at run time (it stays true here: every scan row is real)
case(
    "loop-run-time-condition-scan",
    "Loop",
    [C("m", np.array(5, np.int64)), C("cond", np.array(True)), ("x0", _x(2, 3))],
    "loop",
    opset=16,
    attrs={"body": _loop_body(scan=True)},
    outputs=2,
)

# Scan of opset 8: a batch axis on every input and output, constant sequence lengths (zero after them)
_SCAN8_BODY = helper.make_graph(
    [helper.make_node("Add", ["s", "x"], ["s2"]), helper.make_node("Mul", ["s2", "x"], ["y"])],
    "scan8_body",
    [
        helper.make_tensor_value_info("s", TensorProto.FLOAT, [2]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
    ],
    [
        helper.make_tensor_value_info("s2", TensorProto.FLOAT, [2]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
    ],
)
for lens, dirs in ((None, 0), (_i(3, 1, 4), 1)):
    case(
        f"scan8-batch-{'lens' if lens is not None else 'full'}-dir{dirs}",
        "Scan",
        [("lens", lens, True), ("s0", _x(3, 2)), ("xs", _x(3, 4, 2))],
        {"slice", "reshape", "add", "mul", "concat", "identity"},
        opset=8,
        attrs={"body": _SCAN8_BODY, "num_scan_inputs": 1, "directions": [dirs]},
        outputs=2,
    )
case(
    "deform-conv-groups-stride-pad",
    "DeformConv",
    [
        ("x", _x(1, 4, 7, 6)),
        ("w", _x(6, 2, 3, 2)),
        ("offset", _x(1, 2 * 2 * 3 * 2, 4, 3) * 1.5),
        ("b", _x(6)),
        ("mask", _x(1, 2 * 3 * 2, 4, 3, lo=0, hi=1)),
    ],
    "deform_conv",
    opset=19,
    attrs={"strides": [2, 2], "pads": [1, 0, 1, 1], "dilations": [1, 2], "group": 2, "offset_group": 2},
    rtol=1e-4,
    atol=1e-5,
)
case(
    "deform-conv-no-bias-no-mask",
    "DeformConv",
    [("x", _x(2, 1, 5, 5)), C("w", _x(2, 1, 2, 2)), ("offset", _x(2, 8, 4, 4))],
    "deform_conv",
    opset=19,
    attrs={"kernel_shape": [2, 2]},
    rtol=1e-4,
    atol=1e-5,
)
case(
    "stft-window-onesided",
    "STFT",
    [("x", _x(2, 40, 1)), C("step", _i(6)[0]), ("w", _x(8, lo=0.2, hi=1.0))],
    {"gather", "reshape", "mul", "dft"},
    opset=17,
    rtol=1e-4,
    atol=1e-4,
)
case(
    "tensor-scatter-circular",
    "TensorScatter",
    [("cache", _x(2, 3, 5, 4)), ("update", _x(2, 3, 2, 4)), ("write", _i(1, 4))],
    "tensor_scatter",
    opset=24,
    attrs={"mode": "circular"},
)
case(
    "max-roi-pool",
    "MaxRoiPool",
    [
        ("x", _x(2, 3, 9, 8)),
        (
            "rois",
            np.array([[0, 1, 1, 6, 7], [1, 0, 2.5, 7.4, 4], [1, 3, 3, 3, 3], [0, -2, -1, 20, 5]], np.float32),
        ),
    ],
    "max_roi_pool",
    opset=1,
    attrs={"pooled_shape": [3, 2], "spatial_scale": 0.95},
)
case(
    "global-lp-pool-p3",
    "GlobalLpPool",
    [("x", _x(2, 3, 4, 5))],
    {"abs", "pow", "reduce_sum"},
    opset=2,
    attrs={"p": 3},
    rtol=1e-4,
)
