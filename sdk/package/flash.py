"""``kiln flash``: put a board package's firmware image on the board.

Backends (the board file's ``flasher`` table names the probe targets):

- ``qemu``: boots the image on QEMU's emulation of the board, its UART on a pseudo-terminal, and checks over
  that UART (the ``serial`` launcher) that the firmware answers with the package's model. With ``keep`` the
  emulated board keeps running so that ``kiln run --serial PTY`` and friends can use it;
- ``pyocd``: ``pyocd flash --target <pyocd_target> [--uid PROBE] image.elf``;
- ``openocd``: ``openocd -f <openocd_config> [-c "adapter serial PROBE"] -c "program image.elf verify reset
  exit"``.

The image is the package's ``bin/image.elf``, written once per package to ``$KILN_CACHE_DIR/flash/<sha256>/``
so that the path a dry run prints is the one a real run uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.device.launchers import LauncherError
from kiln.device.qemu_system import QemuSystemLauncher
from kiln.device.serial import SerialLauncher
from kiln.package import toolchain
from kiln.package.kpkg import IMAGE, Package
from kiln.targets.board import Board, board_of

BACKENDS = ("qemu", "pyocd", "openocd")


class FlashError(RuntimeError):
    """Flashing failed or cannot start; the message names the board, the backend and what to do."""


@dataclass(frozen=True)
class FlashPlan:
    """What a backend runs: its command line and the image it writes."""

    backend: str
    command: list[str]
    image: Path


def _board(pkg: Package) -> Board:
    board = board_of(pkg.target)
    if board is None or IMAGE not in pkg.files:
        raise FlashError(
            f"package {pkg.name!r} is for {pkg.target.name}, not a board: only board packages have a firmware "
            "image to flash (run Linux packages with kiln run, or on a board over SSH with kiln deploy)"
        )
    return board


def image_file(pkg: Package) -> Path:
    """The package's firmware image as a file (written once per package into the cache)."""
    _board(pkg)
    dest = toolchain.cache_dir() / "flash" / pkg.sha256[:32] / "image.elf"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".image-")
        with os.fdopen(fd, "wb") as f:
            f.write(pkg.files[IMAGE])
        os.replace(tmp, dest)
    return dest


def plan(pkg: Package, backend: str = "qemu", *, probe: str | None = None) -> FlashPlan:
    """The command ``backend`` would run for ``pkg`` (raises :class:`FlashError` for a bad combination)."""
    board = _board(pkg)
    name = pkg.target.name
    if backend not in BACKENDS:
        raise FlashError(f"unknown flash backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    image = image_file(pkg)
    if backend == "qemu":
        try:
            cmd = QemuSystemLauncher(pkg.target).command(image)
        except LauncherError as e:
            raise FlashError(str(e)) from None
        cmd[cmd.index("-serial") + 1] = "pty"
        return FlashPlan(backend, cmd, image)
    key = "pyocd_target" if backend == "pyocd" else "openocd_config"
    setting = board.flasher.get(key)
    if not setting:
        raise FlashError(
            f"board {name} has no flasher.{key} in {pkg.target.source}; add it to use the {backend} backend"
        )
    if backend == "pyocd":
        cmd = ["pyocd", "flash", "--target", setting, *(["--uid", probe] if probe else []), str(image)]
    else:
        serial = ["-c", f"adapter serial {probe}"] if probe else []
        cmd = ["openocd", "-f", setting, *serial, "-c", f"program {image} verify reset exit"]
    return FlashPlan(backend, cmd, image)


class EmulatedBoard:
    """A board package's image running under QEMU with its UART on a pseudo-terminal (:attr:`port`), for the
    serial launcher. A context manager; :meth:`stop` ends QEMU."""

    def __init__(self, pkg: Package) -> None:
        self.plan = plan(pkg, "qemu")
        self.target = pkg.target
        self.proc = subprocess.Popen(
            self.plan.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output: list[str] = []
        self.port = self._find_pty()
        # keep draining QEMU's output so that it never blocks on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()

    def _find_pty(self) -> str:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            m = re.search(r"char device redirected to (\S+)", line)
            if m:
                return m.group(1)
        self.proc.wait()
        raise FlashError(
            f"board {self.target.name}: QEMU exited with status {self.proc.returncode} before opening the "
            f"UART: {' '.join(self.output)[-500:]}"
        )

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.output.append(raw.decode(errors="replace").rstrip())

    def serial_launcher(self) -> SerialLauncher:
        return SerialLauncher(self.target, self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> EmulatedBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def flash(
    pkg: Package,
    backend: str = "qemu",
    *,
    probe: str | None = None,
    dry_run: bool = False,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> FlashPlan:
    """Flashes ``pkg`` with ``backend`` (``dry_run``: only says what it would run). ``qemu`` boots the image
    and checks the model answers over the emulated UART; with ``keep`` it runs until interrupted."""
    p = plan(pkg, backend, probe=probe)
    if dry_run:
        say(shlex.join(p.command))
        return p
    if backend == "qemu":
        with EmulatedBoard(pkg) as board:
            with board.serial_launcher().start(timeout=None) as session:
                info = session.info()
            if info.name != pkg.name:
                raise FlashError(f"board {pkg.target.name}: the image serves {info.name!r}, not {pkg.name!r}")
            say(
                f"booted {p.image} on an emulated {pkg.target.name} (QEMU): model {info.name!r} answers on "
                f"its UART {board.port}"
            )
            if keep:
                say(
                    f"the board keeps running: kiln run {pkg.path or 'PKG'} --serial {board.port}; Ctrl-C stops it"
                )
                with contextlib.suppress(KeyboardInterrupt):
                    board.proc.wait()
        return p
    exe = shutil.which(p.command[0])
    if exe is None:
        hint = "pip install pyocd" if backend == "pyocd" else "sudo apt-get install openocd"
        raise FlashError(f"{p.command[0]} is not installed ({hint}); needed to flash board {pkg.target.name}")
    proc = subprocess.run([exe, *p.command[1:]], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FlashError(
            f"{backend} failed to flash board {pkg.target.name} (exit status {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    say(f"flashed {p.image} to board {pkg.target.name} with {backend}")
    return p


__all__ = ["BACKENDS", "EmulatedBoard", "FlashError", "FlashPlan", "flash", "image_file", "plan"]
