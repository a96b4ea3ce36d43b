"""The ONNX importer fuzzed with hypothesis: valid models (the single-node operator cases of
tests/op_cases.py and a few small multi-node graphs) mutated (attributes changed, added or removed; input
dims and element types changed; node inputs dropped, duplicated or swapped; initializers of the wrong size
or type; opsets out of range; cycles; missing or duplicated outputs; operator types and domains swapped)
are imported and run through the default pipeline up to ``legalize``. Each either compiles that far or
raises one of kiln's errors for bad models (``ModelLoadError``, ``UnsupportedOperatorError``,
``ImportErrorInNode``, or an operator's ``OpError``) whose message names the node or the operator, and that
is not a Python or NumPy error in disguise (an ``IndexError``/``KeyError``/``TypeError``... or a NumPy
``ValueError`` caught and re-raised with the node's name). Anything else is a crash.

Deterministic (``derandomize=True``, no example database) and bounded (``KILN_FUZZ_EXAMPLES`` examples,
default 1000, about 20 s); raise ``KILN_FUZZ_EXAMPLES`` to search longer (with ``derandomize`` the same
examples come back: change the seed models or the strategy to see others). A few mutated models are compiled
all the way to a package; the crashes the fuzzer found are pinned as plain cases at the end."""

from __future__ import annotations

import os
import traceback
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from kiln.driver import load_model
from kiln.frontend import ModelLoadError, UnsupportedOperatorError
from kiln.frontend.onnx import CONVERTERS, ImportErrorInNode
from kiln.ops.base import OpError
from kiln.targets import get_target
from kiln.transform import Pipeline, default_pipeline

TARGET = "x86_64-linux"
EXAMPLES = int(os.environ.get("KILN_FUZZ_EXAMPLES", "1000"))
KILN_ERRORS = (ModelLoadError, UnsupportedOperatorError, ImportErrorInNode, OpError)


# ------------------------------------------------------------------------------------------- seed models
def _chain_model() -> onnx.ModelProto:
    """conv -> relu -> pool -> reshape (a shape initializer) -> gemm -> softmax, with an Identity and a
    Shape -> Gather -> Concat shape computation on the way."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("f4"), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype("f4"), "b"),
        numpy_helper.from_array(rng.standard_normal((16, 5)).astype("f4"), "fc"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Identity", ["p"], ["pi"], name="ident"),
        helper.make_node("Shape", ["pi"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Concat", ["n", "minus_one"], ["target"], name="target_shape", axis=0),
        helper.make_node("Reshape", ["pi", "target"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["g"], name="fc", alpha=1.0, transB=0),
        helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1),
    ]
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _branchy_model() -> onnx.ModelProto:
    """Two inputs, broadcasting, a Split with two outputs, a Transpose, a MatMul and a LayerNormalization."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 6)).astype("f4"), "m"),
        numpy_helper.from_array(np.ones(6, np.float32), "gamma"),
        numpy_helper.from_array(np.array([3, 3], np.int64), "halves"),
    ]
    nodes = [
        helper.make_node("Add", ["a", "bias"], ["s"], name="add"),
        helper.make_node("MatMul", ["s", "m"], ["mm"], name="matmul"),
        helper.make_node("Split", ["mm", "halves"], ["h0", "h1"], name="split", axis=-1),
        helper.make_node("Mul", ["h0", "h1"], ["prod"], name="mul"),
        helper.make_node("Concat", ["prod", "h1"], ["cat"], name="concat", axis=-1),
        helper.make_node("Transpose", ["cat"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Transpose", ["t"], ["tt"], name="transpose_back", perm=[0, 2, 1]),
        helper.make_node("LayerNormalization", ["tt", "gamma"], ["y"], name="ln", axis=-1),
    ]
    g = helper.make_graph(
        nodes,
        "branchy",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 6]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [6]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 6])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _seed_models() -> list[tuple[str, onnx.ModelProto]]:
    from op_cases import CASES

    out = [("chain", _chain_model()), ("branchy", _branchy_model())]
    for name, case in CASES.items():
        try:
            out.append((name, case.model))
        except Exception:  # noqa: BLE001, S112 - a case ONNX's strict shape inference rejects is no seed
            continue
    return out


SEEDS = _seed_models()


# ---------------------------------------------------------------------------------------------- mutations
_ELEM_TYPES = [1, 2, 3, 5, 6, 7, 9, 10, 11, 4, 8, 12, 13, 16, 14, 0, 99]
_STRINGS = ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "", "linear", "nearest", "cubic", "bogus"]
_INTS = st.one_of(st.integers(-3, 6), st.sampled_from([0, -1, 2**31, -(2**40), 1000]))
_FLOATS = st.one_of(st.floats(-3, 3), st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e30]))


