"""Parallel loops on the runtime's thread pool: compiled models give the NumPy reference's results with more
threads than the machine has cores, with parallel loops shorter than the pool, and under qemu-user; the
pool really has the asked size (the runner's threads in /proc); bad thread counts are refused with a clear
error; bare-metal firmware contains no thread code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.driver import compile_module
from kiln.frontend.nn import GraphBuilder
from kiln.ir import Module
from kiln.ir import tensor as T
from kiln.ops.interpreter import interpret
from kiln.package import Package
from kiln.package.kpkg import PackageError
from kiln.runtime_c import abi

CORES = os.cpu_count() or 1
RNG = np.random.default_rng(7)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.1).astype("f4")


def cnn() -> Module:
    """A 3x3 convolution of two blocks (im2col rows and column tiles in parallel), a depthwise one (channels
    in parallel, a padded plane each), a 1x1 one (column tiles of the whole image), and a 3x3 one of 20
    blocks (the blocks in parallel, each with its own im2col scratch)."""
    g = GraphBuilder()
    wide = g.input("wide", (1, 64, 60, 60))
    g.output(g.conv2d(wide, g.const(_w(16, 64, 3, 3)), pads=(1, 1, 1, 1)), "blocks")
    x = g.input("x", (2, 16, 40, 40))
    y = g.relu(g.conv2d(x, g.const(_w(48, 16, 3, 3)), g.const(_w(48)), pads=(1, 1, 1, 1)))
    y = g.conv2d(y, g.const(_w(48, 1, 3, 3)), g.const(_w(48)), pads=(1, 1, 1, 1), groups=48)
    g.output(g.conv2d(y, g.const(_w(24, 48, 1, 1)), g.const(_w(24))), "y")
    return g.build()


def dense() -> Module:
    """A tall, narrow product (groups of row tiles in parallel, each packing its own panels), a
    matrix-vector product (column blocks in parallel) and a small product with two column tiles."""
    g = GraphBuilder()
    a = g.input("a", (100, 96))
    v = g.input("v", (1, 2048))
    s = g.input("s", (12, 64))
    g.output(g.matmul(a, g.const(_w(96, 20))), "tall")
    g.output(g.matmul(v, g.const(_w(2048, 1200))), "wide")
    g.output(g.matmul(s, g.const(_w(64, 32))), "small")
    return g.build()


def batched() -> Module:
    """Batched products: 2 x 3 small ones with a broadcast operand (the batch in parallel) and 2 large ones
    (each GEMM in parallel)."""
    g = GraphBuilder()
    q = g.input("q", (2, 3, 12, 16))
    big = g.input("big", (2, 64, 80))
    g.output(g.matmul(q, g.const(_w(3, 16, 10))), "heads")
    g.output(g.matmul(big, g.const(_w(2, 80, 72))), "big_out")
    return g.build()


def _feed(mod: Module) -> dict[str, np.ndarray]:
    return {p.name: RNG.standard_normal(p.type.static_shape).astype("f4") for p in mod.main.params}


def _parallel_loops(mod: Module, target: str) -> dict[str, list[int]]:
    """Kernel -> extents of its parallel loops, after lowering for ``target``."""
    lowered = compile_module(mod, target)
    out: dict[str, list[int]] = {}
    for name, f in lowered.tensor_functions().items():
        for s in T.walk_stmts(f.body):
            if isinstance(s, T.For) and s.kind == "parallel":
                assert isinstance(s.extent, T.IntImm)
                out.setdefault(name, []).append(s.extent.value)
    return out


def _check(pkg: Package, mod: Module, feed: dict[str, np.ndarray], threads: int, **session: object) -> None:
    expected = interpret(mod, feed)
    with pkg.open_session(threads=threads, **session) as s:  # type: ignore[arg-type]
        for _ in range(3):  # the same pool serves every run
            got = s.run(feed)
            for name, want in expected.items():
                np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("model", [cnn, dense, batched])
def test_more_threads_than_cores_match_the_reference(model: object) -> None:
    mod = model()  # type: ignore[operator]
    loops = _parallel_loops(mod, "x86_64-linux")
    assert loops, "the schedules marked no loop parallel"
    pkg = kiln.compile(mod, "x86_64-linux")
    feed = _feed(mod)
    for threads in (1, 2 * CORES + 1):
        _check(pkg, mod, feed, threads)


def test_parallel_loops_shorter_than_the_pool_match_the_reference() -> None:
    mod = dense()
    threads = 8
    extents = [e for es in _parallel_loops(mod, "x86_64-linux").values() for e in es]
    assert min(extents) < threads  # the small product's loop has fewer iterations than threads
    _check(kiln.compile(mod, "x86_64-linux"), mod, _feed(mod), threads)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["aarch64-linux", "armv7-linux"])  # armv7: 32-bit loop indices
def test_threads_under_qemu_user_match_the_reference(target: str) -> None:
    mod = cnn()
    _check(kiln.compile(mod, target), mod, _feed(mod), 3, timeout=None)


def _tasks(session: object) -> int:
    pid = session.peer.proc.pid  # type: ignore[attr-defined]
    return len(os.listdir(f"/proc/{pid}/task"))


def test_the_pool_has_the_package_default_or_the_session_count() -> None:
    mod = dense()
    pkg = kiln.compile(mod, "x86_64-linux", threads=3)
    assert pkg.manifest["threads"] == 3
    with pkg.open_session() as s:
        s.run(_feed(mod))
        assert _tasks(s) == 3
    with pkg.open_session(threads=5) as s:
        s.run(_feed(mod))  # a reply: the runner serves, so it has started its pool
        assert _tasks(s) == 5
    with pkg.open_session(threads=0) as s:
        s.run(_feed(mod))
        assert _tasks(s) == CORES
    assert kiln.compile(mod, "x86_64-linux").manifest["threads"] == 1


def test_bad_thread_counts_are_refused() -> None:
    mod = dense()
    with pytest.raises(ValueError, match="threads must be a whole number from 0"):
        kiln.compile(mod, "x86_64-linux", threads=-1)
    with pytest.raises(ValueError, match="bare metal"):
        kiln.compile(mod, "mps2-an386", threads=2)
    pkg = kiln.compile(mod, "x86_64-linux")
    with pytest.raises(PackageError, match=f"to {abi.THREADS_MAX}, got 100000"):
        pkg.open_session(threads=100000)


def test_the_runner_refuses_a_bad_thread_count(tmp_path: Path) -> None:
    pkg = kiln.compile(dense(), "x86_64-linux")
    runner = pkg.extract(tmp_path) / "bin" / "runner"
    bad = subprocess.run([runner, "--threads", "two"], capture_output=True, text=True, check=False)
    assert bad.returncode == abi.RUNNER_EXIT["KILN_RUNNER_EXIT_USAGE"][0]
    assert "--threads takes a number of threads" in bad.stderr
    env = {**os.environ, abi.THREADS_ENV: "9999"}
    bad = subprocess.run([runner], capture_output=True, text=True, check=False, env=env)
    assert bad.returncode == abi.RUNNER_EXIT["KILN_RUNNER_EXIT_USAGE"][0]
    assert f"{abi.THREADS_ENV} is not a thread count" in bad.stderr


def _symbols(elf: bytes, path: Path) -> set[str]:
    path.write_bytes(elf)
    with path.open("rb") as f:
        tables = [s for s in ELFFile(f).iter_sections() if isinstance(s, SymbolTableSection)]
        assert tables, f"{path} has no symbol table"
        return {sym.name for t in tables for sym in t.iter_symbols()}


def test_bare_metal_firmware_has_no_thread_code(tmp_path: Path) -> None:
    """One model: its Linux library has the pool and calls it; the board's firmware has neither."""
    g = GraphBuilder()
    x = g.input("x", (1, 8, 12, 12))
    g.output(g.relu(g.conv2d(x, g.const(_w(8, 8, 3, 3)), pads=(1, 1, 1, 1))), "y")
    mod = g.build()
    assert _parallel_loops(mod, "x86_64-linux") and not _parallel_loops(mod, "mps2-an386")
    linux = kiln.compile(mod, "x86_64-linux")
    assert abi.PARALLEL_FOR_SYMBOL.encode() in linux.files["lib/libmodel.a"]
    assert b"pthread_create" in linux.files["lib/libmodel.a"]
    board = kiln.compile(mod, "mps2-an386")
    names = _symbols(board.files["bin/image.elf"], tmp_path / "image.elf")
    assert any(n.endswith("_entry") for n in names)  # the symbol table is the model's
    threads = sorted(n for n in names if "pthread" in n or "parallel" in n or n.startswith("kiln_threads"))
    assert threads == []


