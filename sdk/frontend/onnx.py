"""ONNX -> kiln Module.

Initializers become constants (including old-IR models that also list them as graph inputs); the remaining
graph inputs become parameters (symbolic dims become :class:`Sym` unless bound by ``shapes``). Each ONNX node
maps to kiln operators through one converter in :data:`CONVERTERS`; data-dependent ONNX inputs (shapes, axes,
pads, starts...) must be constants and become attributes. Nodes whose inputs are all constants are folded
right away with the operators' NumPy references, so shape arithmetic (Shape -> Gather -> Concat -> Reshape),
ConstantOfShape and Range disappear at import. Identity and inference-mode Dropout disappear too.
Weights stored as external data (beside the model file) are memory-mapped (:func:`_external_tensors`).

Errors: :class:`ModelLoadError` for a file that is not an ONNX model or whose external data is missing;
:class:`UnsupportedOperatorError` listing every unsupported operator type with all its node names;
:class:`ImportErrorInNode` (naming the node) for a supported operator used in a way kiln cannot import, e.g. a
shape computed at run time, or an optional output kiln does not produce (reported only if something uses it).

onnxruntime's quantized contrib operators (domain ``com.microsoft``, written by ``quantize_static`` in
QOperator format: QLinearAdd, QGemm, ...) are imported too (:data:`MS_CONVERTERS`), as dequantize -> float
operator -> quantize.
"""

from __future__ import annotations

import heapq
import importlib
import importlib.util
import itertools
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.inliner
from onnx import numpy_helper

from ..ir import Constant, GraphFunction, Module, Node, Sym, TensorType, Value, Var
from ..ir.types import Dim, dtype_of, np_dtype
from ..ops import OpDef, get_op
from ..ops.base import OpError, limit_value, normalize_axis
from ..ops.selection import trim as trim_bounded


class ModelLoadError(ValueError):
    """The file is not a readable ONNX model."""


class UnsupportedOperatorError(ValueError):
    """The model uses operators kiln cannot import; the message lists every one with its node names."""


class ImportErrorInNode(ValueError):
    """A supported operator was used in a way kiln cannot import (message names the node)."""


# ONNX TensorProto element type -> kiln dtype
ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "float32",  # bfloat16: computed in float32, and float32 at the package's interface (NumPy has none)
}


