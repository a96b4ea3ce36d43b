"""Schedules as data: target [schedule] tables and schedule files are validated with clear errors; the default
records are what the lowerings used to hard-code; an override changes the loop nest of exactly the instance it
names, stays correct against the NumPy reference, and reaches ``kiln.compile`` and ``kiln compile``."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import running
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.driver import compile_module
from kiln.frontend import from_onnx
from kiln.ir import tensor as T
from kiln.ops.interpreter import interpret
from kiln.ops.schedule import (
    ScheduleFile,
    apply_schedule_file,
    instance_key,
    parse_instance_key,
    record_instances,
)
from kiln.targets import TargetError, get_target, list_targets, parse_target
from kiln.targets.schedule import FIELDS, ScheduleError, default_schedule

TARGET = "x86_64-linux"


def _target_table(**schedule: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "triple": "x86_64-unknown-linux-musl",
        "cpu": "x86-64-v3",
        "features": "",
        "vector_bits": 256,
        "os": "linux",
        "zig_target": "x86_64-linux-musl",
        "schedule": schedule,
    }


def _model(nodes: list[Any], x_shape: list[int], inits: list[np.ndarray | Any]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def conv_model(oc: int = 24, ic: int = 16, hw: int = 20, k: int = 3, **attrs: Any) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((oc, ic, k, k)) / np.sqrt(ic * k * k)).astype("f4"), "w")
    b = numpy_helper.from_array(rng.standard_normal(oc).astype("f4"), "b")
    attrs.setdefault("pads", [k // 2] * 4)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    return _model(nodes, [1, ic, hw, hw], [w, b])


def matmul_model(m: int = 13, k: int = 70, n: int = 50) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype("f4"), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [m, k], [w])


def pool_model(op: str = "MaxPool") -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    return _model([node], [1, 4, 15, 17], [])


def int_avgpool_model() -> onnx.ModelProto:
    """An average pooling of int32 values: the pooling the ``pool`` schedule section shapes (float pooling
    always runs its SIMD row kernels)."""
    ten = numpy_helper.from_array(np.array(10.0, "f4"), "ten")
    nodes = [
        helper.make_node("Mul", ["x", "ten"], ["xs"]),
        helper.make_node("Cast", ["xs"], ["xi"], to=TensorProto.INT32),
        helper.make_node(
            "AveragePool", ["xi"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT),
    ]
    return _model(nodes, [1, 4, 15, 17], [ten])


def _feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(1).standard_normal(shape).astype("f4")}


def _keys(model: onnx.ModelProto, target: Any = TARGET) -> dict[str, str]:
    with record_instances() as seen:
        compile_module(from_onnx(model), target)
    return seen


def _only_key(model: onnx.ModelProto) -> str:
    (key,) = set(_keys(model).values())
    return key


def _loops(model: onnx.ModelProto, target: Any) -> list[tuple[str, int, str]]:
    """(name, extent, kind) of every loop of the model's tensor functions, and the shapes of local buffers."""
    mod = compile_module(from_onnx(model), target)
    found: list[tuple[str, int, str]] = []

    def walk(s: Any) -> None:
        if isinstance(s, T.For):
            found.append((s.var.name, int(s.extent.value), s.kind))  # type: ignore[attr-defined]
            walk(s.body)
        elif isinstance(s, T.Seq):
            for x in s.stmts:
                walk(x)
        elif isinstance(s, T.IfThenElse):
            walk(s.then)
            if s.else_ is not None:
                walk(s.else_)
        elif isinstance(s, T.Allocate):
            found.append((s.buffer.name, int(np.prod(s.buffer.shape)), s.buffer.scope))
            walk(s.body)

    for f in mod.tensor_functions().values():
        walk(f.body)
    return found


# ------------------------------------------------------------------------------------------------ target tables
def test_every_target_has_a_complete_valid_schedule() -> None:
    for t in list_targets():
        s = t.schedule_for()
        assert set(s.as_dict()) == set(FIELDS)
        for section, fields in FIELDS.items():
            assert set(s.as_dict()[section]) == set(fields), (t.name, section)


#: Where a shipped Linux target's [schedule] table departs from the generic defaults, and why.
TUNED = {
    # RVV: 4-vector tiles and register tiles up to 512 columns for fewer rows than a tile (instruction counts
    # under QEMU, benchmarks/icount.py and docs/topics/performance.md)
    "riscv64-linux-rvv": {"gemm": {"nr": 16, "stream_min_tiles": 32}},
}


