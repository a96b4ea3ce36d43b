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

import shutil
import subprocess
from pathlib import Path
from typing import IO, Any

from kiln.device.launchers import LauncherError, ProcessLauncher, ProcessPeer
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

    def __init__(self, target: Target | str) -> None:
        t = get_target(target)
        board = board_of(t)
        if board is None:
            raise LauncherError(
                f"target {t.name} is not a board (no memory map, UART, ...); the qemu-system launcher boots "
                "firmware images of board targets (kiln targets lists them)"
            )
        if not t.emulator:
            raise LauncherError(f"board {t.name} names no emulator; add `emulator = [...]` to {t.source}")
        exe = shutil.which(t.emulator[0])
        if exe is None:
            package = t.emulator_package or "qemu-system-arm"
            raise LauncherError(
                f"emulator {t.emulator[0]!r} for board {t.name} is not installed; install the Debian "
                f"package {package!r} (sudo apt-get install {package})"
            )
        super().__init__(t)
        self.board = board
        self.exe = exe

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

    def start(self, runnable: Path, *, timeout: float | None = 60.0, isolation: Any = None) -> Session:
        runnable = Path(runnable)
        if not runnable.is_file():
            raise LauncherError(f"{runnable} does not exist; extract the package first (Package.extract)")
        pkgdir = runnable.resolve().parent.parent
        extra: dict[str, Any] = {}
        if isolation is not None:  # the device farm: confined like its other runners
            cmd = self.command(Path(".") / runnable.resolve().relative_to(pkgdir))
            extra = {"env": dict(isolation.env), "preexec_fn": isolation.preexec(), "close_fds": True}
        else:
            cmd = self.command(runnable)
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                cwd=pkgdir,
                **extra,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise LauncherError(f"cannot start {' '.join(cmd)}: {e}") from e
        label = f"board {self.target.name} ({self.name}, pid {proc.pid})"
        stdout: IO[bytes] | None = proc.stdout
        stdin: IO[bytes] | None = proc.stdin
        assert stdout is not None and stdin is not None
        session = Session(stdout, stdin, timeout=timeout, peer=QemuSystemPeer(proc, label))  # type: ignore[arg-type]
        session.clock = icount_clock(self.board)
        return session


__all__ = ["QemuSystemLauncher", "QemuSystemPeer", "icount_clock"]