def _attr_value(draw: st.DrawFn, kind: int) -> Any:
    A = onnx.AttributeProto  # noqa: N806
    if kind == A.INT:
        return draw(_INTS)
    if kind == A.FLOAT:
        return draw(_FLOATS)
    if kind == A.INTS:
        return draw(st.lists(_INTS, max_size=6))
    if kind == A.FLOATS:
        return draw(st.lists(_FLOATS, max_size=4))
    if kind == A.STRING:
        return draw(st.sampled_from(_STRINGS))
    if kind == A.TENSOR:
        return numpy_helper.from_array(np.array(draw(st.lists(_INTS, max_size=4)), np.int64))
    return draw(_INTS)


def _attr_type(kind: int) -> int:
    A = onnx.AttributeProto  # noqa: N806
    return kind if kind in (A.INT, A.FLOAT, A.INTS, A.FLOATS, A.STRING, A.TENSOR) else A.INT


def _all_names(g: onnx.GraphProto) -> list[str]:
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    names += [o for n in g.node for o in n.output if o]
    return names


@st.composite
def _mutate(draw: st.DrawFn, m: onnx.ModelProto) -> str:
    """Applies one random mutation to ``m`` in place; returns what it did (for the failure report)."""
    g = m.graph
    kinds = [
        "attr-change",
        "attr-add",
        "attr-drop",
        "input-dims",
        "input-dtype",
        "node-input-drop",
        "node-input-dup",
        "node-input-swap",
        "init-shape",
        "init-dtype",
        "init-values",
        "opset",
        "cycle",
        "output-missing",
        "output-drop",
        "node-output-dup",
        "op-type",
        "domain",
        "node-drop",
    ]
    kind = draw(st.sampled_from(kinds))
    node = g.node[draw(st.integers(0, len(g.node) - 1))] if len(g.node) else None
    if kind == "attr-change" and node is not None and len(node.attribute):
        a = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
        new = helper.make_attribute(a.name, _attr_value(draw, a.type), attr_type=_attr_type(a.type))
        a.CopyFrom(new)
        return f"{node.name}.{a.name} = {onnx.helper.get_attribute_value(a)!r}"
    if kind == "attr-add" and node is not None:
        try:
            schema = onnx.defs.get_schema(node.op_type, 17, node.domain)
            names = sorted(schema.attributes)
        except onnx.defs.SchemaError:
            names = []
        names = [n for n in names if n not in {a.name for a in node.attribute}] or ["bogus_attr"]
        name = draw(st.sampled_from(names))
        kind_ = schema.attributes[name].type if name != "bogus_attr" else onnx.AttributeProto.INT
        value = _attr_value(draw, int(kind_))
        node.attribute.append(helper.make_attribute(name, value, attr_type=_attr_type(int(kind_))))
        return f"{node.name} + {name}"
    if kind == "attr-drop" and node is not None and len(node.attribute):
        i = draw(st.integers(0, len(node.attribute) - 1))
        name = node.attribute[i].name
        del node.attribute[i]
        return f"{node.name} - {name}"
    if kind == "input-dims" and len(g.input):
        vi = g.input[draw(st.integers(0, len(g.input) - 1))]
        shape = vi.type.tensor_type.shape
        how = draw(st.sampled_from(["set", "symbolic", "add", "remove", "unknown-rank"]))
        if how == "set" and len(shape.dim):
            d = shape.dim[draw(st.integers(0, len(shape.dim) - 1))]
            d.dim_value = draw(st.sampled_from([0, 1, 2, 3, 7, -1]))
        elif how == "symbolic" and len(shape.dim):
            shape.dim[draw(st.integers(0, len(shape.dim) - 1))].dim_param = "N"
        elif how == "add":
            shape.dim.add().dim_value = draw(st.integers(1, 3))
        elif how == "remove" and len(shape.dim):
            del shape.dim[draw(st.integers(0, len(shape.dim) - 1))]
        elif how == "unknown-rank":
            vi.type.tensor_type.ClearField("shape")
        return f"input {vi.name} dims {how}"
    if kind == "input-dtype" and len(g.input):
        vi = g.input[draw(st.integers(0, len(g.input) - 1))]
        vi.type.tensor_type.elem_type = draw(st.sampled_from(_ELEM_TYPES))
        return f"input {vi.name} type {vi.type.tensor_type.elem_type}"
    if kind == "node-input-drop" and node is not None and len(node.input):
        i = draw(st.integers(0, len(node.input) - 1))
        if draw(st.booleans()):
            del node.input[i:]
        else:
            node.input[i] = ""
        return f"{node.name} input {i} dropped"
    if kind == "node-input-dup" and node is not None and len(node.input):
        node.input.append(node.input[draw(st.integers(0, len(node.input) - 1))])
        return f"{node.name} input duplicated"
    if kind == "node-input-swap" and node is not None and len(node.input):
        i = draw(st.integers(0, len(node.input) - 1))
        node.input[i] = draw(st.sampled_from(_all_names(g)))
        return f"{node.name} input {i} = {node.input[i]}"
    if kind.startswith("init-") and len(g.initializer):
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        try:
            arr = numpy_helper.to_array(t)
        except ValueError:  # already broken by an earlier mutation
            return "nothing"
        if kind == "init-shape":
            how = draw(st.sampled_from(["reshape", "resize", "dims-only", "empty", "scalar"]))
            if how == "reshape" and arr.size:
                arr = arr.reshape(-1)
            elif how == "resize":
                arr = np.resize(arr, draw(st.integers(0, 40)))
            elif how == "empty":
                arr = arr.reshape(-1)[:0]
            elif how == "scalar":
                arr = np.asarray(arr.reshape(-1)[0] if arr.size else 0, arr.dtype)
            if how == "dims-only":  # dims that do not match the stored data
                t.dims.append(draw(st.integers(2, 5)))
                return f"initializer {t.name} dims {list(t.dims)} for {arr.size} values"
        elif kind == "init-dtype":
            arr = arr.astype(draw(st.sampled_from(["float32", "int64", "int32", "uint8", "float16", "bool"])))
        else:
            if arr.dtype.kind in "iu":
                values = draw(st.lists(_INTS, min_size=arr.size, max_size=arr.size))
                arr = np.array(values, np.int64).astype(arr.dtype).reshape(arr.shape)
            elif arr.dtype.kind == "f" and arr.size:
                arr = arr.copy()
                arr.reshape(-1)[draw(st.integers(0, arr.size - 1))] = draw(_FLOATS)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        return f"initializer {t.name} {kind} -> {arr.dtype}{list(arr.shape)}"
    if kind == "opset":
        m.opset_import[0].version = draw(st.sampled_from([0, 1, 5, 6, 7, 9, 11, 12, 13, 18, 21, 23, 24, 99]))
        return f"opset {m.opset_import[0].version}"
    if kind == "cycle" and node is not None and len(g.node) > 1:
        later = [o for n in g.node[list(g.node).index(node) :] for o in n.output if o]
        node.input.append(draw(st.sampled_from(later)))
        return f"{node.name} reads a later output {node.input[-1]}"
    if kind == "output-missing" and len(g.output):
        g.output[0].name = "nowhere"
        return "graph output renamed to an undefined name"
    if kind == "output-drop" and len(g.output):
        del g.output[0]
        return "graph output dropped"
    if kind == "node-output-dup" and node is not None and len(g.node) > 1:
        other = g.node[draw(st.integers(0, len(g.node) - 1))]
        if other is not node and len(node.output) and len(other.output):
            node.output[0] = other.output[0]
            return f"{node.name} writes {other.output[0]} too"
    if kind == "op-type" and node is not None:
        node.op_type = draw(st.sampled_from(sorted(CONVERTERS)))
        return f"{node.name} is now a {node.op_type}"
    if kind == "domain" and node is not None:
        node.domain = draw(st.sampled_from(["com.microsoft", "ai.onnx.ml", "bogus"]))
        return f"{node.name} in domain {node.domain}"
    if kind == "node-drop" and node is not None:
        g.node.remove(node)
        return f"{node.name} removed"
    return "nothing"


