"""Several models in one firmware (per-model symbol prefixes), ``kiln export --format c-project`` built with
the bundled zig and with arm-none-eabi-gcc (Make and CMake), ``kiln flash`` (qemu for real; pyocd and openocd
by their exact commands and a fake probe on PATH) and the ``serial`` launcher over the emulated board's UART.

Sessions have no per-call wall-clock limit (timeout=None): the emulated boards run under -icount."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from boards import needs_emulator

import kiln
from graphs import conv_bn_relu, mlp
from kiln.cli import main as kiln_main
from kiln.device import DeviceError, LauncherError, make_launcher
from kiln.device.qemu_system import QemuSystemLauncher
from kiln.package import Package
from kiln.package.export import ExportError, export_c_project, read_ar
from kiln.package.flash import EmulatedBoard, FlashError, flash, plan
from kiln.runtime_c import abi

BOARD = "mps2-an386"
qemu = needs_emulator(BOARD)
has_gcc = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc is not installed (scripts/setup)"
)


@functools.cache
def packages() -> tuple[Package, Package]:
    return (
        kiln.compile(conv_bn_relu(), BOARD, prefix="convnet"),
        kiln.compile(mlp(), BOARD, prefix="mlp"),
    )


def inputs() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return (
        {"x": rng.standard_normal((1, 3, 12, 12)).astype("f4")},
        {"x": rng.standard_normal((3, 20)).astype("f4")},
    )


@functools.cache
def package_outputs() -> tuple[dict[str, np.ndarray], ...]:
    """What each package's own image computes on the emulated board."""
    out = []
    for pkg, x in zip(packages(), inputs(), strict=True):
        with pkg.open_session(timeout=None) as s:
            out.append(s.run(x))
    return tuple(out)


def test_generated_symbols_carry_the_prefix() -> None:
    conv, _ = packages()
    assert conv.manifest["symbol_prefix"] == "convnet"
    members = dict(read_ar(conv.files["lib/libmodel.a"]))
    assert {"kiln_code_convnet.o", "kiln_desc_convnet.o", "kiln_weights_convnet.o"} <= set(members)
    header = conv.files["include/model.h"].decode()
    assert "extern const kiln_model_t convnet;" in header and "#define CONVNET_WORKSPACE_BYTES" in header
    assert "extern const kiln_model_memory_t convnet_memory;" in header
    symbols = conv.files["lib/image.map"].decode()
    for sym in (abi.model_symbol("convnet"), abi.entry_symbol("convnet"), abi.weights_symbol("convnet")):
        assert f" {sym}\n" in symbols
    assert "kiln_model_entry" not in symbols
    with pytest.raises(ValueError, match="not a C identifier"):
        kiln.compile(mlp(), BOARD, prefix="2fast")


def test_export_refuses_clashing_prefixes_and_linux_packages(tmp_path: Path) -> None:
    conv, _ = packages()
    with pytest.raises(ExportError, match="distinct symbol prefixes; convnet"):
        export_c_project([conv, conv], tmp_path / "a")
    linux = kiln.compile(mlp(), "x86_64-linux")
    with pytest.raises(ExportError, match="not a board"):
        export_c_project([linux], tmp_path / "b")


