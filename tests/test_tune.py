"""kiln tune: a few trials on a tiny model, on this machine, write a schedule file that later compiles use (the
farm variant is in tests/rpc/test_tune_rpc.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.ops.interpreter import interpret
from kiln.ops.schedule import ScheduleFile
from kiln.targets import get_target
from kiln.tune import candidates, tune

TARGET = "x86_64-linux"


def tiny_cnn() -> onnx.ModelProto:
    """conv 3x3 + relu, max-pool 2x2, fully connected: an instance of each scheduled family (the max-pool has no
    schedule choices)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.2).astype("f4"), "w")
    b = numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype("f4"), "b")
    fc = numpy_helper.from_array((rng.standard_normal((1024, 32)) * 0.05).astype("f4"), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "tiny", [x], [y], [w, b, fc])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tune") / "tiny.onnx"
    onnx.save(tiny_cnn(), path)
    return path


def test_candidates_are_distinct_valid_and_fit_the_registers() -> None:
    t = get_target("x86_64-linux")  # 16 ymm registers, 8 lanes
    key = (
        "conv2d(float32[1,64,14,14], float32[128,64,3,3]; dilations=1,1; groups=1; pads=1,1,1,1; strides=1,1)"
    )
    found = candidates(key, t)
    assert len(found) > 20
    base = t.schedule_for(key)
    records = [base.with_changes(c) for c in found]
    assert base not in records and len(set(records)) == len(records)
    for r in records:
        assert r.gemm.mr * -(-r.gemm.nr // 8) <= 13
    pools = candidates(
        "avg_pool2d(int32[1,4,8,8]; ceil_mode=0; count_include_pad=0; dilations=1,1; kernel=2,2; "
        "pads=0,0,0,0; strides=2,2)",
        t,
    )
    assert len(pools) == 3  # the other three combinations of vectorize x unroll_taps


def test_tune_writes_a_file_that_compile_uses(tiny_path: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    result = tune(str(tiny_path), TARGET, trials=2, rounds=3, min_repeat_ms=5, log=logs.append)
    assert result.trials == 2 and result.failed_trials == 0
    # float pooling has no schedule choices, so it is not a tunable instance
    assert {r.key.split("(")[0] for r in result.instances} == {"conv2d", "matmul"}
    assert result.default_s > 0 and result.tuned_s > 0
    assert any("trial 2/2" in line for line in logs)
    path = tmp_path / "tiny.schedule.json"
    result.schedule.save(path)
    data = json.loads(path.read_text())
    assert data["kiln_schedule"] == 1 and data["target"] == TARGET
    assert data["tuning"]["trials"] == 2 and set(data["tuning"]["instances"]) == set(data["instances"])
    sf = ScheduleFile.load(path)
    assert {r.key for r in result.instances if r.best} == set(sf.instances)

    pkg = kiln.compile(str(tiny_path), TARGET, schedule=path)
    assert pkg.manifest["schedule"]["applied"] == len(sf.instances)
    feed = {"x": np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype("f4")}
    want = interpret(kiln.driver.load_model(str(tiny_path)), feed)["y"]
    np.testing.assert_allclose(pkg.run(feed)["y"], want, rtol=1e-4, atol=1e-5)


def test_cli_tune_then_compile(tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.cli import main

    out = tmp_path / "s.json"
    args = ["tune", str(tiny_path), "-t", TARGET, "--trials", "3", "--rounds", "3", "-o", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out and "trial(s); whole model" in captured.out
    assert "kiln: trial 3/3" in captured.err
    ScheduleFile.load(out)
    pkg = tmp_path / "tiny.kpkg"
    assert main(["compile", str(tiny_path), "-t", TARGET, "--schedule", str(out), "-o", str(pkg)]) == 0
    assert "instance(s) applied" in capsys.readouterr().out


def test_cli_tune_rejects_bad_options(tiny_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.cli import main

    assert main(["tune", str(tiny_path), "-t", TARGET, "--device", "nowhere"]) == 1
    assert "--device expects 'local' or TRACKER_HOST:PORT/KEY" in capsys.readouterr().err
    assert main(["tune", str(tiny_path), "-t", TARGET, "--trials", "0"]) == 1
    assert "--trials must be at least 1" in capsys.readouterr().err