def test_linux_targets_state_the_tiles_the_lowerings_used_to_derive() -> None:
    """The [schedule] tables of the shipped Linux targets restate what the lowerings computed from the vector
    width before schedules were data: 6 rows x 2 vectors (4 x 4 scalars without vectors), except for the
    fields a target tuned (TUNED)."""
    for t in list_targets():
        if t.os == "linux":
            assert "schedule" not in t.extra
            want = default_schedule(t.vector_bits)
            for section, fields in TUNED.get(t.name, {}).items():
                want = dataclasses.replace(
                    want, **{section: dataclasses.replace(getattr(want, section), **fields)}
                )
            assert t.schedule == want, t.name
    assert get_target("x86_64-linux-avx512").schedule_for().gemm.nr == 32
    assert get_target("riscv64-linux").schedule_for().gemm.mr == 4


def test_target_table_overrides_the_generic_defaults() -> None:
    t = parse_target(_target_table(gemm={"mr": 4, "pack": "never"}, pool={"vectorize": True}))
    s = t.schedule_for("any instance")
    assert (s.gemm.mr, s.gemm.nr, s.gemm.pack, s.pool.vectorize) == (4, 16, "never", True)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"gem": {"mr": 4}},
            r"\[schedule\]: unknown section 'gem' \(did you mean 'gemm'\?\); sections: gemm, conv2d, pool",
        ),
        ({"gemm": {"m": 4}}, r"\[schedule\]\.gemm: unknown field 'm' \(did you mean 'mr'\?\)"),
        ({"gemm": {"mr": 0}}, r"\[schedule\]\.gemm\.mr must be an integer from 1 to 32, got 0"),
        ({"gemm": {"nr": "16"}}, r"\[schedule\]\.gemm\.nr must be an integer from 1 to 512, got '16'"),
        ({"gemm": {"mr": True}}, r"\[schedule\]\.gemm\.mr must be an integer"),
        (
            {"gemm": {"pack": "sometimes"}},
            r"\[schedule\]\.gemm\.pack must be one of 'auto', 'always', 'never'",
        ),
        ({"pool": {"vectorize": 1}}, r"\[schedule\]\.pool\.vectorize must be true or false, got 1"),
        (
            {"conv2d": {"col_block_bytes": -1}},
            r"\[schedule\]\.conv2d\.col_block_bytes must be an integer >= 1, got -1",
        ),
        ({"gemm": 6}, r"\[schedule\]\.gemm must be a table of fields, got 6"),
    ],
)
def test_bad_target_tables_name_file_and_field(table: dict[str, Any], message: str) -> None:
    with pytest.raises(TargetError, match=r"^my\.toml: " + message):
        parse_target(_target_table(**table), "my.toml")


def test_bad_table_in_a_user_target_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in _target_table().items() if k != "schedule")
    (tmp_path / "mine.toml").write_text(text + "\n[schedule.gemm]\nnr = 0\n")
    monkeypatch.setenv("KILN_TARGET_PATH", str(tmp_path))
    with pytest.raises(
        TargetError, match=r"mine\.toml: \[schedule\]\.gemm\.nr must be an integer from 1 to 512"
    ):
        get_target("t")


# ------------------------------------------------------------------------------------------------ schedule files
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], r"a schedule file is a JSON object, got list"),
        ({"instances": {}}, r"'kiln_schedule' must be 1 \(the format version\), got None"),
        ({"kiln_schedule": 1, "instance": {}}, r"unknown key 'instance'"),
        ({"kiln_schedule": 1, "instances": {"conv2d": {}}}, r"instance key 'conv2d' is not of the form"),
        (
            {"kiln_schedule": 1, "instances": {"softmax(float32[2,3]; axis=1)": {}}},
            r"instance 'softmax\(float32\[2,3\]; axis=1\)': operator 'softmax' has no schedule; scheduled "
            r"operators: matmul, conv2d, max_pool2d, avg_pool2d",
        ),
        (
            {"kiln_schedule": 1, "instances": {"matmul(float32[2,3], float32[3,4])": {"conv2d": {}}}},
            r"instance 'matmul\(float32\[2,3\], float32\[3,4\]\)': section 'conv2d' does not apply here; "
            r"it takes gemm",
        ),
        (
            {"kiln_schedule": 1, "instances": {"matmul(float32[2,3], float32[3,4])": {"gemm": {"mr": 99}}}},
            r"instance 'matmul\(float32\[2,3\], float32\[3,4\]\)'\.gemm\.mr must be an integer from 1 to 32, got 99",
        ),
        (
            {"kiln_schedule": 1, "default": {"pool": {"unroll": True}}},
            r"default\.pool: unknown field 'unroll'",
        ),
        ({"kiln_schedule": 1, "target": 3}, r"'target' must be a target name"),
    ],
)
def test_bad_schedule_files_are_refused_with_the_place(data: Any, message: str, tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ScheduleError, match=re.escape(str(path)) + ": " + message):
        ScheduleFile.load(path)