def build(project: Path, tool: str, toolchain: str) -> Path:
    env = {**os.environ, "PYTHON": sys.executable}
    if tool == "make":
        out = f"build-{toolchain}"
        cmd = [["make", "-C", str(project), f"TOOLCHAIN={toolchain}", f"BUILD={out}"]]
    else:
        out = f"cmake-{toolchain}"
        cmd = [
            [
                "cmake",
                "-S",
                str(project),
                "-B",
                str(project / out),
                f"-DCMAKE_TOOLCHAIN_FILE=cmake/{toolchain}.cmake",
            ],
            ["cmake", "--build", str(project / out)],
        ]
    for c in cmd:
        proc = subprocess.run(c, cwd=project, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return project / out / "image.elf"


def check_two_models(image: Path) -> None:
    """The exported image serves both models (SELECT) and computes exactly what each package's image does."""
    x_conv, x_mlp = inputs()
    want_conv, want_mlp = package_outputs()
    with QemuSystemLauncher(BOARD).start(image.resolve(), timeout=None) as s:
        assert s.info().name == "conv_bn_relu"
        np.testing.assert_array_equal(s.run(x_conv)["z"], want_conv["z"])
        assert s.select(1) == 2 and s.info().name == "mlp"
        np.testing.assert_array_equal(s.run(x_mlp)["y"], want_mlp["y"])
        assert [c.name for c in s.profile(x_mlp).calls]  # the profiler follows the selected model
        assert s.select(0) == 2
        np.testing.assert_array_equal(s.run(x_conv)["z"], want_conv["z"])
        with pytest.raises(DeviceError, match="model index 2 is out of range: the device has 2"):
            s.select(2)


@qemu
@pytest.mark.qemu
def test_exported_project_with_two_models_builds_with_zig_and_runs(tmp_path: Path) -> None:
    conv, mlp_pkg = packages()
    paths = [conv.save(tmp_path / "conv.kpkg"), mlp_pkg.save(tmp_path / "mlp.kpkg")]
    project = tmp_path / "fw"
    assert kiln_main(["export", *map(str, paths), "--format", "c-project", "-o", str(project)]) == 0
    assert (project / "lib" / "libconvnet.a").is_file() and (project / "include" / "mlp.h").is_file()
    assert "convnet" in (project / "src" / "kiln_firmware_models.c").read_text()
    check_two_models(build(project, "make", "zig"))


@qemu
@has_gcc
@pytest.mark.qemu
def test_exported_project_builds_with_arm_none_eabi_gcc_make_and_cmake(tmp_path: Path) -> None:
    project = export_c_project(list(packages()), tmp_path / "fw")
    check_two_models(build(project, "make", "gcc"))
    check_two_models(build(project, "cmake", "gcc"))


# ---- kiln flash


def fake_probe(directory: Path, name: str) -> Path:
    """An executable ``name`` on PATH that records its arguments, one per line."""
    log = directory / f"{name}.args"
    exe = directory / name
    exe.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {log}\n')
    exe.chmod(0o755)
    return log


def test_flash_pyocd_and_openocd_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conv, _ = packages()
    path = conv.save(tmp_path / "conv.kpkg")
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    image = plan(conv, "pyocd").image
    assert image.read_bytes() == conv.files["bin/image.elf"] and str(tmp_path / "cache") in str(image)

    assert kiln_main(["flash", str(path), "--backend", "pyocd", "--probe", "0240000034", "--dry-run"]) == 0
    want_pyocd = ["pyocd", "flash", "--target", "mps2_an386", "--uid", "0240000034", str(image)]
    assert capsys.readouterr().out.strip() == " ".join(want_pyocd)
    assert kiln_main(["flash", str(path), "-b", "openocd", "--dry-run"]) == 0
    want_openocd = ["openocd", "-f", "board/arm_mps2.cfg", "-c", f"program {image} verify reset exit"]
    assert plan(conv, "openocd").command == want_openocd
    assert "board/arm_mps2.cfg" in capsys.readouterr().out

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logs = {name: fake_probe(bin_dir, name) for name in ("pyocd", "openocd")}
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert kiln_main(["flash", str(path), "-b", "pyocd", "--probe", "0240000034"]) == 0
    assert logs["pyocd"].read_text().splitlines() == want_pyocd[1:]
    assert kiln_main(["flash", str(path), "-b", "openocd"]) == 0
    assert logs["openocd"].read_text().splitlines() == want_openocd[1:]
    assert "flashed" in capsys.readouterr().out


def test_flash_errors_name_the_board_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conv, _ = packages()
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no pyocd
    with pytest.raises(FlashError, match=r"pyocd is not installed \(pip install pyocd\).*mps2-an386"):
        flash(conv, "pyocd")
    with pytest.raises(FlashError, match="unknown flash backend 'jlink'"):
        plan(conv, "jlink")
    with pytest.raises(FlashError, match="not a board"):
        plan(kiln.compile(mlp(), "x86_64-linux"), "qemu")


# ---- the qemu flash backend and the serial launcher


@qemu
@pytest.mark.qemu
def test_flash_qemu_boots_the_image_and_checks_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, mlp_pkg = packages()
    assert kiln_main(["flash", str(mlp_pkg.save(tmp_path / "mlp.kpkg"))]) == 0
    out = capsys.readouterr().out
    assert "emulated mps2-an386 (QEMU): model 'mlp' answers on its UART /dev/pts/" in out


@qemu
@pytest.mark.qemu
def test_serial_launcher_drives_the_emulated_board_over_a_pty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, mlp_pkg = packages()
    path = mlp_pkg.save(tmp_path / "mlp.kpkg")
    x = inputs()[1]
    np.save(tmp_path / "x.npy", x["x"])
    with EmulatedBoard(mlp_pkg) as board:
        launcher = make_launcher("serial", BOARD, port=board.port)
        with mlp_pkg.open_session(launcher, timeout=None) as s:
            assert s.label == f"board {BOARD} (serial {board.port})"
            np.testing.assert_array_equal(s.run(x)["y"], package_outputs()[1]["y"])
            first = s.time(number=2, repeat=2)
            assert s.time(number=2, repeat=2) == first  # QEMU's virtual time, over the pty as over stdio
        # a second session on the same running board (stale bytes dropped), through the CLI
        assert kiln_main(["run", str(path), "--serial", board.port, "-i", f"x={tmp_path / 'x.npy'}"]) == 0
        assert "y: float32 (3, 5)" in capsys.readouterr().out
    with pytest.raises(LauncherError, match="not a board"):
        make_launcher("serial", "x86_64-linux", port="/dev/null")
