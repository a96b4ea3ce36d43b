"""The ``qemu-system`` launcher: boots a board's firmware image on QEMU's emulation of the board and talks
the device protocol over its emulated UART.

The command is the board file's ``emulator`` (e.g. ``qemu-system-arm -machine mps2-an386 -cpu cortex-m4``)
plus ``-nographic -monitor none -serial stdio`` (the board's first UART is QEMU's stdin/stdout, so the
Session is the same pipe pair as for a Linux runner) and ``-icount shift=N,align=off,sleep=on``: time on the
board is virtual, ``2**N`` ns per instruction, so the board's timer (SysTick, mcycle) counts the
instructions run, and the ticks that TIME and PROFILE report repeat exactly from run to run whatever else the
host is doing (the firmware restarts its timer's phase after every wait for input). ``kiln bench`` says so:
:data:`Session.clock <kiln.device.protocol.Session.clock>` describes the number.

One QEMU process per session (booting takes milliseconds); closing the session stops it. A board that faults
sends an ERROR frame with ``KILN_ERR_PLATFORM_FAULT`` (what and where) and halts: the Session raises
:class:`~kiln.device.protocol.DeviceLost` naming the board. A UART that never answers is a
:class:`~kiln.device.protocol.DeviceTimeout` naming the board, if the session has a timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.device.launchers import LauncherError, ProcessLauncher, ProcessPeer, emulator_path
from kiln.device.protocol import Session
from kiln.targets import Target, get_target
from kiln.targets.board import Board, board_of


class QemuSystemPeer(ProcessPeer):
    """A QEMU system emulator running a board: it never exits on its own, so closing stops it at once."""

    timeout_hint = "no reply on the board's UART: the image may have hung, or not be built for this board"

    def close(self, wait: float = 5.0) -> None:
        self.kill()
        super().close(wait)


def icount_clock(board: Board) -> str:
    """What a board's ticks are under the launcher's ``-icount``."""
    ns = 1 << board.icount_shift
    return (
        f"virtual time under QEMU -icount shift={board.icount_shift} ({ns} ns per instruction; "
        f"{board.timer_kind} at {board.timer_hz} Hz): deterministic, counts instructions, not wall time"
    )


class QemuSystemLauncher(ProcessLauncher):
    """Boots a board target's firmware image (``bin/image.elf``) under ``qemu-system-*``."""

    name = "qemu-system"
    peer_class = QemuSystemPeer  # closing stops QEMU at once, timeouts carry a hint

    def __init__(self, target: Target | str) -> None:
        t = get_target(target)
        board = board_of(t)
        if board is None:
            raise LauncherError(
                f"target {t.name} is not a board (no memory map, UART, ...); the qemu-system launcher boots "
                "firmware images of board targets (kiln targets lists them)"
            )
        self.exe = emulator_path(t, "qemu-system-arm", what="board")
        super().__init__(t)
        self.board = board

    @property
    def device(self) -> str:
        return f"board {self.target.name}"

    def command(self, runnable: Path) -> list[str]:
        shift = self.board.icount_shift
        return [
            self.exe,
            *self.target.emulator[1:],
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-icount",
            f"shift={shift},align=off,sleep=on",
            "-kernel",
            str(runnable),
        ]

    def start(self, runnable: Path, *, timeout: float | None = 60.0, **options: Any) -> Session:
        """As :meth:`ProcessLauncher.start` (``options``: its ``isolation``, for the device farm); the session's
        clock is the board's virtual time."""
        session = super().start(runnable, timeout=timeout, **options)
        session.clock = icount_clock(self.board)
        return session


__all__ = ["QemuSystemLauncher", "QemuSystemPeer", "icount_clock"]
