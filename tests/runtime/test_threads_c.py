"""The thread pool (runtime_c/src/threads.c) on its own, from C: every iteration of loops of every size runs
exactly once in in-range, non-overlapping chunks with more threads than cores and with fewer iterations than
threads; nested loops stay on their chunk's thread; concurrent callers both finish; stop and restart work.
Natively and under qemu-user (aarch64, armv7: 64-bit atomics on a 32-bit core)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kiln import runtime_c
from kiln.device.launchers import QemuUserLauncher
from kiln.package import toolchain
from kiln.targets import get_target

CORES = os.cpu_count() or 1
CHECKS = (
    "start",
    "each_iteration_once",
    "nested_serial",
    "concurrent_callers",
    "stop",
    "restart",
    "too_many",
)


def _build(target: str, tmp_path: Path) -> Path:
    t = get_target(target)
    exe = tmp_path / f"threads_{target}"
    toolchain.run_tool(
        [
            *toolchain.zig(),
            "cc",
            *toolchain.target_flags(t),
            *toolchain.CFLAGS,
            "-static",
            f"-I{runtime_c.INCLUDE_DIR}",
            str(Path(__file__).parent / "data" / "threads_main.c"),
            str(runtime_c.SOURCE_DIR / "threads.c"),
            "-o",
            str(exe),
        ]
    )
    return exe


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = proc.stdout.split("\n")
    assert [ln.split()[0] for ln in lines if ln] == list(CHECKS), proc.stdout + proc.stderr
    assert proc.returncode == 0 and all(ln.endswith(" ok") for ln in lines if ln), proc.stdout + proc.stderr


@pytest.mark.parametrize("threads", [1, 2, 2 * CORES + 3])
def test_pool_natively(threads: int, tmp_path: Path) -> None:
    _run([str(_build("x86_64-linux", tmp_path)), str(threads)])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["aarch64-linux", "armv7-linux"])
def test_pool_under_qemu_user(target: str, tmp_path: Path) -> None:
    exe = _build(target, tmp_path)
    _run(QemuUserLauncher(target).command(exe) + ["5", "2"])  # 5 threads, 2 repeats (emulation is slow)
