"""Launchers: start a package's runnable on a device and hand back a :class:`~kiln.device.protocol.Session`.

A launcher knows one way to reach a device. It starts the runnable of an extracted package (``bin/runner``
for Linux targets) and returns a Session over the byte stream that carries the device protocol, together
with a :class:`~kiln.device.protocol.Peer` that can explain and stop the device side. Implemented:

- ``local``: the host executes ``bin/runner`` directly (the target runs natively);
- ``qemu-user``: the target's ``emulator`` command from its TOML (e.g. ``qemu-aarch64 -cpu cortex-a72``)
  runs ``bin/runner``;
- ``ssh``: a Linux board runs it, reached over SSH (:mod:`kiln.device.ssh`: upload, checks, the protocol
  over the channel).

Both talk over the process's stdin/stdout; stderr is kept (last few KiB) for error messages. A runner that
crashes, exits or hangs becomes a :class:`~kiln.device.protocol.DeviceLost` / ``DeviceTimeout`` naming the exit
status or signal. ``qemu-system`` (firmware image, protocol over an emulated UART), ``ssh`` (runner on a
board, protocol over the channel) and ``serial`` (flashed board, protocol over a UART) fit the same
interface: their ``start`` opens that stream and returns a Session with their own Peer.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kiln.device.protocol import Session
from kiln.runtime_c import abi
from kiln.targets import Target, get_target

STDERR_TAIL_BYTES = 4096


class LauncherError(ValueError):
    """A launcher cannot be used here: unknown name, wrong target, missing emulator, missing runnable."""


class ProcessPeer:
    """A runner process on this host (run directly or under an emulator)."""

    def __init__(self, proc: subprocess.Popen[bytes], label: str) -> None:
        self.proc = proc
        self.label = label
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_bytes = 0
        self._lock = threading.Lock()
        self._drain = threading.Thread(target=self._read_stderr, name=f"stderr of {label}", daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        while chunk := stream.read(4096):
            with self._lock:
                self._stderr.append(chunk)
                self._stderr_bytes += len(chunk)
                while self._stderr_bytes - len(self._stderr[0]) >= STDERR_TAIL_BYTES:
                    self._stderr_bytes -= len(self._stderr.popleft())

    def stderr_tail(self) -> str:
        """The last few KiB the process wrote to stderr."""
        with self._lock:
            data = b"".join(self._stderr)
        return data[-STDERR_TAIL_BYTES:].decode("utf-8", errors="replace").strip()

    def running(self) -> bool:
        return self.proc.poll() is None

    def failure(self, wait: float = 2.0) -> str:
        try:
            code = self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return "the stream closed but the process is still running"
        self._drain.join(timeout=1.0)
        text = describe_exit(code)
        tail = self.stderr_tail()
        return f"{text}; stderr: {tail}" if tail else text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def close(self, wait: float = 5.0) -> None:
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._drain.join(timeout=1.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def describe_exit(code: int) -> str:
    """'exited with status 1 (...)' or 'was killed by signal SIGSEGV (Segmentation fault)'."""
    if code < 0:
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"was killed by signal {-code}"
        return f"was killed by signal {sig.name} ({signal.strsignal(sig)})"
    meaning = abi.RUNNER_EXIT_CODES.get(code)
    return f"exited with status {code}" + (f" ({meaning})" if meaning else "")


class Launcher(ABC):
    """Starts a runnable on a device; ``name`` identifies the kind (``local``, ``qemu-user``, ...)."""

    name: str

    @abstractmethod
    def start(self, runnable: Path, *, timeout: float | None = 60.0) -> Session:
        """Starts ``runnable`` (an extracted package's ``bin/runner``) and returns a Session to it whose calls
        time out after ``timeout`` seconds."""


class ProcessLauncher(Launcher):
    """Runs a command on this host whose stdin/stdout carry the device protocol."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @abstractmethod
    def command(self, runnable: Path) -> list[str]:
        """The command line that executes ``runnable``."""

    def start(self, runnable: Path, *, timeout: float | None = 60.0) -> Session:
        runnable = Path(runnable)
        if not runnable.is_file():
            raise LauncherError(f"{runnable} does not exist; extract the package first (Package.extract)")
        cmd = self.command(runnable)
        try:
            proc = subprocess.Popen(  # in the package directory, so that core dumps land there
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                cwd=runnable.resolve().parent.parent,
            )
        except OSError as e:
            raise LauncherError(f"cannot start {' '.join(cmd)}: {e}") from e
        label = f"runner of {self.target.name} ({self.name}, pid {proc.pid})"
        stdout: IO[bytes] | None = proc.stdout
        stdin: IO[bytes] | None = proc.stdin
        assert stdout is not None and stdin is not None
        return Session(stdout, stdin, timeout=timeout, peer=ProcessPeer(proc, label))  # type: ignore[arg-type]


class LocalLauncher(ProcessLauncher):
    """Executes the runner on this host (the target must run natively)."""

    name = "local"

    def __init__(self, target: Target | str) -> None:
        t = get_target(target)
        if not t.runs_natively():
            raise LauncherError(
                f"target {t.name} does not run natively on this host; use the qemu-user launcher"
            )
        super().__init__(t)

    def command(self, runnable: Path) -> list[str]:
        return [str(runnable)]


class QemuUserLauncher(ProcessLauncher):
    """Executes the runner under the target's QEMU user-mode emulator (``emulator`` in its TOML)."""

    name = "qemu-user"

    def __init__(self, target: Target | str) -> None:
        t = get_target(target)
        if not t.emulator:
            raise LauncherError(f"target {t.name} names no emulator; add `emulator = [...]` to {t.source}")
        exe = shutil.which(t.emulator[0])
        if exe is None:
            package = t.emulator_package or "qemu-user"
            raise LauncherError(
                f"emulator {t.emulator[0]!r} for target {t.name} is not installed; install the Debian "
                f"package {package!r} (sudo apt-get install {package})"
            )
        super().__init__(t)
        self.exe = exe

    def command(self, runnable: Path) -> list[str]:
        return [self.exe, *self.target.emulator[1:], str(runnable)]


def _ssh(target: Target | str, **options: Any) -> Launcher:
    from kiln.device.ssh import SshLauncher  # on first use: it loads paramiko

    return SshLauncher(target, **options)


def _qemu_system(target: Target | str) -> Launcher:
    from kiln.device.qemu_system import QemuSystemLauncher

    return QemuSystemLauncher(target)


#: Launcher name -> factory taking the target and the launcher's options (ssh: the board).
LAUNCHERS: dict[str, Callable[..., Launcher]] = {
    "local": LocalLauncher,
    "qemu-user": QemuUserLauncher,
    "qemu-system": _qemu_system,
    "ssh": _ssh,
}


def make_launcher(name: str, target: Target | str, **options: Any) -> Launcher:
    """The launcher called ``name`` for ``target``; ``options`` go to its factory (``ssh``: the fields of
    :class:`kiln.device.ssh.SshOptions`, or ``options=SshOptions(...)``)."""
    if name not in LAUNCHERS:
        raise LauncherError(f"unknown launcher {name!r}; known launchers: {', '.join(LAUNCHERS)}")
    return LAUNCHERS[name](target, **options)


def launcher_for(target: Target | str) -> Launcher:
    """The default launcher: ``local`` when the host runs the target natively, else ``qemu-user``; for a
    board, ``qemu-system``."""
    t = get_target(target)
    if t.is_bare_metal:
        return _qemu_system(t)
    return LocalLauncher(t) if t.runs_natively() else QemuUserLauncher(t)


__all__ = [
    "LAUNCHERS",
    "Launcher",
    "LauncherError",
    "LocalLauncher",
    "ProcessLauncher",
    "ProcessPeer",
    "QemuUserLauncher",
    "describe_exit",
    "launcher_for",
    "make_launcher",
]
