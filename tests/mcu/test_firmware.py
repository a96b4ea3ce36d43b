"""Firmware images on emulated boards (real qemu-system-arm / qemu-system-riscv32): the device protocol over
the UART, deterministic ticks under -icount, faults and silent UARTs reported with the board's name.

Sessions have no per-call wall-clock limit (timeout=None), except in the test about a UART that never
answers, which is about exactly that."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from boards import on_boards, user_board

from kiln.device import DeviceError, DeviceLost, DeviceTimeout, make_launcher
from kiln.package import Package
from tinymodel import TINY_INFO, TINY_PROBE_BYTE, link_tiny, tiny_expected, tiny_inputs

pytestmark = pytest.mark.qemu


def tiny_board_package(board: str) -> Package:
    return Package.create(board, TINY_INFO, link_tiny(board))


@pytest.mark.parametrize("board", on_boards())
def test_tiny_model_runs_times_and_profiles_on_the_board(board: str) -> None:
    pkg = tiny_board_package(board)
    with pkg.open_session(timeout=None) as s:
        assert s.label.startswith(f"board {board} (qemu-system")
        assert s.info().name == "tiny" and s.info().max_payload == 1024
        for seed in range(2):
            inputs = tiny_inputs(seed)
            out = s.run(inputs)
            np.testing.assert_allclose(out["y"], tiny_expected(inputs), rtol=1e-6)
            assert out["probe"].tolist() == [TINY_PROBE_BYTE]
        assert s.run(tiny_inputs(mode=4))["probe"].tolist() == [0]  # weights 64-byte aligned in flash
        with pytest.raises(DeviceError, match=r"model run failed \(KILN_ERR_MODEL_ENTRY"):
            s.run(tiny_inputs(mode=3))
        s.set_inputs(tiny_inputs(0))
        first = s.time(number=3, repeat=2)
        assert s.time(number=3, repeat=2) == first  # virtual time: exactly repeatable
        assert [c.name for c in s.profile(tiny_inputs(1)).calls] == ["scale", "scale", "add_weights"]
        assert "-icount" in s.clock
    with pkg.open_session(timeout=None) as s:  # a new boot measures the same
        s.run(tiny_inputs(0))
        assert s.time(number=3, repeat=2) == first


@pytest.mark.parametrize("board", on_boards(["mps2-an386", "mps2-an505"]))
def test_a_stack_overflow_is_a_fault_naming_the_board(
    board: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_board(tmp_path, "tiny-stack", base=board, stack_bytes="128")
    monkeypatch.setenv("KILN_TARGET_PATH", str(tmp_path))
    pkg = Package.create("tiny-stack", TINY_INFO, link_tiny("tiny-stack"))
    with pkg.open_session(timeout=None) as s:
        with pytest.raises(DeviceLost) as e:
            s.run(tiny_inputs(0))
        text = str(e.value)
        assert "board tiny-stack" in text and "the board faulted" in text and "stack overflow" in text
        with pytest.raises(DeviceLost, match="unusable"):
            s.info()


@pytest.mark.parametrize("board", on_boards(["mps2-an386"]))
def test_a_uart_that_never_answers_times_out_naming_the_board(
    board: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the image talks to UART1; QEMU connects only UART0 to the session
    user_board(tmp_path, "wrong-uart", base=board, uart='{ kind = "cmsdk", base = 0x40005000, rx_irq = 2 }')
    monkeypatch.setenv("KILN_TARGET_PATH", str(tmp_path))
    pkg = Package.create("wrong-uart", TINY_INFO, link_tiny("wrong-uart"))
    with pytest.raises(DeviceTimeout) as e, pkg.open_session(timeout=3.0) as s:
        s.info()
    assert "board wrong-uart (qemu-system" in str(e.value) and "no reply on the board's UART" in str(e.value)


def test_qemu_system_launcher_command_and_errors() -> None:
    launcher = make_launcher("qemu-system", "mps2-an386")
    cmd = launcher.command(Path("bin/image.elf"))  # type: ignore[attr-defined]
    assert cmd[1:5] == ["-machine", "mps2-an386", "-cpu", "cortex-m4"]
    assert cmd[cmd.index("-icount") + 1].startswith("shift=0") and cmd[-2:] == ["-kernel", "bin/image.elf"]
    with pytest.raises(ValueError, match="not a board"):
        make_launcher("qemu-system", "aarch64-linux")