@st.composite
def _mutated(
    draw: st.DrawFn, seeds: list[tuple[str, onnx.ModelProto]] = SEEDS
) -> tuple[onnx.ModelProto, list[str]]:
    name, seed = draw(st.sampled_from(seeds))
    m = onnx.ModelProto()
    m.CopyFrom(seed)
    done = [name] + [draw(_mutate(m)) for _ in range(draw(st.integers(1, 3)))]
    return m, done


# ------------------------------------------------------------------------------------------------ checks
_PASSES = default_pipeline(TARGET).passes
_UPTO_LEGALIZE = Pipeline(_PASSES[: next(i for i, p in enumerate(_PASSES) if p.name == "legalize") + 1])


def _import_and_legalize(m: onnx.ModelProto) -> None:
    mod = load_model(m)
    _UPTO_LEGALIZE(mod.with_attrs(target=get_target(TARGET)))


def _crash(e: BaseException) -> str | None:
    """Why ``e`` is not a clear error (None if it is one)."""
    if not isinstance(e, KILN_ERRORS):
        return f"{type(e).__name__} is not one of kiln's errors"
    chain: list[BaseException] = []
    c: BaseException | None = e
    while c is not None and c not in chain:
        chain.append(c)
        c = c.__cause__ if c.__cause__ is not None or c.__suppress_context__ else c.__context__
    for c in chain[1:]:
        if not isinstance(c, ValueError) or isinstance(c, (onnx.defs.SchemaError,)):
            return f"a {type(c).__name__} ({c}) re-raised as {type(e).__name__}"
        frames = traceback.extract_tb(c.__traceback__)
        if frames and "/kiln/" not in frames[-1].filename and "/sdk/" not in frames[-1].filename:
            return f"a ValueError from {frames[-1].filename} ({c}) re-raised as {type(e).__name__}"
    msg = str(e)
    if isinstance(e, ImportErrorInNode) and not any(k in msg for k in ("node ", "input ", "graph output")):
        return f"{type(e).__name__} does not name the node: {msg}"
    return None


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_mutated())
def test_mutated_models_compile_or_fail_clearly(case: tuple[onnx.ModelProto, list[str]]) -> None:
    m, what = case
    try:
        _import_and_legalize(m)
    except Exception as e:  # noqa: BLE001 - every exception is judged
        why = _crash(e)
        if why is not None:
            tb = "".join(traceback.format_exception(e))
            pytest.fail(f"{' / '.join(what)}: {why}\n{tb}")