def test_unreadable_schedule_files(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="cannot read schedule file"):
        ScheduleFile.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ScheduleError, match=r"bad\.json: invalid JSON"):
        ScheduleFile.load(tmp_path / "bad.json")


def test_a_file_tuned_for_another_target_is_refused() -> None:
    with pytest.raises(
        ScheduleError, match="tuned for target 'aarch64-linux' do not apply to 'x86_64-linux'"
    ):
        apply_schedule_file(get_target(TARGET), {"kiln_schedule": 1, "target": "aarch64-linux"})


def test_schedule_file_round_trips(tmp_path: Path) -> None:
    sf = ScheduleFile(
        instances={"matmul(float32[2,3], float32[3,4])": {"gemm": {"mr": 2}}},
        default={"conv2d": {"pack_min_k": 0}},
        target=TARGET,
        tuning={"trials": 3},
    )
    sf.save(tmp_path / "s.json")
    back = ScheduleFile.load(tmp_path / "s.json")
    assert (back.instances, back.default, back.target, back.tuning) == (
        sf.instances,
        sf.default,
        TARGET,
        sf.tuning,
    )


# ------------------------------------------------------------------------------------------------ instance keys
def test_instance_keys_are_stable_across_spellings_and_models() -> None:
    """The same layer gets the same key whether the frontend spelled default attributes or not, and in a
    model with other layers around it."""
    key = _only_key(conv_model(strides=[1, 1], dilations=[1, 1], group=1))
    assert key == _only_key(conv_model())
    assert key == (
        "conv2d(float32[1,16,20,20], float32[24,16,3,3], float32[24]; dilations=1,1; groups=1; pads=1,1,1,1; "
        "strides=1,1)"
    )
    bigger = conv_model()
    bigger.graph.initializer.append(numpy_helper.from_array(np.ones((20, 5), "f4"), "w2"))
    bigger.graph.node.append(helper.make_node("MatMul", ["y", "w2"], ["z"]))
    bigger.graph.output[0].name = "z"
    keys = set(_keys(bigger).values())
    assert key in keys and len(keys) == 2
    op, inputs, attrs = parse_instance_key(key)
    assert (op, inputs[1], attrs["pads"]) == ("conv2d", ("float32", (24, 16, 3, 3)), (1, 1, 1, 1))
    assert (
        instance_key("matmul", [((2, 3), "float32"), ((3,), "float32")], {})
        == "matmul(float32[2,3], float32[3])"
    )


# ------------------------------------------------------------------------------------------------ loop nests
def test_override_changes_only_the_instance_it_names() -> None:
    model = matmul_model()
    key = _only_key(model)
    t = get_target(TARGET)
    default = _loops(model, t)
    assert ("matmul_0_acc", 6 * 16, "local") in default
    other = apply_schedule_file(
        t, {"kiln_schedule": 1, "instances": {key.replace("13", "14"): {"gemm": {"mr": 2}}}}
    )
    assert _loops(model, other) == default
    tuned = apply_schedule_file(
        t, {"kiln_schedule": 1, "instances": {key: {"gemm": {"mr": 4, "nr": 24, "unroll_rows": False}}}}
    )
    loops = _loops(model, tuned)
    assert ("matmul_0_acc", 4 * 24, "local") in loops
    assert ("matmul_0_i", 4, "serial") in loops and ("matmul_0_i", 6, "unrolled") in default


def test_default_section_of_a_file_applies_to_every_instance() -> None:
    t = apply_schedule_file(get_target(TARGET), {"kiln_schedule": 1, "default": {"gemm": {"mr": 3}}})
    assert ("matmul_0_acc", 3 * 16, "local") in _loops(matmul_model(), t)