def _kiln(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True, check=False
    )


def test_cli_threads(tmp_path: Path) -> None:
    """kiln compile --threads stores the default; run --threads gives NumPy's result; bench --threads is a
    one-line error for a board on a serial line (farm devices: tests/rpc/test_farm_threads.py) and for a bad
    count."""
    w = _w(64, 40)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [30, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(model))
    pkg_path = tmp_path / "m.kpkg"
    r = _kiln("compile", str(model), "-t", "x86_64-linux", "--threads", "2", "-o", str(pkg_path))
    assert r.returncode == 0, r.stderr
    assert Package.load(pkg_path).manifest["threads"] == 2
    x = RNG.standard_normal((30, 64)).astype("f4")
    np.save(tmp_path / "a.npy", x)
    out = tmp_path / "out"
    r = _kiln("run", str(pkg_path), "--input", f"a={tmp_path / 'a.npy'}", "--threads", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    want = x.astype("f8") @ w.astype("f8")
    np.testing.assert_allclose(np.load(out / "y.npy"), want, rtol=1e-5, atol=1e-5)
    r = _kiln("bench", str(pkg_path), "--random-inputs", "--threads", "2", "--serial", "/dev/nonexistent")
    assert r.returncode == 1 and "--threads applies to runners on this host and on farm devices" in r.stderr
    r = _kiln("bench", str(pkg_path), "--random-inputs", "--threads", "-1")
    assert r.returncode == 1 and "threads must be a whole number from 0" in r.stderr