@settings(
    max_examples=6, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(_mutated(SEEDS[:2]))
def test_a_few_mutated_models_compile_to_code(case: tuple[onnx.ModelProto, list[str]]) -> None:
    """Mutations of the multi-node seeds compiled all the way to a package (too slow to fuzz at length)."""
    import kiln

    m, what = case
    try:
        kiln.compile(m, TARGET)
    except Exception as e:  # noqa: BLE001 - every exception is judged
        why = _crash(e)
        if why is not None:
            pytest.fail(f"{' / '.join(what)}: {why}\n{''.join(traceback.format_exception(e))}")


def test_seed_models_import_and_legalize() -> None:
    """The unmutated seeds compile to legalized IR (a fuzz failure is the mutation's, not the seed's)."""
    failed = []
    for name, m in SEEDS:
        try:
            _import_and_legalize(m)
        except Exception as e:  # noqa: BLE001
            failed.append(f"{name}: {type(e).__name__}: {e}")
    assert not failed, failed


# ------------------------------------------------------------------------- crashes the fuzzer found, pinned
def _edit_chain(edit: str) -> onnx.ModelProto:
    m = _chain_model()
    g = m.graph
    conv = g.node[0]
    if edit == "empty-pads":
        conv.attribute[0].CopyFrom(helper.make_attribute("pads", [], attr_type=onnx.AttributeProto.INTS))
    elif edit == "group-0":
        conv.attribute.append(helper.make_attribute("group", 0))
    elif edit == "string-strides":
        conv.attribute[1].CopyFrom(helper.make_attribute("strides", "2"))
    elif edit == "unknown-rank-input":
        g.input[0].type.tensor_type.ClearField("shape")
    elif edit == "short-initializer":
        g.initializer[0].dims.append(2)
    elif edit == "float-shape-input":
        g.initializer[3].CopyFrom(numpy_helper.from_array(np.array([0.0], np.float32), "zero"))
    elif edit == "extra-input":
        g.node[1].input.append("x")
    elif edit == "missing-required-attribute":
        del g.node[2].attribute[:]  # MaxPool without kernel_shape
    elif edit == "opset-0":
        m.opset_import[0].version = 0
    elif edit == "cycle":
        conv.input[0] = "y"
    elif edit == "gather-axis-out-of-range":
        g.node[5].attribute[0].i = 3
    return m


@pytest.mark.parametrize(
    ("edit", "error", "says"),
    [
        ("empty-pads", ImportErrorInNode, "'conv'.*'pads' = \\[\\] needs 4 values"),
        ("group-0", ImportErrorInNode, "'conv'.*group must be at least 1"),
        (
            "string-strides",
            ImportErrorInNode,
            "'conv'.*attribute 'strides' must be a list of ints, got a string",
        ),
        ("unknown-rank-input", ImportErrorInNode, "input 'x' has no shape"),
        ("short-initializer", ModelLoadError, "initializer 'w' \\(4x3x3x3x2, FLOAT\\) does not hold"),
        ("float-shape-input", ImportErrorInNode, "'batch'.*indices must be integers"),
        ("extra-input", ImportErrorInNode, "'relu' \\(Relu, opset 17\\): takes 1 to at most 1 inputs"),
        ("missing-required-attribute", ImportErrorInNode, "'pool'.*required attribute 'kernel_shape'"),
        ("opset-0", ModelLoadError, "version 0 of the ONNX operator set"),
        ("cycle", ImportErrorInNode, "'conv'.*'y' is not defined before it is used"),
        ("gather-axis-out-of-range", ImportErrorInNode, "'batch'.*axis 3 out of range for rank 1"),
    ],
)
def test_what_the_fuzzer_found_is_a_clear_error(edit: str, error: type, says: str) -> None:
    with pytest.raises(error, match=says) as e:
        _import_and_legalize(_edit_chain(edit))
    assert _crash(e.value) is None