def test_restating_the_defaults_generates_the_same_code() -> None:
    from kiln.codegen import build_llvm_ir

    t = get_target(TARGET)
    restated = {"kiln_schedule": 1, "default": t.schedule_for().as_dict()}
    for model in (conv_model(), matmul_model(), pool_model()):
        mod = from_onnx(model)
        a = build_llvm_ir(compile_module(mod, t), t)[0]
        b = build_llvm_ir(compile_module(mod, apply_schedule_file(t, restated)), t)[0]
        assert a == b


CORRECTNESS = [
    ("matmul-small-tiles", matmul_model, {"gemm": {"mr": 2, "nr": 8, "pack": "always"}}),
    ("matmul-wide-serial", matmul_model, {"gemm": {"mr": 5, "nr": 40, "vectorize_columns": False}}),
    (
        "matvec-streamed",
        lambda: matmul_model(2, 64, 300),
        {"gemm": {"stream_min_tiles": 1, "stream_columns": 96}},
    ),
    (
        "conv-blocked-packed",
        conv_model,
        {
            "gemm": {"mr": 7, "nr": 24, "pack": "always"},
            "conv2d": {"col_block_bytes": 4096, "min_block_columns": 8},
        },
    ),
    (
        "conv-1x1-never-packed",
        lambda: conv_model(k=1, pads=[0] * 4),
        {"gemm": {"mr": 3, "nr": 32, "pack": "never"}},
    ),
    ("int-avgpool-vector-unrolled", int_avgpool_model, {"pool": {"vectorize": True, "unroll_taps": True}}),
]


@pytest.mark.parametrize(("name", "make", "changes"), CORRECTNESS, ids=[c[0] for c in CORRECTNESS])
def test_overridden_schedules_compute_the_reference(name: str, make: Any, changes: dict[str, Any]) -> None:
    model = make()
    key = _only_key(model)
    t = get_target(TARGET)
    tuned = apply_schedule_file(t, {"kiln_schedule": 1, "target": TARGET, "instances": {key: changes}})
    assert _loops(model, tuned) != _loops(model, t)  # the override really changes the loop nest
    mod = from_onnx(model)
    feed = _feed(model)
    want = interpret(mod, feed)["y"]
    got = running.run(kiln.compile(mod, tuned), feed)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_compile_reports_the_schedule_in_the_manifest(tmp_path: Path) -> None:
    model = conv_model()
    key = _only_key(model)
    path = tmp_path / "s.json"
    ScheduleFile(
        instances={key: {"gemm": {"mr": 4}}, "matmul(float32[1,2], float32[2,3])": {"gemm": {"mr": 2}}}
    ).save(path)
    with pytest.warns(UserWarning, match=r"1 of 2 instance\(s\) match no operator of this model"):
        pkg = kiln.compile(model, TARGET, schedule=path)
    assert pkg.manifest["schedule"] == {
        "source": "s.json",
        "instances": 2,
        "applied": 1,
        "unmatched": ["matmul(float32[1,2], float32[2,3])"],
    }


def test_cli_compile_takes_a_schedule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.cli import main

    model = conv_model()
    onnx.save(model, tmp_path / "m.onnx")
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps({"kiln_schedule": 1, "instances": {_only_key(model): {"gemm": {"nr": 8}}}}))
    out = tmp_path / "m.kpkg"
    assert (
        main(["compile", str(tmp_path / "m.onnx"), "-t", TARGET, "--schedule", str(sched), "-o", str(out)])
        == 0
    )
    assert "schedule s.json: 1 of 1 instance(s) applied" in capsys.readouterr().out
    sched.write_text(json.dumps({"kiln_schedule": 1, "default": {"gemm": {"nr": 0}}}))
    assert (
        main(["compile", str(tmp_path / "m.onnx"), "-t", TARGET, "--schedule", str(sched), "-o", str(out)])
        == 1
    )
    assert "kiln: error: " in (err := capsys.readouterr().err) and "default.gemm.nr must be an integer" in err


def test_target_equality_sees_schedules() -> None:
    t = get_target(TARGET)
    tuned = apply_schedule_file(t, {"kiln_schedule": 1, "default": {"gemm": {"mr": 3}}})
    assert tuned != t
    assert dataclasses.replace(tuned, schedule=t.schedule) == t
