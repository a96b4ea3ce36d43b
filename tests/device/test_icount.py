"""Instruction counts under QEMU user mode (kiln.device.icount, Package.count_instructions, kiln bench --count):
real QEMU with kiln's plugin, counts compared between runs, sizes and targets (never against fixed numbers)."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

import kiln
from graphs import conv_bn_relu
from kiln.device.icount import CountError, InstructionCounter, kernel_ranges
from kiln.device.launchers import Isolation, LauncherError, QemuUserLauncher
from kiln.frontend.nn import GraphBuilder
from kiln.ir import Module
from kiln.package import toolchain
from kiln.package.kpkg import Package, PackageError
from kiln.package.toolchain import icount_plugin

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-aarch64") is None or shutil.which("qemu-riscv64") is None, reason="needs qemu-user"
)


def matmul(rows: int, k: int = 64, n: int = 48) -> Module:
    """One matmul kernel, (rows, k) x (k, n): doubling ``rows`` doubles its work."""
    rng = np.random.default_rng(0)
    g = GraphBuilder(f"matmul{rows}")
    x = g.input("x", (rows, k))
    g.output(g.matmul(x, g.const(rng.standard_normal((k, n)).astype("f4"))), "y")
    return g.build()


@functools.cache
def package(model: str, target: str) -> Package:
    mod = {"conv": lambda: conv_bn_relu(channels=16, size=16), "mm16": lambda: matmul(16)}.get(model)
    return kiln.compile(mod() if mod else matmul(32), target)


def inputs(pkg: Package, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t["name"]: rng.standard_normal(t["shape"]).astype("f4") for t in pkg.manifest["inputs"]}


def test_counts_are_identical_run_to_run() -> None:
    pkg = package("conv", "aarch64-linux")
    first = pkg.count_instructions(inputs(pkg))
    second = pkg.count_instructions(inputs(pkg))
    assert first.kernels == second.kernels
    assert set(first.kernels) == set(pkg.manifest["kernels"]) and all(c > 0 for c in first.kernels.values())
    assert 0 < first.kernel_total < first.total  # the process also starts up and speaks the protocol


@pytest.mark.parametrize("target", ["aarch64-linux", "riscv64-linux-rvv"])
def test_twice_the_work_counts_about_twice_the_instructions(target: str) -> None:
    small, large = package("mm16", target), package("mm32", target)
    ratio = (
        large.count_instructions(inputs(large)).kernel_total
        / small.count_instructions(inputs(small)).kernel_total
    )
    assert 1.6 <= ratio <= 2.4, ratio


def test_two_runs_count_twice_the_kernel_instructions() -> None:
    pkg = package("mm16", "aarch64-linux")
    one, two = pkg.count_instructions(inputs(pkg)), pkg.count_instructions(inputs(pkg), runs=2)
    assert two.kernel_total == 2 * one.kernel_total


def test_vectorized_build_counts_fewer_instructions_than_scalar() -> None:
    vec, scalar = package("conv", "riscv64-linux-rvv"), package("conv", "riscv64-linux")
    nv = vec.count_instructions(inputs(vec)).kernel_total
    ns = scalar.count_instructions(inputs(scalar)).kernel_total
    assert nv < 0.7 * ns, (nv, ns)


def test_fewer_rows_than_a_register_tile_still_gain_from_rvv() -> None:
    """A batch-4 layer (fewer rows than the 6-row register tile) 128 columns wide: RVV's register tiles, not
    the streaming form for wide matrix-vector products, which counted twice the scalar build's instructions."""
    vec, scalar = (kiln.compile(matmul(4, 64, 128), t) for t in ("riscv64-linux-rvv", "riscv64-linux"))
    nv = vec.count_instructions(inputs(vec)).kernel_total
    ns = scalar.count_instructions(inputs(scalar)).kernel_total
    assert nv < 0.6 * ns, (nv, ns)


def test_kernel_ranges_cover_outlined_bodies_and_refuse_a_stripped_runner(tmp_path: Path) -> None:
    pkg = package("conv", "aarch64-linux")
    runner = pkg.extract(tmp_path) / pkg.manifest["runnable"]
    ranges = kernel_ranges(runner, pkg.manifest["kernels"])
    assert len(ranges) > len(pkg.manifest["kernels"])  # the kernel's function and its outlined parallel body
    with runner.open("rb") as fh:  # the runner keeps its symbol table, not the debug info of zig's libc
        names = [s.name for s in ELFFile(fh).iter_sections()]
    assert ".symtab" in names and not [n for n in names if n.startswith(".debug")]
    assert [s for s, _, _ in ranges] == sorted(s for s, _, _ in ranges)
    assert all(s < e for s, e, _ in ranges) and all(
        e <= s2 for (_, e, _), (s2, _, _) in zip(ranges, ranges[1:])
    )
    with pytest.raises(CountError, match="no code for kernel"):
        kernel_ranges(runner, [*pkg.manifest["kernels"], "not_a_kernel"])
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    cc = [
        *toolchain.zig(),
        "cc",
        "-target",
        "aarch64-linux-musl",
        "-static",
        "-s",
        "main.c",
        "-o",
        "stripped",
    ]
    toolchain.run_tool(cc, cwd=tmp_path)
    with pytest.raises(CountError, match="no symbol table"):
        kernel_ranges(tmp_path / "stripped", pkg.manifest["kernels"])


def test_counting_refuses_native_targets_isolation_and_unread_counts(tmp_path: Path) -> None:
    native = kiln.compile(matmul(4), "x86_64-linux")
    with pytest.raises(PackageError, match="runs natively.*perf"):
        native.count_instructions(inputs(native))
    pkg = package("mm16", "aarch64-linux")
    with InstructionCounter(icount_plugin(), pkg.manifest["kernels"]) as counter:
        launcher = QemuUserLauncher("aarch64-linux", count=counter)
        runner = pkg.extract(tmp_path) / pkg.manifest["runnable"]
        with pytest.raises(LauncherError, match="without isolation"):
            launcher.start(runner, isolation=Isolation())
        with pytest.raises(CountError, match="close the session"):
            counter.result()
    with pytest.raises(PackageError, match="runs must be"):
        pkg.count_instructions(inputs(pkg), runs=0)


def test_cli_bench_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.cli import main

    path = package("mm16", "aarch64-linux").save(tmp_path / "m.kpkg")
    assert main(["bench", str(path), "--random-inputs", "--count"]) == 0
    out = capsys.readouterr().out
    assert "guest instructions" in out and "process total" in out
    assert main(["bench", str(path), "--random-inputs", "--count", "--threads", "2"]) == 1
    assert "one thread" in capsys.readouterr().err
