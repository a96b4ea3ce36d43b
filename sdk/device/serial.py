"""The ``serial`` launcher: the device protocol over a flashed board's UART, through pyserial.

The board already runs its firmware (``kiln flash``); the launcher does not start anything, it opens the port
and hands a :class:`~kiln.device.protocol.Session` over it. ``port`` is anything pyserial opens: a device
(``/dev/ttyACM0``, ``/dev/ttyUSB0``, a pty such as QEMU's ``-serial pty``) or a URL (``socket://HOST:PORT``
for QEMU's ``-serial tcp:HOST:PORT,server``, ``rfc2217://...``). The default 115200 baud, 8N1, matches the
firmware's UART setup; emulated UARTs ignore it.

Bytes that were waiting on the port before the session (boot noise, a half-read reply of an earlier,
interrupted session) are dropped, and the board's endpoint skips anything that is not a frame, so a session
can start at any time. Closing the session closes the port and leaves the board running.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from kiln.device.launchers import Launcher, LauncherError
from kiln.device.protocol import Session
from kiln.targets import Target, get_target
from kiln.targets.board import board_of

DEFAULT_BAUDRATE = 115200


class SerialPeer:
    """The board at the other end of a serial port: it never exits; closing only closes the port."""

    timeout_hint = (
        "no reply on the serial port: is the board flashed with this package, powered, and wired to this port "
        "(and is no other program reading it)?"
    )

    def __init__(self, port: Any, label: str) -> None:
        self.port = port
        self.label = label

    def running(self) -> bool:
        return bool(self.port.is_open)

    def failure(self) -> str:
        return f"the serial port {self.port.name or self.port.port} closed"

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.port.close()

    def close(self) -> None:
        self.kill()


class SerialLauncher(Launcher):
    """Talks to a board target's flashed firmware over ``port`` (a pyserial port name or URL)."""

    name = "serial"

    def __init__(
        self, target: Target | str, port: str | None = None, baudrate: int = DEFAULT_BAUDRATE
    ) -> None:
        t = get_target(target)
        board = board_of(t)
        if board is None:
            raise LauncherError(
                f"target {t.name} is not a board; the serial launcher talks to firmware on a microcontroller "
                "board (Linux boards: the ssh launcher)"
            )
        if not port:
            raise LauncherError(
                f"the serial launcher needs the board's port, e.g. /dev/ttyACM0 or socket://127.0.0.1:4444 "
                f"(board {t.name})"
            )
        self.target = t
        self.board = board
        self.port = port
        self.baudrate = int(baudrate)

    def open_port(self) -> Any:
        import serial  # pyserial

        try:
            return serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=0, write_timeout=None)
        except (serial.SerialException, ValueError) as e:
            raise LauncherError(
                f"board {self.target.name}: cannot open serial port {self.port}: {e}"
            ) from None

    def start(self, runnable: Path | None = None, *, timeout: float | None = 60.0, **options: Any) -> Session:
        """A Session over the port (``runnable``, the package's image, is already on the board)."""
        port = self.open_port()
        with contextlib.suppress(Exception):
            port.reset_input_buffer()
        label = f"board {self.target.name} (serial {self.port})"
        peer = SerialPeer(port, label)
        session = Session(port, port, timeout=timeout, peer=peer, label=label)
        session.clock = (
            f"the board's {self.board.timer_kind} timer at {self.board.timer_hz} Hz (on an emulated board: "
            "QEMU's virtual time)"
        )
        return session


__all__ = ["DEFAULT_BAUDRATE", "SerialLauncher", "SerialPeer"]
