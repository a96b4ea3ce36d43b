"""The tiny model on every Linux target: natively where the host can, else under qemu-user; NumPy is the
oracle. Adding a target TOML adds it here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import running

from kiln.device.launchers import (
    LauncherError,
    LocalLauncher,
    QemuUserLauncher,
    describe_exit,
    launcher_for,
    make_launcher,
)
from kiln.device.protocol import DeviceLost
from kiln.targets import Target, get_target, parse_target
from tinymodel import LINUX_TARGETS, TINY_PROBE_BYTE, tiny_expected, tiny_inputs, tiny_package


@pytest.mark.qemu
@pytest.mark.parametrize("target", LINUX_TARGETS)
def test_tiny_model_runs_and_profiles_on_target(target: str) -> None:
    pkg = tiny_package(target)
    with running.open_session(pkg) as s:  # emulated: no wall-clock limit per call (tests/running.py)
        assert s.info().name == "tiny"
        for seed in range(2):
            inputs = tiny_inputs(seed)
            out = s.run(inputs)
            np.testing.assert_allclose(out["y"], tiny_expected(inputs), rtol=1e-6)
            assert out["probe"].tolist() == [TINY_PROBE_BYTE]
        assert len(s.time(number=2, repeat=2)) == 2
        assert [c.name for c in s.profile().calls] == ["scale", "scale", "add_weights"]
        assert s.run(tiny_inputs(mode=4))["probe"].tolist() == [0]  # weights 64-byte aligned


def test_launcher_for_picks_local_or_qemu() -> None:
    assert (
        isinstance(launcher_for("x86_64-linux"), LocalLauncher) == get_target("x86_64-linux").runs_natively()
    )
    assert isinstance(launcher_for("aarch64-linux"), QemuUserLauncher)
    rvv = launcher_for("riscv64-linux-rvv")
    assert isinstance(rvv, QemuUserLauncher)
    assert rvv.command(Path("bin/runner"))[1:] == [
        *get_target("riscv64-linux-rvv").emulator[1:],
        "bin/runner",
    ]


@pytest.mark.qemu
def test_segfault_under_qemu_names_the_signal() -> None:
    with running.open_session(tiny_package("aarch64-linux")) as s, pytest.raises(DeviceLost) as e:
        s.run(tiny_inputs(mode=2))
    assert "SIGSEGV" in str(e.value)


def _fake_target(**extra: object) -> Target:
    base = {
        "name": "fake-arm",
        "triple": "armv7-unknown-linux-musleabihf",
        "cpu": "cortex-a7",
        "features": "",
        "vector_bits": 0,
        "os": "linux",
        "zig_target": "arm-linux-musleabihf",
    }
    return parse_target({**base, **extra})


def test_missing_emulator_names_the_debian_package() -> None:
    t = _fake_target(emulator=["qemu-not-installed-anywhere"], emulator_package="qemu-user-static")
    with pytest.raises(LauncherError, match=r"sudo apt-get install qemu-user-static"):
        QemuUserLauncher(t)


def test_launcher_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="known launchers: local, qemu-user"):
        make_launcher("telepathy", "x86_64-linux")
    with pytest.raises(LauncherError, match="does not run natively"):
        LocalLauncher("aarch64-linux")
    with pytest.raises(LauncherError, match="names no emulator"):
        QemuUserLauncher(_fake_target())
    with pytest.raises(LauncherError, match="does not exist"):
        LocalLauncher("x86_64-linux").start(tmp_path / "bin" / "runner")


def test_exit_descriptions() -> None:
    assert describe_exit(-11) == "was killed by signal SIGSEGV (Segmentation fault)"
    assert describe_exit(65) == "exited with status 65 (the linked model descriptor is invalid)"
    assert describe_exit(3) == "exited with status 3"
