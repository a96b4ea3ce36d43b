"""The `kiln` command line as a user runs it (real subprocesses): happy paths and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def kiln(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def _model(path: Path, op: str = "Relu") -> Path:
    w = numpy_helper.from_array(np.arange(12, dtype="f4").reshape(3, 4) / 10, "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node(op, ["h"], ["y"], name="act"),
    ]
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    model = _model(d / "tiny.onnx")
    r = kiln("compile", str(model), "--target", "aarch64-linux", "-o", str(d / "tiny.kpkg"))
    assert r.returncode == 0, r.stderr
    return d / "tiny.kpkg"


def test_targets_lists_every_target() -> None:
    r = kiln("targets")
    assert r.returncode == 0
    for name in ("x86_64-linux", "aarch64-linux", "riscv64-linux", "riscv64-linux-rvv", "armv7-linux"):
        assert name in r.stdout


def test_inspect_shows_io_and_sizes(package: Path) -> None:
    r = kiln("inspect", str(package))
    assert r.returncode == 0, r.stderr
    assert "aarch64-linux" in r.stdout and "float32" in r.stdout and "arena" in r.stdout


def test_run_writes_one_npy_per_output(package: Path, tmp_path: Path) -> None:
    x = np.array([[1, -2, 3], [0.5, 0.25, -1]], "f4")
    np.save(tmp_path / "x.npy", x)
    r = kiln("run", str(package), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    w = np.arange(12, dtype="f4").reshape(3, 4) / 10
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), np.maximum(x @ w, 0), rtol=1e-6)


def test_bench_and_profile(package: Path, tmp_path: Path) -> None:
    r = kiln("bench", str(package), "--random-inputs", "--number", "2", "--repeat", "3")
    assert r.returncode == 0 and "median" in r.stdout, r.stderr
    trace = tmp_path / "t.json"
    r = kiln("profile", str(package), "--random-inputs", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    assert "matmul" in r.stdout and trace.stat().st_size > 0


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_unknown_target(tmp_path: Path) -> None:
    out = tmp_path / "m.kpkg"
    msg = _one_line_error(
        kiln("compile", str(_model(tmp_path / "m.onnx")), "--target", "z80", "-o", str(out))
    )
    assert "unknown target 'z80'" in msg and "aarch64-linux" in msg
    assert not out.exists()


def test_truncated_model(tmp_path: Path) -> None:
    good = _model(tmp_path / "m.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(good[: len(good) // 2])
    msg = _one_line_error(
        kiln("compile", str(bad), "--target", "x86_64-linux", "-o", str(tmp_path / "b.kpkg"))
    )
    assert "bad.onnx" in msg and "not a valid ONNX model" in msg
    assert not (tmp_path / "b.kpkg").exists()


def test_unsupported_operators_are_all_listed(tmp_path: Path) -> None:
    m = onnx.load(str(_model(tmp_path / "m.onnx")))
    m.graph.node.extend(
        [
            helper.make_node("RandomNormalLike", ["y"], ["z"], name="rnd1"),  # random numbers: by design
            helper.make_node("Frobnicate", ["z"], ["q"], name="frob1", domain="com.example"),  # unknown
            helper.make_node("Frobnicate", ["q"], ["r"], name="frob2", domain="com.example"),
        ]
    )
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(m, str(tmp_path / "u.onnx"))
    msg = _one_line_error(kiln("compile", str(tmp_path / "u.onnx"), "--target", "x86_64-linux"))
    assert "RandomNormalLike" in msg and "rnd1" in msg and "Frobnicate" in msg and "frob1" in msg
    assert "frob2" in msg


def test_wrong_input_shape_and_dtype(package: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 3), "f4"))
    out = tmp_path / "out"
    msg = _one_line_error(
        kiln("run", str(package), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out))
    )
    assert "x" in msg and "(3, 3)" in msg and "(2, 3)" in msg
    assert not out.exists() or not any(out.iterdir())
    np.save(tmp_path / "xi.npy", np.zeros((2, 3), "i8"))
    msg = _one_line_error(kiln("run", str(package), "--input", f"x={tmp_path / 'xi.npy'}"))
    assert "int64" in msg and "float32" in msg


def test_missing_input_says_what_to_pass(package: Path) -> None:
    msg = _one_line_error(kiln("run", str(package)))
    assert "missing input 'x'" in msg and "--random-inputs" in msg


def test_native_target_is_the_widest_one_this_host_runs() -> None:
    import platform

    from kiln.targets import get_target

    if platform.machine() != "x86_64":
        pytest.fail("this check is written for x86-64 hosts (CI and the dev machines); extend it for others")
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    want = "x86_64-linux-avx512" if {"avx512f", "avx512bw", "avx512vl"} <= set(flags) else "x86_64-linux"
    assert get_target("native").name == want
    r = kiln("targets")
    assert f"--target native is {want}" in " ".join(r.stdout.split())