class _Importer:
    def __init__(self, graph: onnx.GraphProto, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.env: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.node_name = ""
        self.op_type = ""
        # ONNX outputs a converter does not produce (e.g. MaxPool's Indices): name -> why, reported if used
        self.missing: dict[str, str] = {}
        self._serial = itertools.count()  # temporary names: unique and the same on every import
        # shapes with run-time dimensions, taken at import as constants of dimensions: Shape's input for each
        self.shape_of: dict[int, tuple[Value, dict[str, int]]] = {}

    # ---- helpers for converters
    def emit(self, op: str, inputs: Sequence[Value], out_names: Sequence[str], **attrs: Any) -> list[Value]:
        """Apply kiln operator ``op``; folded right away (with its reference) when every input is constant."""
        if inputs and all(isinstance(v, Constant) for v in inputs) and not _has_sym(attrs):
            opdef = get_op(op)
            try:
                values = opdef.reference([v.data for v in inputs], attrs)  # type: ignore[union-attr]
            except OpError:
                raise
            except Exception as e:
                data = [np.asarray(v.data).reshape(-1) for v in inputs if isinstance(v, Constant)]
                syms = sorted({str(d) for arr in data for d in arr if isinstance(d, Sym)})
                if syms:
                    raise self.fail(
                        f"{op} needs its inputs' values at import, but they depend on the run-time dimensions "
                        f"{', '.join(syms)}: give them sizes (shapes=)"
                    ) from e
                types = [str(v.type) for v in inputs]
                try:  # the reference assumes what infer checks: its error says what is wrong, where it has one
                    opdef.infer([v.type for v in inputs], attrs)
                except OpError as clear:
                    raise clear from None
                except Exception:  # noqa: BLE001, S110 - infer fails on these too: the message below says it
                    pass
                raise OpError(f"{op}: cannot compute it on the constant inputs {types} ({e})") from None
            return [Constant(n, np.asarray(v)) for n, v in zip(out_names, values, strict=True)]
        return self.add_node(op, inputs, out_names, attrs)

    def materialize(self, v: Value, name: str | None = None) -> Value:
        """``v`` as a value the compiled model can hold: a constant of dimensions (shape arithmetic on run-time
        sizes) becomes an int64 constant when it has no run-time dimension left, a run-time ``shape`` node when
        it is the shape itself, and an error otherwise."""
        if not isinstance(v, Constant) or v.data.dtype != object:
            return v
        if not any(isinstance(d, Sym) for d in v.data.reshape(-1)):
            return Constant(v.name, v.data.astype(np.int64))
        if v.uid in self.shape_of:
            x, window = self.shape_of[v.uid]
            return self.add_node("shape", [x], [name or self.tmp(v.name)], dict(window))[0]
        raise self.fail(
            f"a value computed from run-time dimensions ({v.name!r}) is used at run time; give them sizes"
        )

    def add_node(
        self, op: str, inputs: Sequence[Value], out_names: Sequence[str], attrs: dict[str, Any]
    ) -> list[Value]:
        """A node of kiln operator ``op``, never folded (for a pass to see: a QDQ graph's weights)."""
        inputs = [self.materialize(v) for v in inputs]
        types = get_op(op).infer([v.type for v in inputs], attrs)
        outs = tuple(Var(n, t) for n, t in zip(out_names, types, strict=True))
        self.nodes.append(Node(op, tuple(inputs), outs, attrs, self.node_name))
        return list(outs)

    def tmp(self, base: str) -> str:
        return f"{base}__{next(self._serial)}"

    def const_input(self, v: Value | None, what: str) -> np.ndarray:
        if v is None:
            raise self.fail(f"needs {what}")
        if not isinstance(v, Constant):
            raise self.fail(f"{what} must be a constant (it is computed at run time from {v.name!r})")
        return v.data

    def const_ints(self, v: Value | None, what: str) -> list[int]:
        """The values of constant integer input ``v`` (shapes, axes, starts...) as Python ints."""
        data = self.const_input(v, what)
        if data.dtype == object:
            syms = sorted({str(d) for d in data.reshape(-1) if isinstance(d, Sym)})
            if syms:
                raise self.fail(
                    f"{what} depends on the run-time dimensions {', '.join(syms)}: give them sizes"
                )
            data = data.astype(np.int64)
        if data.dtype.kind not in "iu":
            raise self.fail(f"{what} must be integers (int64), got {data.dtype}")
        return [int(d) for d in data.reshape(-1)]

    def const_dims(self, v: Value | None, what: str) -> list[Dim]:
        """A shape-like constant input (a target shape, slice bounds): ints, and :class:`Sym` where it was
        computed from run-time dimensions."""
        data = self.const_input(v, what)
        if data.dtype != object and data.dtype.kind not in "iu":
            raise self.fail(f"{what} must be integers (int64), got {data.dtype}")
        return list(_dims(data))

    def const_scalar(self, v: Value | None, what: str) -> Any:
        """The one value of constant input ``v`` (a scalar or a one-element tensor)."""
        data = self.const_input(v, what)
        if data.size != 1:
            raise self.fail(f"{what} must hold one value, it has shape {list(data.shape)}")
        return data.reshape(-1)[0]

    def lookup(self, name: str, where: str) -> Value:
        if name in self.env:
            return self.env[name]
        if name in self.missing:
            raise ImportErrorInNode(f"{where}: {name!r} is used, but {self.missing[name]}")
        raise ImportErrorInNode(f"{where}: {name!r} is not defined before it is used")

    def fail(self, msg: str) -> ImportErrorInNode:
        return ImportErrorInNode(f"node {self.node_name!r}: {msg}")


Converter = Callable[[_Importer, list[Value | None], dict[str, Any], list[str]], list[Value]]
CONVERTERS: dict[str, Converter] = {}


def converter(*names: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for n in names:
            CONVERTERS[n] = fn
        return fn

    return deco


def _has_sym(v: Any) -> bool:
    """``v`` (an attribute value) holds a symbolic dimension: a result whose size is known only at run time."""
    if isinstance(v, Sym):
        return True
    if isinstance(v, dict):
        return any(_has_sym(x) for x in v.values())
    return isinstance(v, list | tuple) and any(_has_sym(x) for x in v)


def _dims(arr: np.ndarray) -> tuple[Dim, ...]:
    """A shape given as a tensor: ints, or symbolic dimensions where it was computed from a dynamic shape."""
    return tuple(d if isinstance(d, Sym) else int(d) for d in np.asarray(arr).reshape(-1))


def _a(inputs: list[Value | None], i: int) -> Value:
    v = inputs[i] if i < len(inputs) else None
    if v is None:
        raise ValueError(f"missing input {i}")
    return v


# ------------------------------------------------------------------------------------------------ converters
_ELEMENTWISE = {
    "Add": "add",
    "Sub": "sub",
    "Mod": "mod",
    "Mul": "mul",
    "Div": "div",
    "Pow": "pow",
    "Max": "maximum",
    "Min": "minimum",
    "Relu": "relu",
    "Neg": "neg",
    "Abs": "abs",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Tanh": "tanh",
    "Erf": "erf",
    "Floor": "floor",
    "Ceil": "ceil",
    "Reciprocal": "reciprocal",
    "Sigmoid": "sigmoid",
    "Equal": "equal",
    "Less": "less",
    "Greater": "greater",
    "Where": "where",
    "HardSigmoid": "hard_sigmoid",
    "HardSwish": "hard_swish",
    "LeakyRelu": "leaky_relu",
    "Gelu": "gelu",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "Elu": "elu",
    "Selu": "selu",
    "PRelu": "prelu",
    "Not": "not",
    "And": "and",
    "Or": "or",
    "Xor": "xor",
    "GreaterOrEqual": "greater_equal",
    "LessOrEqual": "less_equal",
    "Round": "round",
    "Sign": "sign",
    "Sin": "sin",
    "Cos": "cos",
}


@converter(*_ELEMENTWISE)
def _elementwise(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    op = _ELEMENTWISE[im.op_type]
    vals = [v for v in ins if v is not None]
    if op in ("maximum", "minimum"):  # variadic Max/Min
        return _chain(im, op, vals, outs)
    keep = {k: attrs[k] for k in ("alpha", "beta", "gamma", "approximate", "fmod") if k in attrs}
    return im.emit(op, vals, outs, **keep)


def _chain(im: _Importer, op: str, vals: list[Value], outs: list[str]) -> list[Value]:
    """``op(op(op(v0, v1), v2), ...)`` for variadic ONNX operators (Sum, Max, Min); one input is the input."""
    if len(vals) == 1:
        return vals
    acc = vals[0]
    for v in vals[1:-1]:
        acc = im.emit(op, [acc, v], [im.tmp(outs[0])])[0]
    return im.emit(op, [acc, vals[-1]], outs)


@converter("Sum")
def _sum(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return _chain(im, "add", [v for v in ins if v is not None], outs)


@converter("Identity", "Dropout")
def _identity(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    training = ins[2] if len(ins) > 2 else None  # Dropout-12+: training_mode
    if training is not None and (not isinstance(training, Constant) or bool(training.data.reshape(-1)[0])):
        raise im.fail("Dropout in training mode is not supported (kiln compiles inference graphs)")
    res: list[Value] = [x]
    if len(outs) > 1 and outs[1]:  # Dropout's mask output: all ones in inference
        res.append(Constant(outs[1], np.ones(x.type.static_shape, dtype=bool)))
    return res


@converter("Clip")
def _clip(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    lo = attrs.get("min", -np.inf)
    hi = attrs.get("max", np.inf)
    if len(ins) > 1 and ins[1] is not None:
        lo = im.const_scalar(ins[1], "min")
    if len(ins) > 2 and ins[2] is not None:
        hi = im.const_scalar(ins[2], "max")
    x = _a(ins, 0)
    if not x.type.dtype.startswith("float"):  # integer bounds: the type's limits stand for +-inf
        lo, hi = limit_value(float(lo), x.type.dtype), limit_value(float(hi), x.type.dtype)
    return im.emit("clip", [x], outs, min=float(lo), max=float(hi))


@converter("Cast")
def _cast(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    to = ONNX_DTYPES.get(int(attrs["to"]))
    if to is None:
        raise im.fail(f"casting to ONNX type {attrs['to']} is not supported")
    return im.emit("cast", [_a(ins, 0)], outs, to=to)


def _conv_pads(
    im: _Importer,
    attrs: dict[str, Any],
    in_hw: Sequence[Any],
    k: Sequence[int],
    s: Sequence[int],
    d: Sequence[int],
) -> tuple[int, ...]:
    auto = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", ""):
        p = list(attrs.get("pads", [0] * (2 * len(k))))
        return tuple(p)
    if auto == "VALID":
        return (0,) * (2 * len(k))
    pads_b, pads_e = [], []
    for size, kk, ss, dd in zip(in_hw, k, s, d, strict=True):
        if not isinstance(size, int):
            raise im.fail("auto_pad SAME needs static spatial sizes")
        out = -(-size // ss)
        total = max(0, (out - 1) * ss + (kk - 1) * dd + 1 - size)
        small, big = total // 2, total - total // 2
        pads_b.append(small if auto == "SAME_UPPER" else big)
        pads_e.append(big if auto == "SAME_UPPER" else small)
    return tuple(pads_b + pads_e)


def _ints_attr(im: _Importer, attrs: dict[str, Any], key: str, n: int, default: int, lo: int) -> list[int]:
    """List attribute ``key`` (``n`` times ``default`` when absent), checked: ``n`` values, each >= ``lo``."""
    v = [int(x) for x in attrs.get(key, [default] * n)]
    if len(v) != n:
        raise im.fail(f"attribute {key!r} = {v} needs {n} values here, it has {len(v)}")
    if any(x < lo for x in v):
        raise im.fail(f"attribute {key!r} = {v}: every value must be at least {lo}")
    return v


def _window(im: _Importer, attrs: dict[str, Any], x: Value, k: Sequence[Any]) -> tuple[list[int], list[int]]:
    """A convolution's or pooling's strides and dilations, after checking the input's rank (N, C and one
    axis per kernel axis), the kernel and the list attributes' lengths."""
    nd = len(k)
    if x.type.ndim != nd + 2:
        raise im.fail(f"a {nd}-D kernel needs a {nd + 2}-D input (N, C and {nd} spatial axes), got {x.type}")
    if any(not isinstance(v, int) or v < 1 for v in k):
        raise im.fail(f"the kernel shape {list(k)} must be static and positive")
    if int(attrs.get("group", 1)) < 1:
        raise im.fail(f"group must be at least 1, got {attrs['group']}")
    if str(attrs.get("auto_pad", "NOTSET")) in ("NOTSET", ""):
        _ints_attr(im, attrs, "pads", 2 * nd, 0, 0)
    return _ints_attr(im, attrs, "strides", nd, 1, 1), _ints_attr(im, attrs, "dilations", nd, 1, 1)


def _to_2d(p: Sequence[int]) -> tuple[int, int, int, int]:
    return (p[0], p[1], p[2], p[3])


@converter("Conv")
def _conv(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x, w = _a(ins, 0), _a(ins, 1)
    b = ins[2] if len(ins) > 2 else None
    k = list(attrs.get("kernel_shape", w.type.shape[2:]))
    nd = len(k)
    if nd not in (1, 2):
        raise im.fail(f"{nd}-D convolution is not supported (1-D and 2-D are)")
    s, d = _window(im, attrs, x, k)
    pads = _conv_pads(im, attrs, x.type.shape[2:], k, s, d)
    args = [x, w] + ([b] if b is not None else [])
    pad = {"pad_value": attrs["pad_value"]} if "pad_value" in attrs else {}  # from ConvInteger (kiln's)
    if nd == 2:
        return im.emit(
            "conv2d",
            args,
            outs,
            strides=tuple(s),
            pads=_to_2d(pads),
            dilations=tuple(d),
            groups=int(attrs.get("group", 1)),
            **pad,
        )
    if nd == 1:  # 1-D convolution as 2-D with a unit height
        x2 = im.emit("reshape", [x], [im.tmp(outs[0])], shape=(*x.type.shape[:2], 1, x.type.shape[2]))[0]
        w2 = im.emit("reshape", [w], [im.tmp(outs[0])], shape=(*w.type.shape[:2], 1, w.type.shape[2]))[0]
        y = im.emit(
            "conv2d",
            [x2, w2, *args[2:]],
            [im.tmp(outs[0])],
            strides=(1, s[0]),
            pads=(0, pads[0], 0, pads[1]),
            dilations=(1, d[0]),
            groups=int(attrs.get("group", 1)),
            **pad,
        )[0]
        shp = y.type.shape
        return im.emit("reshape", [y], outs, shape=(shp[0], shp[1], shp[3]))
    raise im.fail(f"{nd}-D convolution is not supported (1-D and 2-D are)")


@converter("Gemm")
def _gemm(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    a, b = _a(ins, 0), _a(ins, 1)
    c = ins[2] if len(ins) > 2 else None
    if attrs.get("transA", 0):
        a = im.emit("transpose", [a], [im.tmp(outs[0])], perm=(1, 0))[0]
    if attrs.get("transB", 0):
        b = im.emit("transpose", [b], [im.tmp(outs[0])], perm=(1, 0))[0]
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        b = im.emit("mul", [b, Constant(im.tmp("alpha"), np.array(alpha, "f4"))], [im.tmp(outs[0])])[0]
    if c is None:
        return im.emit("matmul", [a, b], outs)
    y = im.emit("matmul", [a, b], [im.tmp(outs[0])])[0]
    if beta != 1.0:
        c = im.emit("mul", [c, Constant(im.tmp("beta"), np.array(beta, "f4"))], [im.tmp(outs[0])])[0]
    return im.emit("add", [y, c], outs)


_MATMUL_TYPES = ("float32", "float64", "float16", "int32", "int64")


@converter("MatMul")
def _matmul(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    a, b = _a(ins, 0), _a(ins, 1)
    for v in (a, b):
        if v.type.dtype not in _MATMUL_TYPES:
            raise im.fail(
                f"MatMul does not take {v.type.dtype} operands (ONNX allows float, double, float16, bfloat16, "
                "int32, int64, uint32, uint64); 8-bit matrices are multiplied with MatMulInteger or "
                "QLinearMatMul, which accumulate in int32"
            )
    return im.emit("matmul", [a, b], outs)


@converter("MatMulInteger")
def _matmul_integer(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """int8/uint8 operands, optional zero points (per tensor, per row of A or per column of B); int32
    accumulation and result. The 8-bit operands go straight into the int32-accumulating matmul: a constant
    B's zero point is subtracted from B now (an int16 constant), and A's zero point becomes the correction
    ``- za * colsum(B)``, elementwise on the result (fused into the kernel's epilogue). A B computed at run
    time with a zero point is widened to int16 first (and A with it)."""
    a, b = _a(ins, 0), _a(ins, 1)
    if a.type.ndim < 1 or b.type.ndim < 1:
        raise im.fail(f"MatMulInteger multiplies matrices or vectors, got {a.type} and {b.type}")
    za, zb = (ins[i] if len(ins) > i and _live(ins[i]) else None for i in (2, 3))
    if zb is not None:
        b = _narrow_operand(im, b, zb, -1, outs[0])
    if za is None:
        return im.emit("matmul", [a, b], outs)
    if not isinstance(b, Constant):  # no constant column sums: the zero point is subtracted from A
        return im.emit("matmul", [_narrow_operand(im, a, za, -2, outs[0]), b], outs)
    acc = im.emit("matmul", [a, b], [im.tmp(outs[0])])[0]
    return [_zero_point_correction(im, acc, za, b.data.astype(np.int64).sum(axis=-2), -2, outs)]


@converter("BatchNormalization")
def _bn(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit(
        "batch_norm", [_a(ins, i) for i in range(5)], outs[:1], epsilon=float(attrs.get("epsilon", 1e-5))
    )


def _pool(
    im: _Importer, op: str, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    x = _a(ins, 0)
    k = list(attrs["kernel_shape"])
    if len(k) != 2:
        raise im.fail(f"{len(k)}-D pooling is not supported (2-D is)")
    s, d = _window(im, attrs, x, k)
    pads = _conv_pads(im, attrs, x.type.shape[2:], k, s, d)
    extra = {"count_include_pad": int(attrs.get("count_include_pad", 0))} if op == "avg_pool2d" else {}
    return im.emit(
        op,
        [x],
        outs[:1],
        kernel=tuple(k),
        strides=tuple(s),
        pads=_to_2d(pads),
        ceil_mode=int(attrs.get("ceil_mode", 0)),
        dilations=tuple(d),
        **extra,
    )


@converter("MaxPool")
def _maxpool(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return _pool(im, "max_pool2d", ins, attrs, outs)


@converter("AveragePool")
def _avgpool(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return _pool(im, "avg_pool2d", ins, attrs, outs)


@converter("GlobalAveragePool")
def _gap(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit("global_avg_pool2d", [_a(ins, 0)], outs)


@converter("GlobalMaxPool")
def _gmp(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    return im.emit("reduce_max", [x], outs, axes=tuple(range(2, x.type.ndim)), keepdims=1)


@converter("LRN")
def _lrn(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit(
        "lrn",
        [_a(ins, 0)],
        outs,
        size=int(attrs["size"]),
        alpha=float(attrs.get("alpha", 1e-4)),
        beta=float(attrs.get("beta", 0.75)),
        bias=float(attrs.get("bias", 1.0)),
    )


@converter("Softmax", "LogSoftmax")
def _softmax(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    op = "softmax" if im.op_type == "Softmax" else "log_softmax"
    if im.opset >= 13:
        return im.emit(op, [x], outs, axis=int(attrs.get("axis", -1)))
    # opset < 13: flatten to 2-D at `axis` (default 1), softmax over the second dimension, reshape back
    nd = x.type.ndim
    axis = int(attrs.get("axis", 1)) % max(nd, 1)
    if axis == nd - 1:
        return im.emit(op, [x], outs, axis=-1)
    rows, cols = _dim_product(im, x, 0, axis), _dim_product(im, x, axis, nd)
    flat = im.emit("reshape", [x], [im.tmp(outs[0])], shape=(rows, cols))[0]
    y = im.emit(op, [flat], [im.tmp(outs[0])], axis=-1)[0]
    return im.emit("reshape", [y], outs, shape=x.type.shape)


def _resolve_shape(im: _Importer, x: Value, shape: Sequence[Dim], allowzero: bool) -> tuple[Dim, ...]:
    """ONNX Reshape's target shape with 0 (copy the input dimension) and -1 (the rest) resolved; symbolic
    dimensions are expressions (:class:`Sym`), so -1 is the input's size divided by the other sizes."""
    src = x.type.shape
    if not allowzero and any(isinstance(d, int) and d == 0 for d in shape[len(src) :]):
        raise im.fail(
            f"shape {list(shape)} has a 0 (copy the input's dimension) at a position {x.type} does not have"
        )
    if sum(1 for d in shape if isinstance(d, int) and d == -1) > 1 or any(
        isinstance(d, int) and d < -1 for d in shape
    ):
        raise im.fail(f"shape {list(shape)}: at most one -1, and no other negative size")
    out: list[Dim] = [
        src[i] if (isinstance(d, int) and d == 0 and not allowzero) else d for i, d in enumerate(shape)
    ]
    total: Dim = 1
    for d in src:
        total = total * d
    if any(isinstance(d, int) and d == -1 for d in out):
        i = next(i for i, d in enumerate(out) if isinstance(d, int) and d == -1)
        known: Dim = 1
        for j, d in enumerate(out):
            if j != i:
                known = known * d
        try:
            rest = total // known if known != 0 else 0
        except TypeError:
            rest = None
        if rest is None or rest * known != total:
            raise im.fail(f"cannot reshape {x.type} to {tuple(shape)}: the sizes do not divide")
        out[i] = rest
    return tuple(int(d) if isinstance(d, np.integer) else d for d in out)


@converter("Reshape")
def _reshape(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    shape = im.const_dims(ins[1], "the target shape")
    return im.emit("reshape", [x], outs, shape=_resolve_shape(im, x, shape, bool(attrs.get("allowzero", 0))))


@converter("Flatten")
def _flatten(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    nd = x.type.ndim
    axis = int(attrs.get("axis", 1))
    axis = axis + nd if axis < 0 else axis
    if not 0 <= axis <= nd:
        raise im.fail(f"Flatten axis {attrs.get('axis')} is out of range for {x.type}")
    return im.emit("reshape", [x], outs, shape=(_dim_product(im, x, 0, axis), _dim_product(im, x, axis, nd)))


def _dim_product(im: _Importer, x: Value, lo: int, hi: int) -> Dim:
    """The product of dimensions ``lo:hi`` of ``x`` (an expression when some are symbolic)."""
    out: Dim = 1
    for d in x.type.shape[lo:hi]:
        out = out * d
    return out


def _axes_attr_or_input(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], i: int
) -> list[int] | None:
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(ins) > i and ins[i] is not None:
        return im.const_ints(ins[i], "axes")
    return None


@converter("Squeeze")
def _squeeze(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    shape = x.type.shape
    axes = _axes_attr_or_input(im, ins, attrs, 1)
    drop = {a % len(shape) for a in axes} if axes is not None else {i for i, d in enumerate(shape) if d == 1}
    if any(shape[a] != 1 for a in drop):
        raise im.fail(f"cannot squeeze axes {sorted(drop)} of {x.type}: they must have size 1")
    return im.emit("reshape", [x], outs, shape=tuple(d for i, d in enumerate(shape) if i not in drop))


@converter("Unsqueeze")
def _unsqueeze(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    axes = _axes_attr_or_input(im, ins, attrs, 1) or []
    shape = list(x.type.shape)
    nd = len(shape) + len(axes)
    for a in sorted(a % nd for a in axes):
        shape.insert(a, 1)
    return im.emit("reshape", [x], outs, shape=tuple(shape))


@converter("Transpose")
def _transpose(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    perm = tuple(int(p) for p in attrs.get("perm", reversed(range(x.type.ndim))))
    return im.emit("transpose", [x], outs, perm=perm)


@converter("Concat")
def _concat(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    vals = [v for v in ins if v is not None and (not v.type.is_static or v.type.numel > 0 or v.type.ndim > 1)]
    return im.emit("concat", vals, outs, axis=int(attrs["axis"] if im.opset >= 4 else attrs.get("axis", 1)))


@converter("Slice")
def _slice(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    if im.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes, steps = attrs.get("axes"), None
    else:
        starts = im.const_dims(ins[1], "starts")
        ends = im.const_dims(ins[2], "ends")
        axes = im.const_ints(ins[3], "axes") if len(ins) > 3 and ins[3] else None
        steps = im.const_ints(ins[4], "steps") if len(ins) > 4 and ins[4] else None
    big = 2**62
    ends = [min(max(e, -big), big) if isinstance(e, int) else e for e in ends]
    return im.emit(
        "slice",
        [x],
        outs,
        starts=tuple(starts),
        ends=tuple(ends),
        axes=tuple(axes) if axes is not None else None,
        steps=tuple(steps) if steps else None,
    )


@converter("Split")
def _split(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    axis = normalize_axis(int(attrs.get("axis", 0)), x.type.ndim, "Split")
    dim = x.type.shape[axis]
    if "split" in attrs:
        sizes = [int(s) for s in attrs["split"]]
    elif len(ins) > 1 and ins[1] is not None:
        sizes = im.const_ints(ins[1], "split sizes")
    else:
        n = int(attrs.get("num_outputs", len(outs)))
        if n < 1:
            raise im.fail(f"num_outputs must be at least 1, got {n}")
        if not isinstance(dim, int):
            raise im.fail(f"splitting symbolic dimension {dim} of {x.type} into equal parts needs its size")
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    return im.emit("split", [x], outs, axis=axis, sizes=tuple(sizes))


@converter("Gather")
def _gather(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit("gather", [_a(ins, 0), _a(ins, 1)], outs, axis=int(attrs.get("axis", 0)))


@converter("Pad")
def _pad(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    mode = attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if im.opset < 11:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = im.const_ints(ins[1], "pads")
        value = float(im.const_scalar(ins[2], "constant value")) if len(ins) > 2 and ins[2] else 0.0
        if len(ins) > 3 and ins[3] is not None:
            axes = [normalize_axis(int(a), x.type.ndim, "Pad") for a in im.const_ints(ins[3], "axes")]
            if len(pads) != 2 * len(axes):
                raise im.fail(f"pads {list(pads)} need two values per axis of {axes}")
            full = [0] * (2 * x.type.ndim)
            for j, a in enumerate(axes):
                full[a], full[a + x.type.ndim] = pads[j], pads[j + len(axes)]
            pads = full
    return im.emit("pad", [x], outs, pads=tuple(pads), mode=mode, value=value)


@converter("Expand")
def _expand(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    shape = tuple(im.const_dims(ins[1], "the target shape"))
    return im.emit("expand", [_a(ins, 0)], outs, shape=shape)


@converter("Tile")
def _tile(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    repeats = tuple(im.const_ints(ins[1], "repeats"))
    return im.emit("tile", [_a(ins, 0)], outs, repeats=repeats)


def _resize_hw(
    im: _Importer,
    x: Value,
    scales: np.ndarray | None,
    sizes: np.ndarray | None,
    axes: list[int] | None,
    policy: str,
) -> tuple[tuple[float, float], tuple[int, int]]:
    """Float32 scales and the output size of H and W of an NCHW tensor from ONNX scales or sizes."""
    shape = x.type.shape
    if x.type.ndim != 4 or not all(isinstance(d, int) for d in shape[2:]):
        raise im.fail(f"resizing is supported for NCHW tensors with static H and W, got {x.type}")
    h, w = int(shape[2]), int(shape[3])  # type: ignore[arg-type]
    full = list(range(4)) if axes is None else [a % 4 for a in axes]
    if sizes is not None and sizes.size:
        if sizes.dtype.kind not in "iu" or sizes.min() < 1 or sizes.max() >= 2**31:
            raise im.fail(f"sizes {list(sizes.reshape(-1))} must be positive int64 sizes")
        given = dict(zip(full, (int(s) for s in sizes.reshape(-1)), strict=True))
        if any(given.get(a, shape[a]) != shape[a] for a in (0, 1)):
            raise im.fail("only the spatial axes (H, W) of an NCHW tensor can be resized")
        oh, ow = given.get(2, h), given.get(3, w)
        if policy in ("not_larger", "not_smaller"):
            ratios = [np.float32(given[a]) / np.float32(h if a == 2 else w) for a in full if a in (2, 3)]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            oh = int(s * h + 0.5) if 2 in full else h
            ow = int(s * w + 0.5) if 3 in full else w
            return (float(s) if 2 in full else 1.0, float(s) if 3 in full else 1.0), (oh, ow)
        return (float(np.float32(oh) / np.float32(h)), float(np.float32(ow) / np.float32(w))), (oh, ow)
    if scales is None or not scales.size:
        raise im.fail("needs scales or sizes")
    given_s = dict(zip(full, (float(np.float32(s)) for s in scales.reshape(-1)), strict=True))
    if given_s.get(0, 1.0) != 1.0 or given_s.get(1, 1.0) != 1.0:
        raise im.fail(f"only the spatial axes (H, W) of an NCHW tensor can be resized, got scales {scales}")
    sh, sw = given_s.get(2, 1.0), given_s.get(3, 1.0)
    if not all(np.isfinite(v) and v > 0 for v in (sh, sw)):
        raise im.fail(f"scales {list(scales.reshape(-1))} must be positive and finite")
    return (sh, sw), (int(np.float32(sh) * np.float32(h)), int(np.float32(sw) * np.float32(w)))


def _optional_const(im: _Importer, ins: list[Value | None], i: int, what: str) -> np.ndarray | None:
    return im.const_input(ins[i], what) if len(ins) > i and ins[i] is not None else None


@converter("Resize", "Upsample")
def _resize(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """Resize (opset 10: scales only, asymmetric coordinates; 11+: roi/scales/sizes and the coordinate
    attributes; 18+: axes, keep_aspect_ratio_policy, antialias) and its predecessor Upsample."""
    x = _a(ins, 0)
    mode = str(attrs.get("mode", "nearest"))
    mode = "linear" if mode == "bilinear" else mode  # Upsample-7 spelling
    if mode not in ("nearest", "linear"):
        raise im.fail(f"resize mode {mode!r} is not supported (nearest and linear are)")
    if im.op_type == "Upsample" or im.opset < 11:
        if "scales" in attrs:
            up_scales = np.asarray(attrs["scales"], dtype=np.float32)
        else:
            up_scales = im.const_input(ins[1] if len(ins) > 1 else None, "scales")
        (sh, sw), size = _resize_hw(im, x, up_scales, None, None, "stretch")
        # onnxruntime's rule before nearest_mode existed: truncate when upsampling, ceil when downsampling
        if mode == "nearest" and (sh < 1) != (sw < 1):
            raise im.fail("nearest resize that upsamples one axis and downsamples the other is not supported")
        nearest = "ceil" if sh < 1 else "floor"
        ctm = "asymmetric"
    else:
        ctm = str(attrs.get("coordinate_transformation_mode", "half_pixel"))
        nearest = str(attrs.get("nearest_mode", "round_prefer_floor"))
        scales = _optional_const(im, ins, 2, "scales")
        sizes = _optional_const(im, ins, 3, "sizes")
        axes = [int(a) for a in attrs["axes"]] if "axes" in attrs else None
        (sh, sw), size = _resize_hw(
            im, x, scales, sizes, axes, str(attrs.get("keep_aspect_ratio_policy", "stretch"))
        )
        if int(attrs.get("antialias", 0)) and mode == "linear" and min(sh, sw) < 1:
            raise im.fail("antialiased linear downsampling is not supported")
    return im.emit(
        "resize",
        [x],
        outs,
        scales=(sh, sw),
        sizes=size,
        mode=mode,
        coordinate_transformation_mode=ctm,
        nearest_mode=nearest,
    )


@converter("ReduceMean", "ReduceSum", "ReduceMax")
def _reduce(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    op = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max"}[im.op_type]
    axes = _axes_attr_or_input(im, ins, attrs, 1)
    if not axes and attrs.get("noop_with_empty_axes", 0):
        return im.emit("identity", [_a(ins, 0)], outs)
    return im.emit(
        op, [_a(ins, 0)], outs, axes=tuple(axes) if axes else None, keepdims=int(attrs.get("keepdims", 1))
    )


@converter("LayerNormalization")
def _layer_norm(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    args = [v for v in ins[:3] if v is not None]
    return im.emit(
        "layer_norm",
        args,
        outs[:1],
        axis=int(attrs.get("axis", -1)),
        epsilon=float(attrs.get("epsilon", 1e-5)),
    )


# ---- ONNX operators that only ever compute shapes/constants: evaluated here when their inputs are constant
@converter("Shape")
def _shape(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    window: dict[str, int] = {k: int(attrs[k]) for k in ("start", "end") if k in attrs}
    if x.type.is_static:  # fold: the shape of a statically shaped tensor is a constant
        x = Constant(x.name, np.broadcast_to(np.zeros((), np_dtype(x.type.dtype)), x.type.static_shape))
        return im.emit("shape", [x], outs, **window)
    # a shape with symbolic dimensions: a constant of dimensions (an int64 tensor whose entries may be Syms),
    # so the shape arithmetic after it folds at import like a static one does
    dims = np.empty(x.type.ndim, dtype=object)
    dims[:] = list(x.type.shape)
    sl = get_op("shape")._slice(x.type.ndim, window)  # type: ignore[attr-defined]
    c = Constant(outs[0], dims[sl])
    im.shape_of[c.uid] = (x, window)
    return [c]


@converter("Size")
def _size(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return [Constant(outs[0], np.array(_a(ins, 0).type.numel, dtype=np.int64))]


@converter("Constant")
def _constant(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    if "value" in attrs:
        return [Constant(outs[0], attrs["value"])]
    for key, dt in (("value_float", "f4"), ("value_int", "i8"), ("value_floats", "f4"), ("value_ints", "i8")):
        if key in attrs:
            return [Constant(outs[0], np.array(attrs[key], dtype=dt))]
    raise im.fail("unsupported Constant attribute")


@converter("ConstantOfShape")
def _const_of_shape(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    value = {"value": attrs["value"]} if "value" in attrs else {}
    return im.emit("constant_of_shape", [_a(ins, 0)], outs, **value)


@converter("Range")
def _range(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit("range", [_a(ins, i) for i in range(3)], outs)


# ---- operators added for real models (issue 10): math, indexing, ordering, normalization, ConvTranspose, Einsum
_UNARY_MORE = {
    "Tan": "tan",
    "Atan": "atan",
    "Asin": "asin",
    "Acos": "acos",
    "Sinh": "sinh",
    "Cosh": "cosh",
    "Asinh": "asinh",
    "Acosh": "acosh",
    "Atanh": "atanh",
    "IsNaN": "is_nan",
    "IsInf": "is_inf",
    "Mish": "mish",
    "Swish": "swish",
    "Celu": "celu",
    "ThresholdedRelu": "thresholded_relu",
    "Shrink": "shrink",
}


@converter(*_UNARY_MORE)
def _unary_more(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    if im.op_type == "Celu" and float(attrs.get("alpha", 1.0)) == 0:
        raise im.fail("Celu's alpha must not be 0 (it divides by it)")
    return im.emit(_UNARY_MORE[im.op_type], [_a(ins, 0)], outs, **attrs)


@converter("BitShift")
def _bit_shift(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit("bit_shift", [_a(ins, 0), _a(ins, 1)], outs, direction=str(attrs["direction"]))


_BITWISE = {
    "BitwiseAnd": "bitwise_and",
    "BitwiseOr": "bitwise_or",
    "BitwiseXor": "bitwise_xor",
    "BitwiseNot": "bitwise_not",
}


@converter(*_BITWISE)
def _bitwise(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit(_BITWISE[im.op_type], [v for v in ins if v is not None], outs)


@converter("GridSample")
def _grid_sample(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    return im.emit(
        "grid_sample",
        [_a(ins, 0), _a(ins, 1)],
        outs,
        mode=str(attrs.get("mode", "linear" if im.opset >= 20 else "bilinear")),
        padding_mode=str(attrs.get("padding_mode", "zeros")),
        align_corners=int(attrs.get("align_corners", 0)),
    )


@converter("Mean")
def _mean(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    vals = [v for v in ins if v is not None]
    return vals if len(vals) == 1 else im.emit("mean", vals, outs)


@converter("CastLike")
def _cast_like(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit("cast", [_a(ins, 0)], outs, to=_a(ins, 1).type.dtype)


_REDUCE_MORE = {
    "ReduceMin": "reduce_min",
    "ReduceProd": "reduce_prod",
    "ReduceL1": "reduce_l1",
    "ReduceL2": "reduce_l2",
    "ReduceLogSum": "reduce_log_sum",
    "ReduceLogSumExp": "reduce_log_sum_exp",
    "ReduceSumSquare": "reduce_sum_square",
}


@converter(*_REDUCE_MORE)
def _reduce_more(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    axes = _axes_attr_or_input(im, ins, attrs, 1)
    x = _a(ins, 0)
    if not axes and attrs.get("noop_with_empty_axes", 0):
        return im.emit("identity", [x], outs)
    axes = [normalize_axis(a, x.type.ndim, im.op_type) for a in axes or []]
    if x.type.is_static and any(x.type.shape[a] == 0 for a in (axes or range(x.type.ndim))):
        raise im.fail(f"reducing over an empty dimension of {x.type} is not supported")
    return im.emit(
        _REDUCE_MORE[im.op_type],
        [x],
        outs,
        axes=tuple(axes) if axes else None,
        keepdims=int(attrs.get("keepdims", 1)),
    )


@converter("ArgMax", "ArgMin")
def _arg(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit(
        "arg_max" if im.op_type == "ArgMax" else "arg_min",
        [_a(ins, 0)],
        outs,
        axis=int(attrs.get("axis", 0)),
        keepdims=int(attrs.get("keepdims", 1)),
        select_last_index=int(attrs.get("select_last_index", 0)),
    )


@converter("TopK")
def _topk(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    k = int(attrs["k"]) if im.opset < 10 else int(im.const_scalar(ins[1], "K"))
    return im.emit(
        "top_k",
        [_a(ins, 0)],
        outs[:2],
        k=k,
        axis=int(attrs.get("axis", -1)),
        largest=int(attrs.get("largest", 1)),
    )


@converter("CumSum", "CumProd")
def _cumsum(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    axis = int(im.const_scalar(ins[1], "axis"))
    return im.emit(
        "cumsum" if im.op_type == "CumSum" else "cumprod",
        [_a(ins, 0)],
        outs,
        axis=axis,
        exclusive=int(attrs.get("exclusive", 0)),
        reverse=int(attrs.get("reverse", 0)),
    )


@converter("ReverseSequence")
def _reverse_sequence(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    return im.emit(
        "reverse_sequence",
        [_a(ins, 0), _a(ins, 1)],
        outs,
        batch_axis=int(attrs.get("batch_axis", 1)),
        time_axis=int(attrs.get("time_axis", 0)),
    )


@converter("LpPool")
def _lp_pool(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """``(sum over the window of |x|^p)^(1/p)``: an average pool that counts the padding, times the window
    size, between two powers."""
    x = _a(ins, 0)
    p = float(attrs.get("p", 2))
    if p <= 0:
        raise im.fail(f"needs p > 0, got {p}")
    k = list(attrs["kernel_shape"])
    dt = x.type.dtype
    t = im.emit("abs", [x], [im.tmp(outs[0])])[0]
    t = im.emit("pow", [t, _scalar(im, p, dt)], [im.tmp(outs[0])])[0]
    avg = _pool(im, "avg_pool2d", [t], {**attrs, "count_include_pad": 1}, [im.tmp(outs[0])])[0]
    s = im.emit("mul", [avg, _scalar(im, float(np.prod(k)), dt)], [im.tmp(outs[0])])[0]
    return im.emit("pow", [s, _scalar(im, 1.0 / p, dt)], outs)


@converter("Hardmax")
def _hardmax(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    if im.opset >= 13:
        return im.emit("hardmax", [x], outs, axis=int(attrs.get("axis", -1)))
    nd = x.type.ndim
    axis = int(attrs.get("axis", 1)) % max(nd, 1)
    rows, cols = _dim_product(im, x, 0, axis), _dim_product(im, x, axis, nd)
    flat = im.emit("reshape", [x], [im.tmp(outs[0])], shape=(rows, cols))[0]
    y = im.emit("hardmax", [flat], [im.tmp(outs[0])], axis=-1)[0]
    return im.emit("reshape", [y], outs, shape=x.type.shape)


@converter("GatherElements")
def _gather_elements(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    return im.emit("gather_elements", [_a(ins, 0), _a(ins, 1)], outs, axis=int(attrs.get("axis", 0)))


@converter("GatherND")
def _gather_nd(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit("gather_nd", [_a(ins, 0), _a(ins, 1)], outs, batch_dims=int(attrs.get("batch_dims", 0)))


@converter("ScatterElements", "Scatter")
def _scatter_elements(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    return im.emit(
        "scatter_elements",
        [_a(ins, 0), _a(ins, 1), _a(ins, 2)],
        outs,
        axis=int(attrs.get("axis", 0)),
        reduction=str(attrs.get("reduction", "none")),
    )


@converter("ScatterND")
def _scatter_nd(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    return im.emit(
        "scatter_nd",
        [_a(ins, 0), _a(ins, 1), _a(ins, 2)],
        outs,
        reduction=str(attrs.get("reduction", "none")),
    )


@converter("OneHot")
def _one_hot(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    depth = int(im.const_scalar(ins[1], "depth"))
    return im.emit("one_hot", [_a(ins, 0), _a(ins, 2)], outs, depth=depth, axis=int(attrs.get("axis", -1)))


@converter("Trilu")
def _trilu(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    k = int(im.const_scalar(ins[1], "k")) if len(ins) > 1 and ins[1] is not None else 0
    n, m = x.type.shape[-2:]
    if not isinstance(n, int) or not isinstance(m, int):
        raise im.fail(f"Trilu needs static matrix dimensions, got {x.type}")
    diff = np.arange(m)[None, :] - np.arange(n)[:, None]
    mask = diff >= k if int(attrs.get("upper", 1)) else diff <= k
    zero = Constant(im.tmp("zero"), np.zeros((), np_dtype(x.type.dtype)))
    return im.emit("where", [Constant(im.tmp("mask"), mask), x, zero], outs)


@converter("DepthToSpace", "SpaceToDepth")
def _depth_space(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    x = _a(ins, 0)
    if x.type.ndim != 4 or not x.type.is_static:
        raise im.fail(f"needs a static NCHW input, got {x.type}")
    n, c, h, w = x.type.static_shape
    b = int(attrs["blocksize"])
    if b < 1 or (c % (b * b) if im.op_type == "DepthToSpace" else h % b or w % b):
        raise im.fail(f"blocksize {b} does not divide the input {x.type} into blocks")
    if im.op_type == "DepthToSpace":
        if str(attrs.get("mode", "DCR")) == "CRD":
            shape6, perm = (n, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3)
        else:
            shape6, perm = (n, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2)
        final: tuple[int, ...] = (n, c // (b * b), h * b, w * b)
    else:
        crd = str(attrs.get("mode", "DCR")) == "CRD"
        shape6, perm = (n, c, h // b, b, w // b, b), (0, 1, 3, 5, 2, 4) if crd else (0, 3, 5, 1, 2, 4)
        final = (n, c * b * b, h // b, w // b)
    t = im.emit("reshape", [x], [im.tmp(outs[0])], shape=shape6)[0]
    t = im.emit("transpose", [t], [im.tmp(outs[0])], perm=perm)[0]
    return im.emit("reshape", [t], outs, shape=final)


def _scalar(im: _Importer, value: float, dtype: str) -> Constant:
    return Constant(im.tmp("c"), np.array(value, dtype=np_dtype(dtype)))


def _per_channel(im: _Importer, v: Value, nd: int, out: str) -> Value:
    """A (C,) tensor reshaped to broadcast along axis 1 of a rank-``nd`` tensor."""
    if v.type.ndim != 1:
        raise im.fail(f"a per-channel parameter must be 1-D, got {v.type}")
    return im.emit("reshape", [v], [im.tmp(out)], shape=(v.type.shape[0],) + (1,) * (nd - 2))[0]


def _normalize_rows(im: _Importer, x: Value, axis: int, eps: float, out: str) -> Value:
    """``(x - mean) / sqrt(var + eps)`` over the axes from ``axis`` on (layer_norm with a unit scale)."""
    one = Constant(im.tmp("one"), np.ones((1,), np_dtype(x.type.dtype)))
    return im.emit("layer_norm", [x, one], [out], axis=axis, epsilon=eps)[0]


@converter("InstanceNormalization")
def _instance_norm(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    x, scale, bias = _a(ins, 0), _a(ins, 1), _a(ins, 2)
    nd = x.type.ndim
    y = _normalize_rows(im, x, 2, float(attrs.get("epsilon", 1e-5)), im.tmp(outs[0]))
    y = im.emit("mul", [y, _per_channel(im, scale, nd, outs[0])], [im.tmp(outs[0])])[0]
    return im.emit("add", [y, _per_channel(im, bias, nd, outs[0])], outs)


@converter("GroupNormalization")
def _group_norm(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    x, scale, bias = _a(ins, 0), _a(ins, 1), _a(ins, 2)
    if not x.type.is_static:
        raise im.fail(f"needs a static input shape, got {x.type}")
    shape = x.type.static_shape
    g = int(attrs["num_groups"])
    if len(shape) < 2 or g < 1 or shape[1] % g:
        raise im.fail(f"num_groups {g} does not divide the channels of {x.type} (N, C, ...)")
    nd, c = len(shape), shape[1]
    if scale.type.ndim != 1 or bias.type.ndim != 1:
        raise im.fail(f"scale and bias must be 1-D, got {scale.type} and {bias.type}")
    flat = im.emit("reshape", [x], [im.tmp(outs[0])], shape=(shape[0], g, int(np.prod(shape[1:])) // g))[0]
    y = _normalize_rows(im, flat, 2, float(attrs.get("epsilon", 1e-5)), im.tmp(outs[0]))
    y = im.emit("reshape", [y], [im.tmp(outs[0])], shape=shape)[0]
    if scale.type.shape[0] != c:  # opset 18: one scale and bias per group
        scale, bias = (
            im.emit(
                "reshape",
                [
                    im.emit(
                        "expand",
                        [im.emit("reshape", [v], [im.tmp(outs[0])], shape=(g, 1))[0]],
                        [im.tmp(outs[0])],
                        shape=(g, c // g),
                    )[0]
                ],
                [im.tmp(outs[0])],
                shape=(c,),
            )[0]
            for v in (scale, bias)
        )
    y = im.emit("mul", [y, _per_channel(im, scale, nd, outs[0])], [im.tmp(outs[0])])[0]
    return im.emit("add", [y, _per_channel(im, bias, nd, outs[0])], outs)


@converter("RMSNormalization")
def _rms_norm(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x, scale = _a(ins, 0), _a(ins, 1)
    nd = x.type.ndim
    axis = int(attrs.get("axis", -1)) % nd
    dt = x.type.dtype
    sq = im.emit("mul", [x, x], [im.tmp(outs[0])])[0]
    ms = im.emit("reduce_mean", [sq], [im.tmp(outs[0])], axes=tuple(range(axis, nd)), keepdims=1)[0]
    ms = im.emit("add", [ms, _scalar(im, float(attrs.get("epsilon", 1e-5)), dt)], [im.tmp(outs[0])])[0]
    r = im.emit("sqrt", [ms], [im.tmp(outs[0])])[0]
    y = im.emit("div", [x, r], [im.tmp(outs[0])])[0]
    return im.emit("mul", [y, scale], outs)


@converter("MeanVarianceNormalization")
def _mvn(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    axes = tuple(int(a) for a in attrs.get("axes", (0, 2, 3)))
    dt = x.type.dtype
    mean = im.emit("reduce_mean", [x], [im.tmp(outs[0])], axes=axes, keepdims=1)[0]
    xc = im.emit("sub", [x, mean], [im.tmp(outs[0])])[0]
    sq = im.emit("mul", [xc, xc], [im.tmp(outs[0])])[0]
    var = im.emit("reduce_mean", [sq], [im.tmp(outs[0])], axes=axes, keepdims=1)[0]
    var = im.emit("add", [var, _scalar(im, 1e-9, dt)], [im.tmp(outs[0])])[0]
    return im.emit("div", [xc, im.emit("sqrt", [var], [im.tmp(outs[0])])[0]], outs)


@converter("LpNormalization")
def _lp_norm(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    p = int(attrs.get("p", 2))
    if p not in (1, 2):
        raise im.fail(f"LpNormalization with p = {p} (1 and 2 are defined)")
    op = "reduce_l2" if p == 2 else "reduce_l1"
    norm = im.emit(op, [x], [im.tmp(outs[0])], axes=(int(attrs.get("axis", -1)),), keepdims=1)[0]
    y = im.emit("div", [x, norm], [im.tmp(outs[0])])[0]
    zero = _scalar(im, 0.0, x.type.dtype)
    at_zero = im.emit("equal", [norm, zero], [im.tmp(outs[0])])[0]
    return im.emit("where", [at_zero, zero, y], outs)  # a zero vector stays zero (ONNX: 0/0 = 0)


def _conv_transpose_pads(
    im: _Importer,
    attrs: dict[str, Any],
    in_hw: Sequence[Dim],
    k: Sequence[int],
    s: Sequence[int],
    d: Sequence[int],
    extra: Sequence[int],
) -> tuple[int, ...]:
    """(begins..., ends...) pads of a transposed convolution from ``pads``, ``output_shape`` or
    ``auto_pad``, with ONNX's rules (the larger half at the end for SAME_UPPER, at the beginning
    otherwise)."""
    nd = len(k)
    auto = str(attrs.get("auto_pad", "NOTSET"))
    out_shape = attrs.get("output_shape")
    if out_shape is None and auto in ("NOTSET", "", "VALID"):
        return (
            tuple(int(p) for p in attrs.get("pads", [0] * (2 * nd))) if auto != "VALID" else (0,) * (2 * nd)
        )
    if any(not isinstance(v, int) for v in in_hw):
        raise im.fail("output_shape and auto_pad need static spatial sizes")
    sizes = [int(v) for v in in_hw]  # type: ignore[arg-type]
    if out_shape is None:
        out_shape = [sizes[i] * s[i] for i in range(nd)]
    out_shape = list(out_shape)[-nd:]
    begins, ends = [], []
    for i in range(nd):
        total = s[i] * (sizes[i] - 1) + extra[i] + (k[i] - 1) * d[i] + 1 - int(out_shape[i])
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return tuple(begins + ends)


@converter("ConvTranspose")
def _conv_transpose(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    x, w = _a(ins, 0), _a(ins, 1)
    b = ins[2] if len(ins) > 2 else None
    k = [int(v) for v in attrs.get("kernel_shape", w.type.shape[2:])]
    nd = len(k)
    if nd not in (1, 2):
        raise im.fail(f"{nd}-D transposed convolution is not supported (1-D and 2-D are)")
    s, d = _window(im, attrs, x, k)
    extra = _ints_attr(im, attrs, "output_padding", nd, 0, 0)
    if len(attrs.get("output_shape", [0] * nd)) < nd:
        raise im.fail(f"output_shape {list(attrs['output_shape'])} needs at least {nd} values")
    pads = _conv_transpose_pads(im, attrs, x.type.shape[2:], k, s, d, extra)
    g = int(attrs.get("group", 1))
    tail = [b] if b is not None else []
    if nd == 2:
        return im.emit(
            "conv_transpose2d",
            [x, w, *tail],
            outs,
            strides=tuple(s),
            pads=_to_2d(pads),
            dilations=tuple(d),
            groups=g,
            output_padding=tuple(extra),
        )
    x2 = im.emit("reshape", [x], [im.tmp(outs[0])], shape=(*x.type.shape[:2], 1, x.type.shape[2]))[0]
    w2 = im.emit("reshape", [w], [im.tmp(outs[0])], shape=(*w.type.shape[:2], 1, w.type.shape[2]))[0]
    y = im.emit(
        "conv_transpose2d",
        [x2, w2, *tail],
        [im.tmp(outs[0])],
        strides=(1, s[0]),
        pads=(0, pads[0], 0, pads[1]),
        dilations=(1, d[0]),
        groups=g,
        output_padding=(0, extra[0]),
    )[0]
    shp = y.type.shape
    return im.emit("reshape", [y], outs, shape=(shp[0], shp[1], shp[3]))


def _einsum_expand(im: _Importer, equation: str, ranks: Sequence[int]) -> str:
    """The equation with ``...`` replaced by letters the equation does not use (right-aligned, like NumPy)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
    widths = [r - (len(t) - 3) for t, r in zip(terms, ranks, strict=True) if "..." in t]
    width = max(widths, default=0)
    ell = "".join(free[:width])
    terms = [
        t.replace("...", ell[width - (r - (len(t) - 3)) :]) if "..." in t else t
        for t, r in zip(terms, ranks, strict=True)
    ]
    if arrow:
        rhs = rhs.replace("...", ell)
    else:
        letters = "".join(t for t in terms)
        rhs = ell + "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ell))
    return f"{','.join(terms)}->{rhs}"


@converter("Einsum")
def _einsum(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    vals = [v for v in ins if v is not None]
    eq = _einsum_expand(im, str(attrs["equation"]), [v.type.ndim for v in vals])
    if len(vals) == 2:
        via = _einsum_matmul(im, eq, vals, outs)
        if via is not None:
            return via
    return im.emit("einsum", vals, outs, equation=eq)


def _einsum_matmul(im: _Importer, eq: str, vals: list[Value], outs: list[str]) -> list[Value] | None:
    """A two-operand einsum as transposes, reshapes and one batched matmul, or None where the equation does
    not fit that form (repeated letters in one operand, broadcast batch letters, symbolic sizes)."""
    lhs, rhs = eq.split("->")
    ta, tb = lhs.split(",")
    a, b = vals
    if len(set(ta)) != len(ta) or len(set(tb)) != len(tb) or len(set(rhs)) != len(rhs):
        return None
    if not (a.type.is_static and b.type.is_static) or a.type.dtype != b.type.dtype:
        return None
    if not a.type.dtype.startswith("float"):
        return None
    size = dict(zip(ta, a.type.static_shape, strict=True))
    for ch, n in zip(tb, b.type.static_shape, strict=True):
        if size.setdefault(ch, n) != n:
            return None
    # letters in one operand only and not in the output are summed first
    for t, v, other in ((ta, a, tb), (tb, b, ta)):
        lone = [i for i, ch in enumerate(t) if ch not in other and ch not in rhs]
        if lone:
            v2 = im.emit("reduce_sum", [v], [im.tmp(outs[0])], axes=tuple(lone), keepdims=0)[0]
            t2 = "".join(ch for i, ch in enumerate(t) if i not in lone)
            if t is ta:
                a, ta = v2, t2
            else:
                b, tb = v2, t2
    batch = [ch for ch in ta if ch in tb and ch in rhs]
    contract = [ch for ch in ta if ch in tb and ch not in rhs]
    am = [ch for ch in ta if ch not in tb]
    bn = [ch for ch in tb if ch not in ta]
    if set(rhs) != set(batch) | set(am) | set(bn):
        return None

    def prod(chs: Sequence[str]) -> int:
        return int(np.prod([size[c] for c in chs], dtype=np.int64))

    def arrange(v: Value, t: str, order: list[str], shape: tuple[int, ...]) -> Value:
        perm = tuple(t.index(ch) for ch in order)
        if perm != tuple(range(len(perm))):
            v = im.emit("transpose", [v], [im.tmp(outs[0])], perm=perm)[0]
        if tuple(v.type.shape) != shape:
            v = im.emit("reshape", [v], [im.tmp(outs[0])], shape=shape)[0]
        return v

    nb, m, kk, n = prod(batch), prod(am), prod(contract), prod(bn)
    a3 = arrange(a, ta, batch + am + contract, (nb, m, kk))
    b3 = arrange(b, tb, batch + contract + bn, (nb, kk, n))
    order = batch + am + bn
    shape = tuple(size[c] for c in order)
    perm = tuple(order.index(ch) for ch in rhs)
    steps = [("reshape", {"shape": shape})] if shape != (nb, m, n) else []
    if perm != tuple(range(len(perm))):
        steps.append(("transpose", {"perm": perm}))
    y = im.emit("matmul", [a3, b3], [im.tmp(outs[0])] if steps else outs)[0]
    for k, (op, kw) in enumerate(steps):
        y = im.emit(op, [y], outs if k == len(steps) - 1 else [im.tmp(outs[0])], **kw)[0]
    return [y]


@converter("EyeLike")
def _eye_like(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    if not x.type.is_static:
        raise im.fail(f"needs a static input shape, got {x.type}")
    dt = ONNX_DTYPES.get(int(attrs["dtype"])) if "dtype" in attrs else x.type.dtype
    if dt is None:
        raise im.fail(f"EyeLike to ONNX type {attrs['dtype']} is not supported")
    n, m = x.type.static_shape
    return [Constant(outs[0], np.eye(n, m, k=int(attrs.get("k", 0)), dtype=np_dtype(dt)))]


@converter("Compress")
def _compress(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    x = _a(ins, 0)
    cond = im.const_input(ins[1], "the condition").reshape(-1).astype(bool)
    picked = np.nonzero(cond)[0].astype(np.int64)
    if "axis" not in attrs:
        flat = im.emit("reshape", [x], [im.tmp(outs[0])], shape=(x.type.numel,))[0]
        return im.emit("gather", [flat, Constant(im.tmp("idx"), picked)], outs, axis=0)
    return im.emit("gather", [x, Constant(im.tmp("idx"), picked)], outs, axis=int(attrs["axis"]))


# ---- recurrent layers (RNN, GRU, LSTM): unrolled over the (static) sequence length
_RNN_ACTS = {
    "sigmoid": ("sigmoid", ()),
    "tanh": ("tanh", ()),
    "relu": ("relu", ()),
    "softsign": ("softsign", ()),
    "softplus": ("softplus", ()),
    "leakyrelu": ("leaky_relu", ("alpha",)),
    "thresholdedrelu": ("thresholded_relu", ("alpha",)),
    "hardsigmoid": ("hard_sigmoid", ("alpha", "beta")),
    "elu": ("elu", ("alpha",)),
}


class _Recurrent:
    """One ONNX RNN/GRU/LSTM node unrolled: the input projections of every step in one matmul, then per step
    a matmul with the recurrence weights and the gates as elementwise operators (which fuse into it)."""

    GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
    DEFAULT_ACTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}

    def __init__(
        self, im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
    ) -> None:
        self.im, self.attrs, self.outs = im, attrs, outs
        self.kind = im.op_type
        self.g = self.GATES[self.kind]
        self.x, self.w, self.r = _a(ins, 0), _a(ins, 1), _a(ins, 2)
        opt = [ins[i] if len(ins) > i else None for i in range(8)]
        self.b, self.lens, self.h0 = opt[3], opt[4], opt[5]
        self.c0 = opt[6] if self.kind == "LSTM" else None
        self.peep = opt[7] if self.kind == "LSTM" else None
        self.hidden = int(attrs["hidden_size"]) if "hidden_size" in attrs else int(self.r.type.shape[-1])  # type: ignore[arg-type]
        self.direction = str(attrs.get("direction", "forward"))
        self.dirs = 2 if self.direction == "bidirectional" else 1
        self.layout = int(attrs.get("layout", 0))
        self.clip = float(attrs["clip"]) if "clip" in attrs else None
        if int(attrs.get("input_forget", 0)):
            raise im.fail("LSTM with input_forget=1 is not supported")
        if not self.x.type.is_static or self.x.type.ndim != 3:
            raise im.fail(f"needs a static 3-D input (the sequence is unrolled), got {self.x.type}")
        if self.layout:
            self.x = self.emit("transpose", [self.x], perm=(1, 0, 2))
        self.seq, self.batch, size = self.x.type.static_shape
        gh, h, d = self.g * self.hidden, self.hidden, self.dirs
        state = (self.batch, d, h) if self.layout else (d, self.batch, h)
        expected = [
            (self.w, (d, gh, size), "W"),
            (self.r, (d, gh, h), "R"),
            (self.b, (d, 2 * gh), "B"),
            (self.lens, (self.batch,), "sequence_lens"),
            (self.h0, state, "initial_h"),
            (self.c0, state, "initial_c"),
            (self.peep, (d, 3 * h), "P"),
        ]
        for v, shape, what in expected:
            if v is not None and tuple(v.type.shape) != shape:
                raise im.fail(
                    f"{what} must have shape {shape} (hidden_size {h}, {d} direction(s)), got {v.type}"
                )
        acts = [str(a) for a in attrs.get("activations", self.DEFAULT_ACTS[self.kind] * self.dirs)]
        alphas = list(attrs.get("activation_alpha", []))
        betas = list(attrs.get("activation_beta", []))
        self.acts: list[tuple[str, dict[str, float]]] = []
        ia = ib = 0
        for a in acts:
            if a.lower() not in _RNN_ACTS:
                raise im.fail(
                    f"activation {a!r} is not supported (supported: {', '.join(sorted(_RNN_ACTS))})"
                )
            op, params = _RNN_ACTS[a.lower()]
            kw: dict[str, float] = {}
            if "alpha" in params and ia < len(alphas):
                kw["alpha"], ia = float(alphas[ia]), ia + 1
            if "beta" in params and ib < len(betas):
                kw["beta"], ib = float(betas[ib]), ib + 1
            self.acts.append((op, kw))
        self.dt = self.x.type.dtype

    def emit(self, op: str, args: Sequence[Value], name: str | None = None, **kw: Any) -> Value:
        return self.im.emit(op, list(args), [name or self.im.tmp(self.outs[0] or "rnn")], **kw)[0]

    def act(self, k: int, v: Value) -> Value:
        op, kw = self.acts[k]
        return self.im.emit(op, [v], [self.im.tmp(self.outs[0] or "rnn")], **kw)[0]

    def part(self, v: Value, d: int) -> Value:
        """Direction ``d`` of a per-direction parameter (first axis)."""
        shape = v.type.shape
        return self.emit(
            "reshape", [self.emit("slice", [v], starts=(d,), ends=(d + 1,), axes=(0,))], shape=shape[1:]
        )

    def gate(self, v: Value, k: int) -> Value:
        h = self.hidden
        return self.emit("slice", [v], starts=(k * h,), ends=((k + 1) * h,), axes=(1,))

    def clipped(self, v: Value) -> Value:
        return v if self.clip is None else self.emit("clip", [v], min=-self.clip, max=self.clip)

    def zeros(self) -> Value:
        return Constant(self.im.tmp("zeros"), np.zeros((self.batch, self.hidden), np_dtype(self.dt)))

    def run(self) -> list[Value]:
        ys, hs, cs = [], [], []
        for d in range(self.dirs):
            rev = self.direction == "reverse" or d == 1
            y, h, c = self.direction_pass(d, rev)
            ys.append(y)
            hs.append(h)
            cs.append(c)
        y = ys[0] if self.dirs == 1 else self.emit("concat", ys, axis=1)  # (seq, dirs, batch, hidden)
        if self.layout:
            y = self.emit("transpose", [y], perm=(2, 0, 1, 3))
        results = [y]
        for states in (hs, cs) if self.kind == "LSTM" else (hs,):
            st = [
                self.emit("reshape", [s], shape=(1, self.batch, self.hidden)) for s in states if s is not None
            ]
            s = st[0] if self.dirs == 1 else self.emit("concat", st, axis=0)
            if self.layout:
                s = self.emit("transpose", [s], perm=(1, 0, 2))
            results.append(s)
        named = []
        for k, v in enumerate(results):
            name = self.outs[k] if k < len(self.outs) and self.outs[k] else self.im.tmp(f"rnn_out{k}")
            named.append(self.im.emit("identity", [v], [name])[0])
        return named

    def direction_pass(self, d: int, rev: bool) -> tuple[Value, Value, Value | None]:
        g, hsz = self.g, self.hidden
        w, r = self.part(self.w, d), self.part(self.r, d)  # (g*h, in), (g*h, h)
        x = self.x
        if rev and self.lens is not None:
            x = self.emit("reverse_sequence", [x, self.lens], batch_axis=1, time_axis=0)
        seq, batch = self.seq, self.batch
        xf = self.emit("reshape", [x], shape=(seq * batch, x.type.shape[2]))
        proj = self.emit("matmul", [xf, self.emit("transpose", [w], perm=(1, 0))])
        wb = rb = None
        if self.b is not None:
            bd = self.part(self.b, d)
            wb = self.emit("slice", [bd], starts=(0,), ends=(g * hsz,), axes=(0,))
            rb = self.emit("slice", [bd], starts=(g * hsz,), ends=(2 * g * hsz,), axes=(0,))
            if not (self.kind == "GRU" and int(self.attrs.get("linear_before_reset", 0))):
                proj = self.emit("add", [proj, self.emit("add", [wb, rb])])
                rb_sep = None
            else:
                proj = self.emit("add", [proj, wb])
                rb_sep = rb
        else:
            rb_sep = None
        proj = self.emit("reshape", [proj], shape=(seq, batch, g * hsz))
        rt = self.emit("transpose", [r], perm=(1, 0))  # (h, g*h)
        h = self.part(self.h0, d) if self.h0 is not None else self.zeros()
        c = (self.part(self.c0, d) if self.c0 is not None else self.zeros()) if self.kind == "LSTM" else None
        peep = self.part(self.peep, d) if self.peep is not None else None
        a0 = 0 if d == 0 else len(self.acts) // 2
        steps: list[Value] = []
        order = range(seq - 1, -1, -1) if rev and self.lens is None else range(seq)
        for t in order:
            xt = self.emit(
                "reshape",
                [self.emit("slice", [proj], starts=(t,), ends=(t + 1,), axes=(0,))],
                shape=(batch, g * hsz),
            )
            h_new, c_new = self.cell(xt, h, c, rt, rb_sep, peep, a0)
            if self.lens is not None:
                mask = self.emit(
                    "reshape",
                    [
                        self.emit(
                            "less",
                            [
                                Constant(self.im.tmp("t"), np.array(t, np_dtype(self.lens.type.dtype))),
                                self.lens,
                            ],
                        )
                    ],
                    shape=(batch, 1),
                )
                h_new = self.emit("where", [mask, h_new, h])
                if c is not None and c_new is not None:
                    c_new = self.emit("where", [mask, c_new, c])
                y_t = self.emit("where", [mask, h_new, self.zeros()])
            else:
                y_t = h_new
            h, c = h_new, c_new
            steps.append(self.emit("reshape", [y_t], shape=(1, 1, batch, hsz)))
        if rev and self.lens is None:
            steps.reverse()
        y = steps[0] if len(steps) == 1 else self.emit("concat", steps, axis=0)
        if rev and self.lens is not None:
            y = self.emit("reverse_sequence", [y, self.lens], batch_axis=2, time_axis=0)
        return y, h, c

    def cell(
        self, xt: Value, h: Value, c: Value | None, rt: Value, rb: Value | None, peep: Value | None, a0: int
    ) -> tuple[Value, Value | None]:
        hsz = self.hidden
        if self.kind == "RNN":
            pre = self.emit("add", [xt, self.emit("matmul", [h, rt])])
            return self.act(a0, self.clipped(pre)), None
        if self.kind == "GRU":
            lbr = int(self.attrs.get("linear_before_reset", 0))
            r_zr = self.emit("slice", [rt], starts=(0,), ends=(2 * hsz,), axes=(1,))
            r_h = self.emit("slice", [rt], starts=(2 * hsz,), ends=(3 * hsz,), axes=(1,))
            zr = self.emit(
                "add",
                [
                    self.emit("slice", [xt], starts=(0,), ends=(2 * hsz,), axes=(1,)),
                    self.emit("matmul", [h, r_zr]),
                ],
            )
            if rb is not None:
                zr = self.emit("add", [zr, self.emit("slice", [rb], starts=(0,), ends=(2 * hsz,), axes=(0,))])
            z = self.act(a0, self.clipped(self.gate(zr, 0)))
            rg = self.act(a0, self.clipped(self.gate(zr, 1)))
            xh = self.gate(xt, 2)
            if lbr:
                hr = self.emit("matmul", [h, r_h])
                if rb is not None:
                    hr = self.emit(
                        "add", [hr, self.emit("slice", [rb], starts=(2 * hsz,), ends=(3 * hsz,), axes=(0,))]
                    )
                pre = self.emit("add", [xh, self.emit("mul", [rg, hr])])
            else:
                pre = self.emit("add", [xh, self.emit("matmul", [self.emit("mul", [rg, h]), r_h])])
            hh = self.act(a0 + 1, self.clipped(pre))
            one = Constant(self.im.tmp("one"), np.array(1, np_dtype(self.dt)))
            new = self.emit(
                "add", [self.emit("mul", [self.emit("sub", [one, z]), hh]), self.emit("mul", [z, h])]
            )
            return new, None
        assert c is not None
        pre = self.emit("add", [xt, self.emit("matmul", [h, rt])])
        gi, go, gf, gc = (self.gate(pre, k) for k in range(4))
        if peep is not None:
            pi, po, pf = (
                self.emit("slice", [peep], starts=(k * hsz,), ends=((k + 1) * hsz,), axes=(0,))
                for k in range(3)
            )
            gi = self.emit("add", [gi, self.emit("mul", [pi, c])])
            gf = self.emit("add", [gf, self.emit("mul", [pf, c])])
        i = self.act(a0, self.clipped(gi))
        f = self.act(a0, self.clipped(gf))
        cc = self.act(a0 + 1, self.clipped(gc))
        c_new = self.emit("add", [self.emit("mul", [f, c]), self.emit("mul", [i, cc])])
        if peep is not None:
            go = self.emit("add", [go, self.emit("mul", [po, c_new])])
        o = self.act(a0, self.clipped(go))
        return self.emit("mul", [o, self.act(a0 + 2, c_new)]), c_new


@converter("RNN", "GRU", "LSTM")
def _recurrent(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return _Recurrent(im, ins, attrs, outs).run()


# ---- control flow: If, Loop and Scan, imported by inlining their subgraphs
MAX_UNROLL = 4096  # loop iterations imported one by one at most


def _subgraph_reads(n: onnx.NodeProto) -> set[str]:
    """The values a node reads: its inputs and the enclosing-scope values its subgraphs (If branches, Loop and
    Scan bodies) use."""
    reads = {i for i in n.input if i}
    for a in n.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sub in subs:
            inner = {vi.name for vi in sub.input} | {t.name for t in sub.initializer}
            inner |= {o for m in sub.node for o in m.output}
            used = {i for m in sub.node for i in _subgraph_reads(m)} | {o.name for o in sub.output}
            reads |= used - inner
    return reads


def _dataflow_order(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes with every one after the producers of what it reads. ONNX requires graphs in that order, but
    onnxruntime accepts any and some tools write others (onnxconverter-common's float16 conversion with
    keep_io_types appends the casts of the graph inputs last); a sorted graph keeps its order, otherwise a
    stable topological sort (by position among the ready nodes). A value no node produces, or a cycle, is
    left for the import to report where it is used."""
    producer: dict[str, int] = {}  # the first producer: a graph in order keeps it even if it reuses a name
    for k, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer.setdefault(o, k)
    deps = [{producer[i] for i in _subgraph_reads(n) if i in producer} - {k} for k, n in enumerate(nodes)]
    if all(d < k for k, ds in enumerate(deps) for d in ds):
        return list(nodes)
    users: dict[int, list[int]] = {}
    for k, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(k)
    waiting = [len(ds) for ds in deps]
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users.get(k, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    placed = set(order)
    return [nodes[k] for k in order] + [n for k, n in enumerate(nodes) if k not in placed]


def _inline_graph(im: _Importer, graph: onnx.GraphProto, args: Sequence[Value], prefix: str) -> list[Value]:
    """Import the nodes of a subgraph (an If branch, a Loop or Scan body) with its inputs bound to ``args``;
    names of the enclosing graphs stay visible. Returns the values of the subgraph's outputs."""
    saved = im.env, im.node_name, im.op_type
    env = dict(im.env)
    for vi, v in zip(graph.input, args, strict=False):
        env[vi.name] = v
    for t in graph.initializer:
        env[t.name] = Constant(prefix + t.name, _tensor_array(t, "initializer"))
    im.env = env
    try:
        for n in _dataflow_order(graph.node):
            im.node_name, im.op_type = (
                prefix + (n.name or (n.output[0] if n.output else n.op_type)),
                n.op_type,
            )
            convert = _converter_for(n)
            if convert is None:
                raise im.fail(f"operator {n.op_type} (in a subgraph) is not supported")
            _check_node(n, im.opset, im.node_name)
            ins = [im.lookup(i, f"node {im.node_name!r}") if i else None for i in n.input]
            results = convert(im, ins, _attrs(n), [prefix + o if o else "" for o in n.output])
            for k, o in enumerate(n.output):
                if o and k < len(results):
                    env[o] = results[k]
        return [im.lookup(o.name, f"output of subgraph {graph.name!r}") for o in graph.output]
    finally:
        im.env, im.node_name, im.op_type = saved


def _scalar_cond(im: _Importer, v: Value, out: str) -> Value:
    return v if v.type.ndim == 0 else im.emit("reshape", [v], [im.tmp(out)], shape=())[0]


@converter("If")
def _if(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """A constant (or shape-derived, hence folded) condition imports one branch; a run-time condition
    imports both and selects their results elementwise (the branches must agree on shapes)."""
    cond = _a(ins, 0)
    tag = im.tmp(outs[0] or "if")
    if isinstance(cond, Constant):
        branch = attrs["then_branch"] if bool(np.asarray(cond.data).reshape(-1)[0]) else attrs["else_branch"]
        return _inline_graph(im, branch, [], f"{tag}_")
    then = _inline_graph(im, attrs["then_branch"], [], f"{tag}_then_")
    other = _inline_graph(im, attrs["else_branch"], [], f"{tag}_else_")
    c = _scalar_cond(im, cond, tag)
    if c.type.dtype != "bool":
        c = im.emit("cast", [c], [im.tmp(tag)], to="bool")[0]
    results = []
    for k, (a, b) in enumerate(zip(then, other, strict=True)):
        if a.type.shape != b.type.shape or a.type.dtype != b.type.dtype:
            raise im.fail(
                f"the branches give output {k} as {a.type} and {b.type}; a run-time condition needs both the same"
            )
        results.append(
            im.emit("where", [c, a, b], [outs[k] if k < len(outs) and outs[k] else im.tmp(tag)])[0]
        )
    return results


def _stack(im: _Importer, vals: list[Value], axis: int, out: str) -> Value:
    """The values stacked along a new axis ``axis``."""
    parts = []
    for v in vals:
        shape = list(v.type.shape)
        shape.insert(axis % (len(shape) + 1), 1)
        parts.append(im.emit("reshape", [v], [im.tmp(out)], shape=tuple(shape))[0])
    return parts[0] if len(parts) == 1 else im.emit("concat", parts, [im.tmp(out)], axis=axis)[0]


class _RunTimeLoop(Exception):
    """The loop cannot be unrolled at import (a condition computed at run time, or too many iterations)."""


@converter("Loop")
def _loop(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """Unrolled when the trip count is a constant and the condition constant or computed from constants in
    each iteration (up to MAX_UNROLL iterations); otherwise a real loop (kiln.ops.control)."""
    m = ins[0] if ins else None
    cond = ins[1] if len(ins) > 1 else None
    if m is None and cond is None:
        raise im.fail("a Loop without trip count or condition never ends")
    if (m is None or isinstance(m, Constant)) and (cond is None or isinstance(cond, Constant)):
        mark = len(im.nodes)
        try:
            return _unrolled_loop(im, ins, attrs, outs)
        except _RunTimeLoop:
            del im.nodes[mark:]  # the iterations imported so far: the real loop replaces them
    return _run_time_loop(im, ins, attrs, outs)


def _unrolled_loop(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    body: onnx.GraphProto = attrs["body"]
    m = ins[0] if ins else None
    cond = ins[1] if len(ins) > 1 else None
    carried: list[Value] = [_a(ins, i) for i in range(2, len(ins))]
    trip = int(im.const_scalar(m, "the trip count")) if m is not None else None
    going = bool(im.const_scalar(cond, "the condition")) if isinstance(cond, Constant) else True
    tag = im.tmp(outs[0] or "loop")
    scans: list[list[Value]] = []
    i = 0
    while going and (trip is None or i < trip):
        if i >= MAX_UNROLL:
            raise _RunTimeLoop
        it = Constant(im.tmp("iter"), np.array(i, np.int64))
        res = _inline_graph(im, body, [it, Constant(im.tmp("cond"), np.array(True)), *carried], f"{tag}_{i}_")
        new_cond, carried, step = res[0], res[1 : 1 + len(carried)], res[1 + len(carried) :]
        scans = [[*s, v] for s, v in zip(scans, step, strict=True)] if scans else [[v] for v in step]
        if not isinstance(new_cond, Constant):
            raise _RunTimeLoop
        going = bool(np.asarray(new_cond.data).reshape(-1)[0])
        i += 1
    n_scan = len(body.output) - 1 - len(carried)
    if n_scan and not scans:
        raise im.fail("a Loop with scan outputs that runs zero times (empty outputs) is not supported")
    return [*carried, *(_stack(im, s, 0, tag) for s in scans)]


def _run_time_loop(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """The body imported as a graph function of its own (iteration, condition, carried values and the values
    it reads from outside as parameters), run by kiln's ``loop`` operator."""
    body: onnx.GraphProto = attrs["body"]
    m = ins[0] if ins else None
    cond = ins[1] if len(ins) > 1 else None
    carried: list[Value] = [_a(ins, i) for i in range(2, len(ins))]
    n_scan = len(body.output) - 1 - len(carried)
    max_trip = int(np.asarray(m.data).reshape(-1)[0]) if isinstance(m, Constant) else None
    if n_scan and max_trip is None:
        raise im.fail(
            "a Loop with scan outputs needs a constant trip count (kiln sizes the stacked outputs at compile "
            "time); its trip count is computed at run time"
        )
    tag = im.tmp(outs[0] or "loop")

    def scalar(v: Value | None, default: Any, dtype: str, what: str) -> Value:
        if v is None:
            return Constant(im.tmp(f"{tag}_{what}"), np.array(default, np_dtype(dtype)))
        if v.type.numel != 1:
            raise im.fail(f"the {what} must hold one value, got {v.type}")
        v = v if v.type.ndim == 0 else im.emit("reshape", [v], [im.tmp(tag)], shape=())[0]
        return v if v.type.dtype == dtype else im.emit("cast", [v], [im.tmp(tag)], to=dtype)[0]

    trip = scalar(m, np.iinfo(np.int64).max, "int64", "trip count")
    go = scalar(cond, True, "bool", "condition")
    params = [
        Var(im.tmp(f"{tag}_iter"), TensorType((), "int64")),
        Var(im.tmp(f"{tag}_cond"), TensorType((), "bool")),
    ]
    params += [Var(im.tmp(f"{tag}_state"), v.type) for v in carried]
    outer_nodes, im.nodes = im.nodes, []
    try:
        results = _inline_graph(im, body, params, f"{tag}_")
        inner = im.nodes
        c = results[0]
        if c.type.ndim != 0 and c.type.numel == 1:
            c = im.emit("reshape", [c], [im.tmp(tag)], shape=())[0]
        if c.type.dtype != "bool":
            c = im.emit("cast", [c], [im.tmp(tag)], to="bool")[0]
        results[0] = c
    finally:
        im.nodes = outer_nodes
    produced = {id(o) for n in inner for o in n.outputs}
    own = {id(p) for p in params}
    captured: dict[int, tuple[Value, Var]] = {}  # values from outside the body (and constants): parameters

    def local(v: Value) -> Value:
        if id(v) in produced or id(v) in own:
            return v
        if id(v) not in captured:
            captured[id(v)] = (v, Var(im.tmp(f"{tag}_outer"), v.type))
        return captured[id(v)][1]

    inner = [n.with_(inputs=tuple(local(v) for v in n.inputs)) for n in inner]
    finals: list[Value] = []
    for v in results:  # every output the result of a body node of its own (identity where it is not)
        v = local(v)
        if id(v) not in produced or any(f is v for f in finals):
            copy = Var(im.tmp(f"{tag}_out"), v.type)
            inner.append(Node("identity", (v,), (copy,), {}, im.node_name))
            v = copy
        finals.append(v)
    for k, (v, f) in enumerate(zip(carried, finals[1 : 1 + len(carried)], strict=True)):
        if v.type != f.type:
            raise im.fail(
                f"loop-carried value {k} starts as {v.type} and the body makes it {f.type}; kiln needs the same "
                "shape and type in every iteration"
            )
    fn = GraphFunction(
        f"{tag}_body",
        (*params, *(p for _, p in captured.values())),
        tuple(inner),
        tuple(finals),
        {},
    )
    n_out = len(carried) + n_scan
    names = [outs[k] if k < len(outs) and outs[k] else im.tmp(tag) for k in range(n_out)]
    return im.emit(
        "loop",
        [trip, go, *carried, *(v for v, _ in captured.values())],
        names,
        body=fn,
        num_carried=len(carried),
        num_scanned=n_scan,
        max_trip=max_trip,
    )


@converter("Scan")
def _scan(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """Unrolled over the scan axis. Opset 8's form (a batch axis 0 on every input and output, optional
    constant sequence_lens) is unrolled per batch entry, each a scan of its own, the results stacked again
    (scan outputs beyond an entry's length are zero)."""
    body: onnx.GraphProto = attrs["body"]
    n_in = int(attrs["num_scan_inputs"])
    tag = im.tmp(outs[0] or "scan")
    if im.opset >= 9:
        vals = [_a(ins, i) for i in range(len(ins))]
        states, xs = vals[: len(vals) - n_in], vals[len(vals) - n_in :]
        n_out = len(body.output) - len(states)
        axes = (
            [int(a) for a in attrs.get("scan_input_axes", [0] * n_in)],
            [int(a) for a in attrs.get("scan_input_directions", [0] * n_in)],
            [int(a) for a in attrs.get("scan_output_axes", [0] * n_out)],
            [int(a) for a in attrs.get("scan_output_directions", [0] * n_out)],
        )
        return _scan_unrolled(im, body, states, xs, axes, None, tag)
    lens = ins[0] if ins else None
    vals = [_a(ins, i) for i in range(1, len(ins))]
    states, xs = vals[: len(vals) - n_in], vals[len(vals) - n_in :]
    n_out = len(body.output) - len(states)
    batch = {v.type.shape[0] if v.type.ndim else None for v in vals}
    if len(batch) != 1 or not isinstance(next(iter(batch)), int):
        raise im.fail(
            f"Scan (opset 8) needs one static batch size (axis 0 of every input), got {sorted(map(str, batch))}"
        )
    nb = int(next(iter(batch)))  # type: ignore[arg-type]
    lengths = None if lens is None else im.const_ints(lens, "sequence_lens")
    if lengths is not None and len(lengths) != nb:
        raise im.fail(f"sequence_lens has {len(lengths)} values for a batch of {nb}")
    dirs = [int(a) for a in attrs.get("directions", [0] * n_in)]
    axes = ([0] * n_in, dirs, [0] * n_out, [0] * n_out)
    per_batch: list[list[Value]] = []
    for b in range(nb):
        pick = [_take(im, v, b, tag) for v in vals]
        res = _scan_unrolled(
            im,
            body,
            pick[: len(states)],
            pick[len(states) :],
            axes,
            None if lengths is None else lengths[b],
            f"{tag}_{b}",
        )
        per_batch.append(res)
    return [_stack(im, [r[k] for r in per_batch], 0, tag) for k in range(len(per_batch[0]))]


def _take(im: _Importer, v: Value, b: int, tag: str) -> Value:
    """``v[b]``: entry ``b`` of axis 0, without that axis."""
    s = im.emit("slice", [v], [im.tmp(tag)], starts=(b,), ends=(b + 1,), axes=(0,))[0]
    return im.emit("reshape", [s], [im.tmp(tag)], shape=tuple(v.type.shape[1:]))[0]


def _scan_unrolled(
    im: _Importer,
    body: onnx.GraphProto,
    states: list[Value],
    xs: list[Value],
    axes: tuple[list[int], list[int], list[int], list[int]],
    length: int | None,
    tag: str,
) -> list[Value]:
    """The body applied along the scan axes (``axes``: input axes and directions, output axes and
    directions); only the first ``length`` steps when given, the scan outputs zero after them."""
    in_axes, in_dirs, out_axes, out_dirs = axes
    n_out = len(body.output) - len(states)
    if any(x.type.ndim == 0 for x in xs):
        raise im.fail(f"scan inputs need an axis to scan along, got {[str(x.type) for x in xs]}")
    lengths = {x.type.shape[normalize_axis(a, x.type.ndim, "Scan")] for x, a in zip(xs, in_axes, strict=True)}
    if len(lengths) != 1 or not isinstance(next(iter(lengths)), int):
        raise im.fail(
            f"scan inputs need one static length along their scan axes, got {sorted(map(str, lengths))}"
        )
    total = int(next(iter(lengths)))  # type: ignore[arg-type]
    steps = total if length is None else length
    if not 0 <= steps <= total:
        raise im.fail(f"sequence length {steps} is out of range for scan inputs of length {total}")
    if steps > MAX_UNROLL:
        raise im.fail(f"a Scan of more than {MAX_UNROLL} steps is not supported (it is unrolled)")
    collected: list[list[Value]] = [[] for _ in range(n_out)]
    for t in range(steps):
        slices = []
        for x, a, d in zip(xs, in_axes, in_dirs, strict=True):
            a %= x.type.ndim
            k = steps - 1 - t if d else t
            s = im.emit("slice", [x], [im.tmp(tag)], starts=(k,), ends=(k + 1,), axes=(a,))[0]
            shape = tuple(n for i, n in enumerate(x.type.shape) if i != a)
            slices.append(im.emit("reshape", [s], [im.tmp(tag)], shape=shape)[0])
        res = _inline_graph(im, body, [*states, *slices], f"{tag}_{t}_")
        states = res[: len(states)]
        for j, v in enumerate(res[len(states) :]):
            collected[j].append(v)
    stacked = []
    for j, vs in enumerate(collected):
        if out_dirs[j]:
            vs = vs[::-1]
        if steps < total:  # opset 8's sequence_lens: the rest of the output is zero
            if not vs:
                raise im.fail("a Scan entry of length 0 with scan outputs is not supported")
            zero = Constant(im.tmp(tag), np.zeros(vs[0].type.static_shape, np_dtype(vs[0].type.dtype)))
            vs = [*vs, *[zero] * (total - steps)]
        stacked.append(_stack(im, vs, out_axes[j], tag))
    return [*states, *stacked]


# ---- issue 10, the remaining operators: BitCast, Det, NonZero, NonMaxSuppression, RoiAlign, DFT, ...
@converter("BitCast")
def _bitcast(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    to = ONNX_DTYPES.get(int(attrs["to"]))
    if to is None:
        raise im.fail(
            f"BitCast to ONNX type {attrs['to']} is not supported (kiln's types: {sorted(set(ONNX_DTYPES.values()))})"
        )
    return im.emit("bitcast", [_a(ins, 0)], outs, to=to)


@converter("Det")
def _det(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return im.emit("det", [_a(ins, 0)], outs)


def _bounded(im: _Importer, op: str, ins: list[Value], outs: list[str], **attrs: Any) -> list[Value]:
    """Operator ``op`` whose output size depends on the values (NonZero, NonMaxSuppression, Unique): with
    constant inputs, folded to ONNX's exact result; otherwise its bounded form (the largest size, padded:
    see kiln.ops.selection)."""
    if all(isinstance(v, Constant) for v in ins):
        exact = trim_bounded(op, get_op(op).reference([v.data for v in ins], attrs), attrs)  # type: ignore[union-attr]
        return [Constant(n or im.tmp(op), r) for n, r in zip(outs, exact, strict=False)]
    n_out = get_op(op).num_outputs
    names = [outs[k] if k < len(outs) and outs[k] else im.tmp(op) for k in range(n_out)]
    return im.emit(op, ins, names, **attrs)


@converter("NonZero")
def _non_zero(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return _bounded(im, "non_zero", [_a(ins, 0)], outs)


@converter("NonMaxSuppression")
def _nms(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    def scalar(i: int, what: str, default: float | None) -> float | None:
        v = ins[i] if i < len(ins) else None
        if v is None:
            return default
        return float(im.const_scalar(v, what))

    keep = scalar(2, "max_output_boxes_per_class", 0)
    iou = scalar(3, "iou_threshold", 0.0)
    score = scalar(4, "score_threshold", None)
    if not keep or keep <= 0:
        raise im.fail(
            "max_output_boxes_per_class is 0 or absent, so NonMaxSuppression selects no box; "
            "give the most boxes to keep per class"
        )
    extra = {"score_threshold": score} if score is not None else {}
    return _bounded(
        im,
        "non_max_suppression",
        [_a(ins, 0), _a(ins, 1)],
        outs,
        max_output=int(keep),
        iou_threshold=iou,
        center_point_box=int(attrs.get("center_point_box", 0)),
        **extra,
    )


@converter("RoiAlign")
def _roi_align(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    default = "half_pixel" if im.opset >= 16 else "output_half_pixel"
    ctm = str(attrs.get("coordinate_transformation_mode", default))
    if ctm not in ("half_pixel", "output_half_pixel"):
        raise im.fail(f"coordinate_transformation_mode {ctm!r} is not 'half_pixel' or 'output_half_pixel'")
    idx = _a(ins, 2)
    if idx.type.dtype != "int64":
        idx = im.emit("cast", [idx], [im.tmp(outs[0])], to="int64")[0]
    return im.emit(
        "roi_align",
        [_a(ins, 0), _a(ins, 1), idx],
        outs,
        mode=str(attrs.get("mode", "avg")),
        output_height=int(attrs.get("output_height", 1)),
        output_width=int(attrs.get("output_width", 1)),
        sampling_ratio=int(attrs.get("sampling_ratio", 0)),
        spatial_scale=float(attrs.get("spatial_scale", 1.0)),
        half_pixel=int(ctm == "half_pixel"),
    )


@converter("Unique")
def _unique(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    extra = {"axis": int(attrs["axis"])} if "axis" in attrs else {}
    return _bounded(im, "unique", [_a(ins, 0)], outs, sorted=int(attrs.get("sorted", 1)), **extra)


@converter("DFT")
def _dft(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """Opset 17 takes the axis as an attribute (default 1), opset 20 as a constant input (default -2); the
    transform length (input 1) must be a constant too."""
    x = _a(ins, 0)
    if im.opset >= 20:
        given = _optional_const(im, ins, 2, "the axis")
        axis = int(im.const_scalar(ins[2], "the axis")) if given is not None else -2
    else:
        axis = int(attrs.get("axis", 1))
    nd = x.type.ndim
    if not -nd <= axis < nd - 1 or axis % nd == nd - 1:
        raise im.fail(f"axis {axis} is not a signal axis of {x.type} (the last axis holds real, imaginary)")
    axis %= nd
    inverse, onesided = int(attrs.get("inverse", 0)), int(attrs.get("onesided", 0))
    given_len = _optional_const(im, ins, 1, "dft_length")
    n = x.type.shape[axis]
    if given_len is not None:
        length = int(given_len.reshape(-1)[0])
    elif not isinstance(n, int):
        raise im.fail(f"the signal length along axis {axis} of {x.type} must be static (or give dft_length)")
    else:
        length = 2 * (n - 1) if inverse and onesided else n
    return im.emit("dft", [x], outs, axis=axis, length=length, inverse=inverse, onesided=onesided)


@converter("Col2Im")
def _col2im(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    image = im.const_ints(ins[1] if len(ins) > 1 else None, "image_shape")
    block = im.const_ints(ins[2] if len(ins) > 2 else None, "block_shape")
    keep = {k: [int(a) for a in attrs[k]] for k in ("dilations", "pads", "strides") if k in attrs}
    return im.emit("col2im", [_a(ins, 0)], outs, image_shape=image, block_shape=block, **keep)


@converter("MaxUnpool")
def _max_unpool(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    shape = _optional_const(im, ins, 2, "output_shape")
    keep: dict[str, list[int]] = {
        k: [int(a) for a in attrs[k]] for k in ("kernel_shape", "pads", "strides") if k in attrs
    }
    if shape is not None:
        keep["output_shape"] = [int(d) for d in shape]
    return im.emit("max_unpool", [_a(ins, 0), _a(ins, 1)], outs, **keep)


@converter("DeformConv")
def _deform_conv(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    x, w, offset = _a(ins, 0), _a(ins, 1), _a(ins, 2)
    if x.type.ndim != 4:
        raise im.fail(f"DeformConv on {x.type.ndim - 2}-D images is not supported (kiln has the 2-D form)")
    if not (w.type.is_static and offset.type.is_static):
        raise im.fail(f"DeformConv needs static weight and offset shapes, got {w.type} and {offset.type}")
    if w.type.ndim != 4 or offset.type.ndim != 4:
        raise im.fail(f"DeformConv needs 4-D weights and offsets, got {w.type} and {offset.type}")
    _window(im, attrs, x, w.type.static_shape[2:])
    oc, off = w.type.static_shape[0], offset.type.static_shape
    bias = ins[3] if len(ins) > 3 and ins[3] is not None else None
    mask = ins[4] if len(ins) > 4 and ins[4] is not None else None
    if bias is None:
        bias = Constant(im.tmp("bias"), np.zeros(oc, np_dtype(x.type.dtype)))
    if mask is None:
        mask = Constant(im.tmp("mask"), np.ones((off[0], off[1] // 2, *off[2:]), np_dtype(x.type.dtype)))
    keep = {
        "strides": [int(a) for a in attrs.get("strides", [1, 1])],
        "pads": [int(a) for a in attrs.get("pads", [0, 0, 0, 0])],
        "dilations": [int(a) for a in attrs.get("dilations", [1, 1])],
        "group": int(attrs.get("group", 1)),
        "offset_group": int(attrs.get("offset_group", 1)),
    }
    return im.emit("deform_conv", [x, w, offset, bias, mask], outs, **keep)


@converter("STFT")
def _stft(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """Frames (a gather with constant positions), times the window, then a DFT along the frame axis."""
    x = _a(ins, 0)
    step = int(im.const_scalar(ins[1] if len(ins) > 1 else None, "frame_step"))
    window = ins[2] if len(ins) > 2 else None
    given = _optional_const(im, ins, 3, "frame_length")
    n = x.type.shape[1] if x.type.ndim == 3 else None
    if not isinstance(n, int) or x.type.shape[2] not in (1, 2):
        raise im.fail(f"STFT expects a signal [batch, length, 1 or 2] of static length, got {x.type}")
    if given is not None:
        length = int(given.reshape(-1)[0])
    elif window is not None and window.type.ndim == 1 and isinstance(window.type.shape[0], int):
        length = int(window.type.shape[0])
    else:
        length = n
    if step < 1 or not 1 <= length <= n:
        raise im.fail(f"frame_step {step} and frame_length {length} do not fit a signal of length {n}")
    frames = (n - length) // step + 1
    pos = Constant(im.tmp("frames"), np.arange(frames)[:, None] * step + np.arange(length)[None, :])
    y = im.emit("gather", [x, pos], [im.tmp(outs[0])], axis=1)[0]  # [batch, frames, length, 1 or 2]
    if window is not None:
        w = im.emit("reshape", [window], [im.tmp(outs[0])], shape=(1, 1, length, 1))[0]
        if w.type.dtype != x.type.dtype:
            w = im.emit("cast", [w], [im.tmp(outs[0])], to=x.type.dtype)[0]
        y = im.emit("mul", [y, w], [im.tmp(outs[0])])[0]
    onesided = int(attrs.get("onesided", 1))
    return im.emit("dft", [y], outs, axis=2, length=length, inverse=0, onesided=onesided)


@converter("MelWeightMatrix")
def _mel_weight_matrix(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    names = ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")
    vals = [
        Constant(im.tmp(w), im.const_input(ins[k] if k < len(ins) else None, w)) for k, w in enumerate(names)
    ]
    dtype = ONNX_DTYPES.get(int(attrs.get("output_datatype", 1)))
    if dtype is None:
        raise im.fail(f"output_datatype {attrs.get('output_datatype')} is not one of kiln's element types")
    return im.emit("mel_weight_matrix", vals, outs, dtype=dtype)  # constant inputs: computed here


@converter("TensorScatter")
def _tensor_scatter(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    cache, update = _a(ins, 0), _a(ins, 1)
    write = ins[2] if len(ins) > 2 else None
    if write is None:
        write = Constant(im.tmp("write"), np.zeros(cache.type.static_shape[0], np.int64))
    elif write.type.dtype != "int64":
        write = im.emit("cast", [write], [im.tmp(outs[0])], to="int64")[0]
    mode = str(attrs.get("mode", "linear"))
    if mode not in ("linear", "circular"):
        raise im.fail(f"mode {mode!r} is not 'linear' or 'circular'")
    axis = int(attrs.get("axis", -2))
    return im.emit(
        "tensor_scatter", [cache, update, write], outs, axis=axis, circular=int(mode == "circular")
    )


@converter("MaxRoiPool")
def _max_roi_pool(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    pooled = tuple(int(d) for d in attrs["pooled_shape"])
    scale = float(attrs.get("spatial_scale", 1.0))
    return im.emit("max_roi_pool", [_a(ins, 0), _a(ins, 1)], outs, pooled_shape=pooled, spatial_scale=scale)


@converter("GlobalLpPool")
def _global_lp_pool(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """``(sum over the spatial axes of |x|^p)^(1/p)``, kept as size 1."""
    x = _a(ins, 0)
    p, dt = float(attrs.get("p", 2)), x.type.dtype
    if p <= 0 or x.type.ndim < 3:
        raise im.fail(f"needs p > 0 (got {p}) and an input with spatial axes (N, C, ...), got {x.type}")
    t = im.emit("abs", [x], [im.tmp(outs[0])])[0]
    t = im.emit("pow", [t, _scalar(im, p, dt)], [im.tmp(outs[0])])[0]
    s = im.emit("reduce_sum", [t], [im.tmp(outs[0])], axes=tuple(range(2, x.type.ndim)), keepdims=1)[0]
    return im.emit("pow", [s, _scalar(im, 1.0 / p, dt)], outs)


# ---- quantization: integer kernels (int32 accumulation) with the requantize as a fused elementwise epilogue
_Q_RANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}


def _along(im: _Importer, v: Value, axis: int, nd: int, out: str) -> Value:
    """A per-axis (1-D) parameter reshaped to broadcast along ``axis`` of a rank-``nd`` tensor; scalars and
    one-element tensors as they are."""
    if nd == 0 and v.type.numel != 1:
        raise im.fail(f"a parameter per axis ({v.type}) given for a scalar")
    if v.type.ndim == 0 or (v.type.ndim == 1 and v.type.shape[0] == 1 and nd != 1):
        return v if v.type.ndim == 0 else im.emit("reshape", [v], [im.tmp(out)], shape=())[0]
    if v.type.ndim == nd:  # already full rank (an unblocked blocked parameter)
        return v
    shape: list[Dim] = [1] * nd
    shape[axis % nd] = v.type.shape[0]
    return im.emit("reshape", [v], [im.tmp(out)], shape=tuple(shape))[0]


def _unblock(im: _Importer, v: Value | None, axis: int, block: int, x: Value, out: str) -> Value | None:
    """A blocked scale or zero point (``block`` consecutive elements along ``axis`` share one) repeated to the
    full shape of ``x``."""
    if v is None or block <= 0:
        return v
    nd = x.type.ndim
    axis %= nd
    shape = list(v.type.shape)
    t = im.emit("reshape", [v], [im.tmp(out)], shape=(*shape[: axis + 1], 1, *shape[axis + 1 :]))[0]
    t = im.emit("expand", [t], [im.tmp(out)], shape=(*shape[: axis + 1], block, *shape[axis + 1 :]))[0]
    full = list(shape)
    full[axis] = shape[axis] * block  # type: ignore[operator]
    t = im.emit("reshape", [t], [im.tmp(out)], shape=tuple(full))[0]
    if full[axis] != x.type.shape[axis]:  # the last block may be partial
        t = im.emit("slice", [t], [im.tmp(out)], starts=(0,), ends=(x.type.shape[axis],), axes=(axis,))[0]
    return t


def _dequantize(im: _Importer, x: Value, scale: Value, zp: Value | None, axis: int, out: list[str]) -> Value:
    """``(float(x) - zp) * scale``. Constant 8-bit weights are not folded here: the ``fuse-qdq`` pass looks
    for them to compute in integers (``fold-constants`` folds the ones it leaves)."""
    nd = x.type.ndim
    fdt = scale.type.dtype
    keep = isinstance(x, Constant) and x.type.dtype in ("int8", "uint8")
    emit = im.add_node if keep else lambda op, ins, names, attrs: im.emit(op, ins, names, **attrs)
    xf = emit("cast", [x], [im.tmp(out[0])], {"to": fdt})[0]
    if zp is not None and not (isinstance(zp, Constant) and not np.any(zp.data)):
        zf = im.emit("cast", [_along(im, zp, axis, nd, out[0])], [im.tmp(out[0])], to=fdt)[0]
        xf = emit("sub", [xf, zf], [im.tmp(out[0])], {})[0]
    return emit("mul", [xf, _along(im, scale, axis, nd, out[0])], out, {})[0]


def _requantize(im: _Importer, y: Value, zp: Value | None, dtype: str, out: list[str]) -> Value:
    """``saturate(round(y) + zp)`` as ``dtype`` (``y`` already divided by the scale; halves to even)."""
    y = im.emit("round", [y], [im.tmp(out[0])])[0]
    if zp is not None and not (isinstance(zp, Constant) and not np.any(zp.data)):
        zf = im.emit("cast", [zp], [im.tmp(out[0])], to=y.type.dtype)[0]
        y = im.emit("add", [y, zf], [im.tmp(out[0])])[0]
    lo, hi = _Q_RANGE[dtype]
    y = im.emit("clip", [y], [im.tmp(out[0])], min=float(lo), max=float(hi))[0]
    return im.emit("cast", [y], out, to=dtype)[0]


def _zp_dtype(im: _Importer, zp: Value | None, attrs: dict[str, Any]) -> str:
    if zp is not None:
        dt = zp.type.dtype
    elif int(attrs.get("output_dtype", 0)):
        dt = ONNX_DTYPES.get(int(attrs["output_dtype"]), "?")
    else:
        dt = "uint8"
    if dt not in _Q_RANGE:
        raise im.fail(f"quantizing to {dt} is not supported (uint8, int8, int16 are)")
    return dt


@converter("DequantizeLinear")
def _dequantize_linear(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    x, scale = _a(ins, 0), _a(ins, 1)
    zp = ins[2] if len(ins) > 2 else None
    axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
    if block:
        scale = _unblock(im, scale, axis, block, x, outs[0])  # type: ignore[assignment]
        zp = _unblock(im, zp, axis, block, x, outs[0])
    return [_dequantize(im, x, scale, zp, axis, outs)]


@converter("QuantizeLinear")
def _quantize_linear(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    x, scale = _a(ins, 0), _a(ins, 1)
    zp = ins[2] if len(ins) > 2 else None
    dtype = _zp_dtype(im, zp, attrs)
    axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
    if block:
        scale = _unblock(im, scale, axis, block, x, outs[0])  # type: ignore[assignment]
        zp = _unblock(im, zp, axis, block, x, outs[0])
    return [_quantize(im, x, scale, zp, axis, dtype, outs)]


def _quantize(
    im: _Importer, x: Value, scale: Value, zp: Value | None, axis: int, dtype: str, outs: list[str]
) -> Value:
    """``saturate(round(x / scale) + zp)`` (the chain the ``fuse-qdq`` pass recognizes)."""
    nd = x.type.ndim
    xf = x if x.type.dtype == "float32" else im.emit("cast", [x], [im.tmp(outs[0])], to="float32")[0]
    sf = _along(im, scale, axis, nd, outs[0])
    if sf.type.dtype != "float32":
        sf = im.emit("cast", [sf], [im.tmp(outs[0])], to="float32")[0]
    y = im.emit("div", [xf, sf], [im.tmp(outs[0])])[0]
    zp_b = _along(im, zp, axis, nd, outs[0]) if zp is not None else None
    return _requantize(im, y, zp_b, dtype, outs)


@converter("DynamicQuantizeLinear")
def _dynamic_quantize(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """uint8 with a scale and zero point from the tensor's range (widened to include 0)."""
    x = _a(ins, 0)
    t = im.tmp(outs[0])
    hi = im.emit("reduce_max", [x], [t + "_max"], keepdims=0)[0]
    lo = im.emit("reduce_min", [x], [t + "_min"], keepdims=0)[0]
    zero = _scalar(im, 0.0, "float32")
    hi = im.emit("maximum", [hi, zero], [t + "_hi"])[0]
    lo = im.emit("minimum", [lo, zero], [t + "_lo"])[0]
    span = im.emit("sub", [hi, lo], [t + "_span"])[0]
    names = [n or im.tmp(f"dql{i}") for i, n in enumerate((outs + ["", "", ""])[:3])]
    scale = im.emit("div", [span, _scalar(im, 255.0, "float32")], [names[1]])[0]
    zf = im.emit("div", [im.emit("neg", [lo], [t + "_neg"])[0], scale], [t + "_zf"])[0]
    zp = _requantize(im, zf, None, "uint8", [names[2]])
    y = im.emit("div", [x, scale], [t + "_y"])[0]
    y = _requantize(im, y, zp, "uint8", [names[0]])
    return [y, scale, zp]


def _live(zp: Value | None) -> bool:
    """A zero point that is there and not all zeros."""
    return zp is not None and not (isinstance(zp, Constant) and not np.any(zp.data))


def _narrow_operand(im: _Importer, v: Value, zp: Value, axis: int, out: str) -> Value:
    """``int16(v) - int16(zp)`` (``zp`` per tensor or along ``axis``): 8-bit values less their zero point
    fit int16, which the integer kernels multiply and accumulate in int32 like 8-bit operands; for a
    constant ``v`` it is computed now."""
    wide = im.emit("cast", [v], [im.tmp(out)], to="int16")[0]
    z = im.emit("cast", [_along(im, zp, axis, v.type.ndim, out)], [im.tmp(out)], to="int16")[0]
    return im.emit("sub", [wide, z], [im.tmp(out)])[0]


def _zero_point_correction(
    im: _Importer, acc: Value, zp: Value, sums: np.ndarray, axis: int, outs: list[str]
) -> Value:
    """``acc - int32(zp) * sums``: an input zero point taken out of an integer product with constant weights
    (``sums``: the weights' sums per output element; ``zp`` per tensor or along ``axis`` of ``acc``)."""
    z = im.emit("cast", [_along(im, zp, axis, acc.type.ndim, outs[0])], [im.tmp(outs[0])], to="int32")[0]
    c = im.emit("mul", [z, Constant(im.tmp("sums"), sums.astype(np.int32))], [im.tmp(outs[0])])[0]
    return im.emit("sub", [acc, c], outs)[0]


def _conv_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    keep = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
    return {k: v for k, v in attrs.items() if k in keep}


@converter("ConvInteger")
def _conv_integer(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """The 8-bit operands go straight into the int32-accumulating convolution: constant weights lose their
    zero point now (int16), a constant input zero point pads the input (``pad_value``) and is taken out of
    the result per output channel; an input zero point computed at run time (DynamicQuantizeLinear) is
    subtracted from the input first (int16)."""
    x, w = _a(ins, 0), _a(ins, 1)
    xz = ins[2] if len(ins) > 2 and _live(ins[2]) else None
    wz = ins[3] if len(ins) > 3 and _live(ins[3]) else None
    if wz is not None:
        w = _narrow_operand(im, w, wz, 0, outs[0])
    if xz is None:
        return CONVERTERS["Conv"](im, [x, w], _conv_attrs(attrs), outs)
    if not isinstance(xz, Constant) or xz.data.size != 1 or not isinstance(w, Constant):
        return CONVERTERS["Conv"](im, [_narrow_operand(im, x, xz, 1, outs[0]), w], _conv_attrs(attrs), outs)
    acc = CONVERTERS["Conv"](
        im, [x, w], {**_conv_attrs(attrs), "pad_value": int(xz.data.reshape(-1)[0])}, [im.tmp(outs[0])]
    )[0]
    sums = w.data.astype(np.int64).reshape(w.data.shape[0], -1).sum(axis=1)
    return [_zero_point_correction(im, acc, xz, sums.reshape(-1, *[1] * (acc.type.ndim - 2)), 1, outs)]


def _float32_scales(im: _Importer, xs: Value, ws: Value, ys: Value, out: str) -> tuple[Value, Value, Value]:
    """QLinearMatMul/QLinearConv scales given in float16 or bfloat16: ONNX defines the result as the exact
    integer product times ``xs * ws / ys`` computed in the scales' own type. The float32 scales returned
    give that same multiplier (the weight scale absorbs its rounding), so the dequantize -> op -> quantize
    form (and the integer kernel ``fuse-qdq`` makes of it) rounds like the reference instead of computing
    the product in half precision. Constant scales fold at import."""
    if ws.type.dtype == "float32":
        return xs, ws, ys
    m = im.emit("div", [im.emit("mul", [xs, ws], [im.tmp(out)])[0], ys], [im.tmp(out)])[0]
    x32, y32, m32 = (im.emit("cast", [v], [im.tmp(out)], to="float32")[0] for v in (xs, ys, m))
    w32 = im.emit("div", [im.emit("mul", [m32, y32], [im.tmp(out)])[0], x32], [im.tmp(out)])[0]
    return x32, w32, y32


@converter("QLinearMatMul")
def _qlinear_matmul(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """Dequantize, multiply, quantize: with constant B the ``fuse-qdq`` pass makes it an integer kernel
    (int32 accumulation, one fused requantize); with two run-time operands it runs in float."""
    a, a_s, a_z, b, b_s, b_z, y_s, y_z = (_a(ins, i) for i in range(8))
    a_s, b_s, y_s = _float32_scales(im, a_s, b_s, y_s, outs[0])
    af = _dequantize(im, a, a_s, a_z, -2, [im.tmp(outs[0])])
    bf = _dequantize(im, b, b_s, b_z, -1, [im.tmp(outs[0])])
    y = im.emit("matmul", [af, bf], [im.tmp(outs[0])])[0]
    return [_quantize(im, y, y_s, y_z, 0, _zp_dtype(im, y_z, {}), outs)]


@converter("QLinearConv")
def _qlinear_conv(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """Dequantize, convolve, quantize: the ``fuse-qdq`` pass makes it an integer kernel (int32
    accumulation, the bias in the accumulator, one fused requantize)."""
    x, x_s, x_z, w, w_s, w_z, y_s, y_z = (_a(ins, i) for i in range(8))
    x_s, w_s, y_s = _float32_scales(im, x_s, w_s, y_s, outs[0])
    bias = ins[8] if len(ins) > 8 else None
    xf = _dequantize(im, x, x_s, x_z, 1, [im.tmp(outs[0])])
    wf = _dequantize(im, w, w_s, w_z, 0, [im.tmp(outs[0])])
    args: list[Value | None] = [xf, wf]
    if bias is not None:  # int32 in units of x_s * w_s
        bs = im.emit("mul", [x_s, w_s], [im.tmp(outs[0])])[0]
        args.append(_dequantize(im, bias, bs, None, 0, [im.tmp(outs[0])]))
    y = CONVERTERS["Conv"](im, args, _conv_attrs(attrs), [im.tmp(outs[0])])[0]
    return [_quantize(im, y, y_s, y_z, 1, _zp_dtype(im, y_z, {}), outs)]


# ---- onnxruntime's com.microsoft quantized operators (quantize_static in QOperator format), each imported as
# dequantize -> the float operator -> quantize, the form fuse-qdq turns into integer kernels where it can
MS_DOMAIN = "com.microsoft"
MS_CONVERTERS: dict[str, Converter] = {}


def ms_converter(*names: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for n in names:
            MS_CONVERTERS[n] = fn
        return fn

    return deco


def _converter_for(n: onnx.NodeProto) -> Converter | None:
    """The converter of node ``n``: a standard operator's, or an onnxruntime contrib operator's."""
    if n.domain in ("", "ai.onnx"):
        return CONVERTERS.get(n.op_type)
    if n.domain == MS_DOMAIN:
        return MS_CONVERTERS.get(n.op_type)
    return None


def _as(
    im: _Importer, op_type: str, ins: list[Value | None], attrs: dict[str, Any], outs: list[str], **kw: Any
) -> list[Value]:
    """Standard operator ``op_type``'s converter applied (``opset=`` the semantics of another opset)."""
    saved = im.op_type, im.opset
    im.op_type, im.opset = op_type, int(kw.get("opset", im.opset))
    try:
        return CONVERTERS[op_type](im, ins, attrs, outs)
    finally:
        im.op_type, im.opset = saved


def _deq(im: _Importer, ins: list[Value | None], i: int, out: str, axis: int = 1) -> Value:
    """Input ``i`` dequantized with the scale and zero point after it (``ins[i + 1]``, optional ``ins[i + 2]``)."""
    zp = ins[i + 2] if len(ins) > i + 2 else None
    return _dequantize(im, _a(ins, i), _a(ins, i + 1), zp, axis, [im.tmp(out)])


def _q(im: _Importer, y: Value, ins: list[Value | None], i: int, outs: list[str]) -> list[Value]:
    """``y`` quantized with the scale ``ins[i]`` and the optional zero point ``ins[i + 1]`` (uint8 without)."""
    zp = ins[i + 1] if len(ins) > i + 1 else None
    return [_quantize(im, y, _a(ins, i), zp, 0, _zp_dtype(im, zp, {}), outs)]


def _channels_first(im: _Importer, x: Value, attrs: dict[str, Any], out: str) -> Value:
    if not int(attrs.get("channels_last", 0)):
        return x
    nd = x.type.ndim
    return im.emit("transpose", [x], [im.tmp(out)], perm=(0, nd - 1, *range(1, nd - 1)))[0]


def _channels_back(im: _Importer, y: Value, attrs: dict[str, Any], out: str) -> Value:
    if not int(attrs.get("channels_last", 0)):
        return y
    nd = y.type.ndim
    return im.emit("transpose", [y], [im.tmp(out)], perm=(0, *range(2, nd), 1))[0]


@ms_converter("QuantizeLinear", "DequantizeLinear")
def _ms_qdq(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    return _as(im, im.op_type, ins, attrs, outs)


@ms_converter("QLinearAdd", "QLinearMul")
def _ms_binary(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """``A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point``, broadcasting."""
    a, b = _deq(im, ins, 0, outs[0]), _deq(im, ins, 3, outs[0])
    y = im.emit("add" if im.op_type == "QLinearAdd" else "mul", [a, b], [im.tmp(outs[0])])[0]
    return _q(im, y, ins, 6, outs)


@ms_converter("QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax")
def _ms_unary(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """``X, X_scale, X_zero_point, Y_scale, Y_zero_point``; QLinearSoftmax's ``opset`` attribute says which
    Softmax it computes (before 13: over the input flattened to 2-D at ``axis``)."""
    x = _deq(im, ins, 0, outs[0])
    op = im.op_type.removeprefix("QLinear")
    kw = {"opset": int(attrs["opset"])} if "opset" in attrs else {}
    keep = {k: v for k, v in attrs.items() if k in ("alpha", "axis")}
    y = _as(im, op, [x], keep, [im.tmp(outs[0])], **kw)[0]
    return _q(im, y, ins, 3, outs)


@ms_converter("QLinearGlobalAveragePool", "QLinearAveragePool")
def _ms_pool(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """``X, x_scale, x_zero_point, y_scale, y_zero_point``; ``channels_last``: NHWC input and output."""
    x = _channels_first(im, _deq(im, ins, 0, outs[0]), attrs, outs[0])
    op = im.op_type.removeprefix("QLinear")
    keep = {k: v for k, v in attrs.items() if k != "channels_last"}
    y = _channels_back(im, _as(im, op, [x], keep, [im.tmp(outs[0])])[0], attrs, outs[0])
    return _q(im, y, ins, 3, outs)


@ms_converter("QLinearReduceMean")
def _ms_reduce_mean(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """``data, data_scale, data_zero_point, reduced_scale, reduced_zero_point``; ``axes``, ``keepdims``."""
    y = _as(im, "ReduceMean", [_deq(im, ins, 0, outs[0])], attrs, [im.tmp(outs[0])], opset=13)[0]
    return _q(im, y, ins, 3, outs)


@ms_converter("QLinearConcat")
def _ms_concat(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """``Y_scale, Y_zero_point`` then ``(X, X_scale, X_zero_point)`` per input; ``axis``."""
    if len(ins) < 5 or (len(ins) - 2) % 3:
        raise im.fail(
            f"QLinearConcat takes Y_scale, Y_zero_point and (X, scale, zero point) triples: {len(ins)} inputs"
        )
    xs = [_deq(im, ins, i, outs[0]) for i in range(2, len(ins), 3)]
    y = _as(im, "Concat", list(xs), attrs, [im.tmp(outs[0])])[0]
    return _q(im, y, ins, 0, outs)


@ms_converter("QLinearWhere")
def _ms_where(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """``condition, X, x_scale, x_zero_point, Y, y_scale, y_zero_point, z_scale, z_zero_point``."""
    x, y = _deq(im, ins, 1, outs[0]), _deq(im, ins, 4, outs[0])
    z = im.emit("where", [_a(ins, 0), x, y], [im.tmp(outs[0])])[0]
    return _q(im, z, ins, 7, outs)


@ms_converter("QGemm")
def _ms_qgemm(im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]) -> list[Value]:
    """``A, a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale, y_zero_point``: ``alpha * (A' @ B' +
    C * a_scale * b_scale)`` of the dequantized ``A'``, ``B'`` (``B`` per tensor or per output column; the
    int32 bias ``C`` in accumulator units), quantized with ``y_scale`` and ``y_zero_point``, or float without a
    ``y_scale``. ``alpha`` is folded into B's scale, so the layer keeps the Gemm form fuse-qdq makes an integer
    kernel of."""
    b = _a(ins, 3)
    trans_b = int(attrs.get("transB", 0))
    alpha = float(attrs.get("alpha", 1.0))
    b_s = _a(ins, 4)
    if alpha != 1.0:
        b_s = im.emit("mul", [b_s, _scalar(im, alpha, b_s.type.dtype)], [im.tmp(outs[0])])[0]
    a = _deq(im, ins, 0, outs[0])
    bf = _dequantize(im, b, b_s, ins[5] if len(ins) > 5 else None, 0 if trans_b else -1, [im.tmp(outs[0])])
    args: list[Value | None] = [a, bf]
    c = ins[6] if len(ins) > 6 else None
    if c is not None:
        bias_scale = im.emit("mul", [_a(ins, 1), b_s], [im.tmp(outs[0])])[0]
        args.append(_dequantize(im, c, bias_scale, None, -1, [im.tmp(outs[0])]))
    gemm = {k: v for k, v in attrs.items() if k in ("transA", "transB")}
    y_s = ins[7] if len(ins) > 7 else None
    if y_s is None:
        return _as(im, "Gemm", args, gemm, outs)
    y = _as(im, "Gemm", args, gemm, [im.tmp(outs[0])])[0]
    return _q(im, y, ins, 7, outs)


@ms_converter("QLinearConv")
def _ms_qlinear_conv(
    im: _Importer, ins: list[Value | None], attrs: dict[str, Any], outs: list[str]
) -> list[Value]:
    """The standard QLinearConv, with ``channels_last`` (NHWC input and output)."""
    if not int(attrs.get("channels_last", 0)):
        return _as(im, "QLinearConv", ins, attrs, outs)
    x = _channels_first(im, _a(ins, 0), attrs, outs[0])
    keep = {k: v for k, v in attrs.items() if k != "channels_last"}
    y = _as(im, "QLinearConv", [x, *ins[1:]], keep, [im.tmp(outs[0])])[0]
    return [im.emit("identity", [_channels_back(im, y, attrs, outs[0])], outs)[0]]


# Operator categories kiln leaves out on purpose, with the reason the import error gives.
_WHY_NOT_CATEGORIES = {
    "it is a training-only operator (kiln compiles inference graphs)": (
        "Adagrad Adam Momentum Gradient NegativeLogLikelihoodLoss SoftmaxCrossEntropyLoss"
    ),
    "it works on strings, and kiln's tensors hold numbers only": (
        "StringConcat StringNormalizer StringSplit RegexFullMatch TfIdfVectorizer"
    ),
    "it produces or takes sequence or optional values, and kiln compiles graphs of tensors": (
        "SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap "
        "SplitToSequence ConcatFromSequence Optional OptionalGetElement OptionalHasElement"
    ),
    "it draws random numbers, and compiled models are deterministic": (
        "Bernoulli RandomNormal RandomNormalLike RandomUniform RandomUniformLike Multinomial"
    ),
    "it decodes image files (decode them before running the model)": "ImageDecoder",
}
_WHY_NOT = {op: why for why, ops in _WHY_NOT_CATEGORIES.items() for op in ops.split()}
_WHY_NOT_MS = (
    f"it is an onnxruntime contrib operator kiln does not import (of {MS_DOMAIN}, kiln imports "
    f"{', '.join(sorted(MS_CONVERTERS))}); quantize the model with quant_format=QuantFormat.QDQ, which writes "
    "standard ONNX operators only, or leave this operator type out of op_types_to_quantize"
)


# ---------------------------------------------------------------------------------------------------- driver
def _expand_functions(m: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Nodes of standard operators without a converter whose ONNX schema defines them as a function of other
    operators (Attention, RotaryEmbedding, SwiGLU, the window functions, ...) replaced by that function body,
    inlined; nested functions are expanded in turn. Other nodes are left for the unsupported-operator check."""
    for _ in range(4):
        todo = [
            n
            for n in m.graph.node
            if n.domain in ("", "ai.onnx") and n.op_type not in CONVERTERS and n.op_type not in _WHY_NOT
        ]
        if not todo:
            return m
        m = _copy_model(m)
        types: dict[str, onnx.TypeProto] | None = None
        funcs: list[onnx.FunctionProto] = []
        for n in m.graph.node:
            if n.domain not in ("", "ai.onnx") or n.op_type in CONVERTERS or n.op_type in _WHY_NOT:
                continue
            try:
                schema = onnx.defs.get_schema(n.op_type, opset, "")
            except onnx.defs.SchemaError:
                continue
            body = onnx.FunctionProto()
            if schema.has_function:  # type: ignore[attr-defined]
                body.CopyFrom(schema.function_body)
            elif schema.has_context_dependent_function:  # type: ignore[attr-defined]
                if types is None:
                    types = _value_types(m)
                if any(i and i not in types for i in n.input):
                    continue
                arg_types = [types[i].SerializeToString() if i else b"" for i in n.input]
                try:
                    body.ParseFromString(
                        schema.get_context_dependent_function(  # type: ignore[attr-defined]
                            n.SerializeToString(), arg_types
                        )
                    )
                except Exception:  # noqa: BLE001 - the schema rejects the node: the importer will say so
                    continue
            else:
                continue
            given = {a.name for a in n.attribute}
            for name, spec in schema.attributes.items():  # defaults the node omits (the body refers to them)
                if name not in given and spec.default_value.type:
                    d = onnx.AttributeProto()
                    d.CopyFrom(spec.default_value)
                    d.name = name
                    n.attribute.append(d)
            body.name, body.domain = f"{n.op_type}_{len(funcs)}", "kiln.expand"
            n.op_type, n.domain = body.name, "kiln.expand"
            funcs.append(body)
        if not funcs:
            return m
        m.functions.extend(funcs)
        m.opset_import.append(onnx.helper.make_opsetid("kiln.expand", 1))
        m = onnx.inliner.inline_local_functions(m)
        del m.functions[:]
        keep = [o for o in m.opset_import if o.domain != "kiln.expand"]
        del m.opset_import[:]
        m.opset_import.extend(keep)
    return m


_ATTR_TYPE_NAMES: dict[int, str] = {
    onnx.AttributeProto.FLOAT: "a float",
    onnx.AttributeProto.INT: "an int",
    onnx.AttributeProto.STRING: "a string",
    onnx.AttributeProto.TENSOR: "a tensor",
    onnx.AttributeProto.GRAPH: "a graph",
    onnx.AttributeProto.FLOATS: "a list of floats",
    onnx.AttributeProto.INTS: "a list of ints",
    onnx.AttributeProto.STRINGS: "a list of strings",
}


def _check_node(n: onnx.NodeProto, opset: int, name: str) -> None:
    """A standard node checked against its operator's ONNX schema at the model's opset, before its
    converter reads it: the number of inputs and outputs, required inputs given, required attributes there
    and every known attribute of the schema's type. Raises :class:`ImportErrorInNode` naming the node."""
    if n.domain not in ("", "ai.onnx"):
        return
    try:
        schema = onnx.defs.get_schema(n.op_type, max(opset, 1), "")
    except onnx.defs.SchemaError:
        try:  # not defined yet at this opset (kiln imports it anyway): checked against its latest version
            schema = onnx.defs.get_schema(n.op_type)
        except onnx.defs.SchemaError:
            return
    where = f"node {name!r} ({n.op_type}, opset {opset})"
    given = len(n.input)
    while given and not n.input[given - 1]:  # trailing optional inputs left out
        given -= 1
    if not schema.min_input <= given <= schema.max_input:
        most = "any number of" if schema.max_input > 1 << 20 else f"at most {schema.max_input}"
        raise ImportErrorInNode(
            f"{where}: takes {schema.min_input} to {most} inputs (ONNX's definition), got {given}"
        )
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    for i, formal in enumerate(schema.inputs):
        if formal.option == single and (i >= len(n.input) or not n.input[i]):
            raise ImportErrorInNode(f"{where}: input {i} ({formal.name}) is required and not given")
    if len(n.output) > schema.max_output or not any(n.output):
        raise ImportErrorInNode(
            f"{where}: has {len(n.output)} outputs, ONNX's definition {schema.min_output} to {schema.max_output}"
        )
    attrs = {a.name: a for a in n.attribute}
    for key, spec in schema.attributes.items():
        a = attrs.get(key)
        if a is None:
            if spec.required:
                raise ImportErrorInNode(f"{where}: the required attribute {key!r} is missing")
            continue
        want = int(spec.type.value)  # type: ignore[attr-defined]
        if want in _ATTR_TYPE_NAMES and a.type != want:
            got = _ATTR_TYPE_NAMES.get(a.type, f"type {a.type}")
            raise ImportErrorInNode(f"{where}: attribute {key!r} must be {_ATTR_TYPE_NAMES[want]}, got {got}")


def _copy_model(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def _value_types(m: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The ONNX types of the graph's values, from ONNX shape inference, inputs and initializers."""
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - best effort: nodes whose types stay unknown are not expanded
        inferred = m
    g = inferred.graph
    out = {vi.name: vi.type for vi in [*g.input, *g.value_info, *g.output]}
    for t in g.initializer:
        out[t.name] = onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return out


def _tensor_array(t: onnx.TensorProto, what: str) -> np.ndarray:
    """The values of tensor ``t``; a tensor whose stored values do not fill its dims is a
    :class:`ModelLoadError`. bfloat16 values are widened to float32 (exactly: the model computes in float32)."""
    try:
        arr = numpy_helper.to_array(t)
        return arr.astype(np.float32) if arr.dtype.name == "bfloat16" else arr
    except (ValueError, TypeError) as e:
        dims = "x".join(map(str, t.dims)) or "scalar"
        elem = (
            onnx.TensorProto.DataType.Name(t.data_type)
            if t.data_type in onnx.TensorProto.DataType.values()
            else t.data_type
        )
        raise ModelLoadError(
            f"{what} {t.name!r} ({dims}, {elem}) does not hold the values its dims and type need ({e}); "
            "the model is corrupt or was edited without its data"
        ) from None


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = _tensor_array(v, f"attribute {a.name!r} of node {node.name or node.op_type!r}: tensor")
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[a.name] = v
    return out


def _load(
    model: onnx.ModelProto | str | Path | bytes, base_dir: str | Path | None
) -> tuple[onnx.ModelProto, dict]:
    """The model and its tensors stored outside it (:func:`_external_tensors`)."""
    if isinstance(model, onnx.ModelProto):
        return model, _external_tensors(model, base_dir, "the given model")
    try:
        if isinstance(model, bytes):
            m = onnx.load_from_string(model)
        else:
            path = Path(model)
            if not path.is_file():
                raise ModelLoadError(f"{path}: no such file")
            m = onnx.load(str(path), load_external_data=False)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for truncated files
        where = "the given bytes" if isinstance(model, bytes) else str(model)
        raise ModelLoadError(f"{where} is not a valid ONNX model (truncated or corrupt file?): {e}") from None
    where = "the given bytes" if isinstance(model, bytes) else str(model)
    if not m.graph.node and not m.graph.output:
        raise ModelLoadError(f"{where} is not a valid ONNX model (it has no graph)")
    if base_dir is None and not isinstance(model, bytes):
        base_dir = Path(model).parent
    return m, _external_tensors(m, base_dir, where)


def _all_tensors(g: onnx.GraphProto) -> Iterator[tuple[onnx.TensorProto, bool]]:
    """Every tensor of graph ``g`` and its subgraphs, with whether it is an initializer of ``g`` itself."""
    for t in g.initializer:
        yield t, True
    for n in g.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t, False
            yield from ((t, False) for t in a.tensors)
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                yield from ((t, False) for t, _ in _all_tensors(sub))


def _external_tensors(m: onnx.ModelProto, base_dir: str | Path | None, where: str) -> dict[str, np.ndarray]:
    """The data of tensors stored in files beside the model (ONNX external data: ``location`` relative to
    ``base_dir``, ``offset``, ``length``), checked against their files. The main graph's initializers of
    plain element types are memory-mapped (read only; a model over 2 GB of weights imports without reading
    them), returned by name; other external tensors are read into the model."""
    mapped: dict[str, np.ndarray] = {}
    for t, top in _all_tensors(m.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = onnx.external_data_helper.ExternalDataInfo(t)
        what = f"tensor {t.name!r}"
        if base_dir is None:
            raise ModelLoadError(
                f"{where}: {what} is stored in the external file {info.location!r}, relative to the model's "
                "directory, which kiln was not told: pass the model's path, or base_dir= with the model"
            )
        root = Path(base_dir).resolve()
        path = (root / info.location).resolve()
        if not info.location or Path(info.location).is_absolute() or not path.is_relative_to(root):
            raise ModelLoadError(
                f"{where}: {what} has external data location {info.location!r}, which is not a file inside "
                f"the model's directory {root} (ONNX locations are relative to it)"
            )
        if not path.is_file():
            raise ModelLoadError(
                f"{where}: the external data file of {what} is missing: {path} (keep the weights files "
                "next to the model, as they were saved)"
            )
        np_dtype_ = onnx.helper.tensor_dtype_to_np_dtype(t.data_type) if t.data_type in ONNX_DTYPES else None
        shape = tuple(int(d) for d in t.dims)
        offset = int(info.offset or 0)
        need = int(np.prod(shape, dtype=np.int64)) * np_dtype_.itemsize if np_dtype_ is not None else None
        length = int(info.length) if info.length else need
        size = path.stat().st_size
        if (length is not None and offset + length > size) or (need is not None and length != need):
            raise ModelLoadError(
                f"{where}: the external data of {what} ({'x'.join(map(str, shape)) or 'scalar'} "
                f"{ONNX_DTYPES.get(t.data_type, t.data_type)}, {need if need is not None else length} bytes"
                f"{f', length {length}' if length != need else ''}) at offset {offset} of {path} does not fit "
                f"the file ({size} bytes): the file is truncated or belongs to another model"
            )
        if top and np_dtype_ is not None:
            if need == 0:
                mapped[t.name] = np.zeros(shape, np_dtype_)
            else:
                arr = np.memmap(path, dtype=np_dtype_.newbyteorder("<"), mode="r", offset=offset, shape=shape)
                mapped[t.name] = arr.view(np.ndarray)
        else:
            try:
                onnx.external_data_helper.load_external_data_for_tensor(t, str(root))
            except OSError as e:
                raise ModelLoadError(
                    f"{where}: cannot read the external data of {what} from {path}: {e}"
                ) from e
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    return mapped


def _value_type(
    vi: onnx.ValueInfoProto, shapes: dict[str, tuple[int | str, ...]], bounds: dict[str, int]
) -> TensorType:
    tt = vi.type.tensor_type
    dtype = ONNX_DTYPES.get(tt.elem_type)
    if dtype is None:
        raise ImportErrorInNode(f"input {vi.name!r} has unsupported element type {tt.elem_type}")
    model_dims = list(tt.shape.dim)

    def sym_name(i: int) -> str:
        d = model_dims[i] if i < len(model_dims) else None
        return d.dim_param if d is not None and d.dim_param else f"{vi.name}_d{i}"

    if vi.name in shapes:
        given: list[int | Sym] = []
        for i, d in enumerate(shapes[vi.name]):
            fixed = model_dims[i] if i < len(model_dims) and model_dims[i].HasField("dim_value") else None
            if isinstance(d, str) and fixed is not None:  # "?:N" where the model has a fixed size: that size
                _, bound = parse_dynamic_dim(d, sym_name(i))
                if bound < fixed.dim_value:
                    raise ValueError(
                        f"input {vi.name!r} dimension {i} has the fixed size {fixed.dim_value} in the model, "
                        f"over the bound {bound} given for it"
                    )
                given.append(int(fixed.dim_value))
            elif isinstance(d, str):  # "?:512" or "seq:512": a dimension known at run time, at most 512
                name, bound = parse_dynamic_dim(d, sym_name(i))
                given.append(Sym(name))
                if bounds.setdefault(name, bound) != bound:
                    raise ValueError(f"dimension {name!r} is given two bounds, {bounds[name]} and {bound}")
            else:
                given.append(int(d))
        return TensorType(tuple(given), dtype)
    if not tt.HasField("shape"):
        raise ImportErrorInNode(
            f"input {vi.name!r} has no shape (not even a rank): give it one with shapes={{{vi.name!r}: ...}} "
            f"(kiln compile --shape {vi.name}=...)"
        )
    dims: list[int | Sym] = []
    for i, md in enumerate(model_dims):
        if md.HasField("dim_value") and md.dim_value < 0:
            raise ImportErrorInNode(f"input {vi.name!r} has a negative dimension {md.dim_value} (axis {i})")
        dims.append(int(md.dim_value) if md.HasField("dim_value") else Sym(sym_name(i)))
    return TensorType(tuple(dims), dtype)


def parse_dynamic_dim(text: str, default_name: str) -> tuple[str, int]:
    """``"?:512"`` (named after the model's own name for the dimension) or ``"seq:512"``: a dimension whose
    size is given at run time, from 1 up to the bound."""
    name, sep, bound = text.partition(":")
    name = name.strip()
    if not sep or not bound.strip().isdigit() or int(bound) < 1 or not (name == "?" or name.isidentifier()):
        raise ValueError(
            f"dynamic dimension {text!r}: write ?:MAX or NAME:MAX with MAX the largest size it may take "
            "(e.g. 1x?:512 for a sequence of up to 512 tokens)"
        )
    return (default_name if name == "?" else name), int(bound)


def load_custom_op(spec: Any) -> OpDef:
    """The kiln operator a custom-domain node maps to: an :class:`~kiln.ops.OpDef` (e.g. made with
    :func:`kiln.ops.script.operator`), a registered operator's name, or ``"module:attribute"`` /
    ``"path/to/file.py:attribute"`` naming one (``kiln compile --custom-op domain:Name=module:attribute``)."""
    if isinstance(spec, OpDef):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"custom operator {spec!r} is not a kiln operator")
    if ":" not in spec:
        return get_op(spec)
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).resolve()
            key = f"kiln_custom_op_{path.stem}"
            module = sys.modules.get(key)
            if module is None or getattr(module, "__file__", None) != str(path):
                loader = importlib.util.spec_from_file_location(key, path)
                if loader is None or loader.loader is None:
                    raise ImportError(f"cannot load {path}")
                module = importlib.util.module_from_spec(loader)
                sys.modules[key] = module
                loader.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        obj = getattr(module, attr)
    except (ImportError, AttributeError, OSError) as e:
        raise ValueError(f"cannot load custom operator {spec!r}: {e}") from e
    if not isinstance(obj, OpDef):
        raise ValueError(f"custom operator {spec!r} is a {type(obj).__name__}, not a kiln operator (OpDef)")
    return obj


def from_onnx(
    model: onnx.ModelProto | str | Path | bytes,
    shapes: dict[str, tuple[int | str, ...]] | None = None,
    name: str | None = None,
    custom_ops: dict[str, Any] | None = None,
    base_dir: str | Path | None = None,
) -> Module:
    """Import an ONNX model (path, bytes or ModelProto) into a kiln Module with graph function ``main``.

    ``custom_ops`` maps custom-domain node types, ``"domain:OpType"``, to kiln operators (see
    :func:`load_custom_op`); such a node becomes that operator, with the node's attributes.

    Tensors stored as external data (in files beside the model; ``onnx.save(...,
    save_as_external_data=True)``, and every model over protobuf's 2 GB) are read from ``base_dir``, by
    default the model file's directory (a ModelProto or bytes with external tensors needs ``base_dir``); the
    main graph's weights are memory-mapped, not read into memory."""
    m, external = _load(model, base_dir)
    shapes = dict(shapes or {})
    custom = {k: load_custom_op(v) for k, v in (custom_ops or {}).items()}
    g = m.graph
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 1:
        raise ModelLoadError(
            f"the model imports version {opset} of the ONNX operator set; versions start at 1"
        )
    m = _expand_functions(m, opset)
    g = m.graph
    unsupported: dict[str, list[str]] = {}
    for n in g.node:
        if f"{n.domain}:{n.op_type}" in custom:
            continue
        if _converter_for(n) is None:
            unsupported.setdefault(
                n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}", []
            ).append(n.name or (n.output[0] if n.output else n.op_type))
    if unsupported:
        parts = [
            f"{op} (nodes: {', '.join(names)})"
            + (f": not supported, because {_WHY_NOT[op]}" if op in _WHY_NOT else "")
            + (f": not supported, because {_WHY_NOT_MS}" if op.startswith(f"{MS_DOMAIN}.") else "")
            for op, names in sorted(unsupported.items())
        ]
        raise UnsupportedOperatorError(f"unsupported ONNX operators: {'; '.join(parts)}")
    im = _Importer(g, opset)
    inits = {t.name for t in g.initializer}
    for t in g.initializer:
        arr = external[t.name] if t.name in external else _tensor_array(t, "initializer")
        if arr.dtype.name == "bfloat16":  # external bfloat16 weights: widened like the others
            arr = arr.astype(np.float32)
        dtype_of(arr)  # rejects unsupported element types with a clear message
        im.env[t.name] = Constant(t.name, arr)
    params: list[Var] = []
    bounds: dict[str, int] = {}
    for vi in g.input:
        if vi.name in inits:
            continue
        param = Var(vi.name, _value_type(vi, shapes, bounds))
        params.append(param)
        im.env[vi.name] = param
    unknown = sorted(set(shapes) - {p.name for p in params})
    if unknown:
        raise ValueError(
            f"shapes given for unknown inputs {unknown}; the model's inputs are {[p.name for p in params]}"
        )
    for n in _dataflow_order(g.node):
        im.node_name = n.name or (n.output[0] if n.output else n.op_type)
        im.op_type = n.op_type
        if f"{n.domain}:{n.op_type}" not in custom:
            _check_node(n, opset, im.node_name)
        ins: list[Value | None] = [im.lookup(i, f"node {im.node_name!r}") if i else None for i in n.input]
        try:
            if f"{n.domain}:{n.op_type}" in custom:
                op = custom[f"{n.domain}:{n.op_type}"]
                results = im.emit(op.name, [_a(ins, i) for i in range(len(ins))], list(n.output), **_attrs(n))
            else:
                results = _converter_for(n)(im, ins, _attrs(n), list(n.output))  # type: ignore[misc]
        except ImportErrorInNode:
            raise
        except (ValueError, KeyError, IndexError) as e:
            raise ImportErrorInNode(f"node {im.node_name!r} ({n.op_type}): {e}") from e
        for k, out_name in enumerate(n.output):
            if k < len(results):
                im.env[out_name] = results[k]
            elif out_name:
                im.missing[out_name] = f"output {k} of {n.op_type} node {im.node_name!r} is not supported"
    outputs: list[Value] = []
    for o in g.output:
        v = im.materialize(im.lookup(o.name, "graph output"), o.name)
        if isinstance(v, Var) and v.name != o.name or v in params:
            v = im.emit("identity", [v], [o.name])[0]
        outputs.append(v)
    model_name = name or g.name or "model"
    main = GraphFunction("main", tuple(params), tuple(im.nodes), tuple(outputs), {"model_name": model_name})
    return Module({"main": main}, {"dim_bounds": bounds} if bounds else {})
