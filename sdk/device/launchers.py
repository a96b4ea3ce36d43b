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
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kiln.device.icount import CountError, InstructionCounter
from kiln.device.protocol import Session
from kiln.runtime_c import abi
from kiln.targets import Target, get_target

STDERR_TAIL_BYTES = 4096


class LauncherError(ValueError):
    """A launcher cannot be used here: unknown name, wrong target, missing emulator, missing runnable."""


class StderrTail:
    """The last :data:`STDERR_TAIL_BYTES` a device side wrote to its error stream, for error messages.
    ``append`` may run in a reader thread while ``text`` is called from another."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def append(self, chunk: bytes) -> None:
        with self._lock:
            self._chunks.append(chunk)
            self._bytes += len(chunk)
            while self._bytes - len(self._chunks[0]) >= STDERR_TAIL_BYTES:
                self._bytes -= len(self._chunks.popleft())

    def text(self) -> str:
        with self._lock:
            data = b"".join(self._chunks)
        return data[-STDERR_TAIL_BYTES:].decode("utf-8", errors="replace").strip()


class ProcessPeer:
    """A runner process on this host (run directly or under an emulator)."""

    def __init__(self, proc: subprocess.Popen[bytes], label: str) -> None:
        self.proc = proc
        self.label = label
        self._stderr = StderrTail()
        self._drain = threading.Thread(target=self._read_stderr, name=f"stderr of {label}", daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        while chunk := stream.read(4096):
            self._stderr.append(chunk)

    def stderr_tail(self) -> str:
        """The last few KiB the process wrote to stderr."""
        return self._stderr.text()

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


# ------------------------------------------------------------------------------------------------ isolation

RUNNER_PATH = "/usr/local/bin:/usr/bin:/bin"

# Runs in a fresh, single-threaded interpreter between the server and the runner: applies the confinement
# of an Isolation (argv[1], JSON), then replaces itself with the runner (argv[2:]), keeping its pid. A
# separate process because confining in a fork of the multi-threaded server (preexec_fn) is not safe.
_CONFINE = r"""
import ctypes, json, os, resource, signal, sys
cfg, cmd = json.loads(sys.argv[1]), sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
def check(rc, what):
    if rc != 0:
        sys.stderr.write("runner isolation: %s failed: %s\n" % (what, os.strerror(ctypes.get_errno())))
        os._exit(126)
if cfg["namespaces"]:
    check(libc.unshare(0x00020000 | 0x08000000 | 0x40000000), "unshare (mount, ipc, net)")
    check(libc.mount(None, b"/", None, 0x4000 | 0x40000, None), "making mounts private")
    opts = ("size=%d,mode=1777" % cfg["tmp_bytes"]).encode()
    for d in (b"/tmp", b"/dev/shm"):
        if os.path.isdir(d):
            check(libc.mount(b"tmpfs", d, b"tmpfs", 0x2 | 0x4, opts), "tmpfs on " + d.decode())
if cfg["uid"] is not None:
    os.setgroups([])
    os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
    os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "parent-death signal")
for res, value in cfg["limits"]:
    resource.setrlimit(res, (value, value))
try:
    os.execv(cmd[0], cmd)
except OSError as e:
    sys.stderr.write("runner isolation: cannot execute %s: %s\n" % (cmd[0], e.strerror))
    os._exit(127)
"""


def _clean_env() -> dict[str, str]:
    return {"PATH": RUNNER_PATH, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


@dataclass(frozen=True)
class Isolation:
    """How a runner process is confined when it runs someone else's code (the device farm's runners).

    Always: a clean environment (``env``, nothing inherited from the server: no tokens, no proxies), the
    package's own directory as working directory, resource limits (address space, CPU seconds, size of any
    file written, open files, no core dumps), ``no_new_privs`` (no setuid/setcap gains) and death with the
    server (``PR_SET_PDEATHSIG``). When the server runs as root, also: the dedicated ``uid``/``gid`` (no
    supplementary groups; at most ``processes`` processes), and new mount, IPC and network namespaces with an
    empty, size-bounded tmpfs on ``/tmp`` and ``/dev/shm`` and no network (only a loopback that is down).
    A step that fails makes the start fail: a runner never runs less confined than asked. The confinement is
    applied by a small single-threaded helper that then executes the runner in its place (same pid)."""

    env: Mapping[str, str] = field(default_factory=_clean_env)
    uid: int | None = None
    gid: int | None = None
    memory_bytes: int | None = 8 << 30
    cpu_seconds: int | None = 3600
    file_bytes: int | None = 256 << 20
    open_files: int | None = 256
    processes: int | None = 256
    tmp_bytes: int = 64 << 20
    namespaces: bool = True

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` run through the confining helper."""
        root = os.geteuid() == 0
        if self.uid is not None and not root:
            raise LauncherError("a dedicated runner uid needs a device server running as root")
        limits: list[tuple[int, int]] = [(resource.RLIMIT_CORE, 0)]
        for res, value in (
            (resource.RLIMIT_CPU, self.cpu_seconds),
            (resource.RLIMIT_FSIZE, self.file_bytes),
            (resource.RLIMIT_NOFILE, self.open_files),
            (resource.RLIMIT_AS, self.memory_bytes),
        ):
            if value is not None:
                limits.append((res, value))
        if self.uid is not None and self.processes is not None:
            limits.append((resource.RLIMIT_NPROC, self.processes))
        cfg = {
            "namespaces": self.namespaces and root,
            "tmp_bytes": self.tmp_bytes,
            "uid": self.uid,
            "gid": self.gid if self.gid is not None else self.uid,
            "limits": limits,
        }
        return [sys.executable, "-I", "-S", "-c", _CONFINE, json.dumps(cfg), *cmd]

    def describe(self) -> str:
        """What applies on this host, for logs and ``kiln serve``'s banner."""
        parts = ["clean environment", "own directory", "rlimits", "no_new_privs"]
        if self.uid is not None:
            parts.append(f"uid {self.uid}")
        if self.namespaces and os.geteuid() == 0:
            parts.append("private /tmp, no network")
        return ", ".join(parts)


class ProcessLauncher(Launcher):
    """Runs a command on this host whose stdin/stdout carry the device protocol. Subclasses give the
    ``command``; ``peer_class`` and ``device`` say what the process is (a runner, an emulated board)."""

    peer_class: type[ProcessPeer] = ProcessPeer

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def device(self) -> str:
        """What the process is, for messages (``runner of x86_64-linux``)."""
        return f"runner of {self.target.name}"

    @abstractmethod
    def command(self, runnable: Path) -> list[str]:
        """The command line that executes ``runnable``."""

    def start(
        self,
        runnable: Path,
        *,
        timeout: float | None = 60.0,
        isolation: Isolation | None = None,
        args: Sequence[str] = (),
    ) -> Session:
        """As :meth:`Launcher.start`; with ``isolation`` the runner is confined as it says (the device farm
        does that), and runs from its package directory under a relative path (a private /tmp may hide the
        absolute one). ``args`` go to the runner (``--threads N``)."""
        runnable = Path(runnable)
        if not runnable.is_file():
            raise LauncherError(f"{runnable} does not exist; extract the package first (Package.extract)")
        pkgdir = runnable.resolve().parent.parent
        extra: dict[str, Any] = {}
        if isolation is not None:
            cmd = isolation.wrap(
                self.command(Path(".") / runnable.resolve().relative_to(pkgdir)) + list(args)
            )
            extra = {"env": dict(isolation.env)}
        else:
            cmd = self.command(runnable) + list(args)
        try:
            proc = subprocess.Popen(  # in the package directory, so that core dumps land there
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
        label = f"{self.device} ({self.name}, pid {proc.pid})"
        stdout: IO[bytes] | None = proc.stdout
        stdin: IO[bytes] | None = proc.stdin
        assert stdout is not None and stdin is not None
        return Session(stdout, stdin, timeout=timeout, peer=self.peer_class(proc, label))  # type: ignore[arg-type]


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
    """Executes the runner under the target's QEMU user-mode emulator (``emulator`` in its TOML).

    ``count``: an :class:`~kiln.device.icount.InstructionCounter`; QEMU then loads its plugin and counts the
    runner's instructions per kernel (read them with ``count.result()`` after the session closed)."""

    name = "qemu-user"

    def __init__(self, target: Target | str, *, count: InstructionCounter | None = None) -> None:
        t = get_target(target)
        self.exe = emulator_path(t, "qemu-user")
        self.count = count
        super().__init__(t)

    def command(self, runnable: Path) -> list[str]:
        plugin: list[str] = []
        if self.count is not None:
            try:
                plugin = self.count.emulator_args(runnable)
            except (OSError, CountError) as e:
                raise LauncherError(f"cannot count the instructions of {runnable}: {e}") from e
        return [self.exe, *self.target.emulator[1:], *plugin, str(runnable)]

    def start(
        self,
        runnable: Path,
        *,
        timeout: float | None = 60.0,
        isolation: Isolation | None = None,
        args: Sequence[str] = (),
    ) -> Session:
        if self.count is not None and isolation is not None:
            raise LauncherError("instruction counting runs a trusted runner on this host, without isolation")
        return super().start(runnable, timeout=timeout, isolation=isolation, args=args)


def emulator_path(t: Target, default_package: str, what: str = "target") -> str:
    """Where ``t``'s emulator (the first word of ``emulator`` in its TOML) is installed; a
    :class:`LauncherError` saying what to add or install when it is not. ``what``: ``target`` or ``board``,
    for the message; ``default_package``: the Debian package to suggest when the TOML names none."""
    if not t.emulator:
        raise LauncherError(f"{what} {t.name} names no emulator; add `emulator = [...]` to {t.source}")
    exe = shutil.which(t.emulator[0])
    if exe is None:
        package = t.emulator_package or default_package
        raise LauncherError(
            f"emulator {t.emulator[0]!r} for {what} {t.name} is not installed; install the Debian "
            f"package {package!r} (sudo apt-get install {package})"
        )
    return exe


def _ssh(target: Target | str, **options: Any) -> Launcher:
    from kiln.device.ssh import SshLauncher  # on first use: it loads paramiko

    return SshLauncher(target, **options)


def _qemu_system(target: Target | str) -> Launcher:
    from kiln.device.qemu_system import QemuSystemLauncher

    return QemuSystemLauncher(target)


def _serial(target: Target | str, **options: Any) -> Launcher:
    from kiln.device.serial import SerialLauncher  # on first use: it loads pyserial

    return SerialLauncher(target, **options)


#: Launcher name -> factory taking the target and the launcher's options (ssh: the board).
LAUNCHERS: dict[str, Callable[..., Launcher]] = {
    "local": LocalLauncher,
    "qemu-user": QemuUserLauncher,
    "qemu-system": _qemu_system,
    "serial": _serial,
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
    "Isolation",
    "Launcher",
    "LauncherError",
    "LocalLauncher",
    "ProcessLauncher",
    "ProcessPeer",
    "QemuUserLauncher",
    "describe_exit",
    "emulator_path",
    "launcher_for",
    "make_launcher",
]
