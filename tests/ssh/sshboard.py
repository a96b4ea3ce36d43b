"""The board of the SSH tests: a real OpenSSH server on 127.0.0.1, and helpers to look at its processes.

The board is this machine: x86-64 packages run natively, aarch64 and riscv64 ones through the exec prefix
(qemu-aarch64 / qemu-riscv64). Host and user keys are generated per test session in a temporary directory;
every server listens on 127.0.0.1 at a free port and is stopped afterwards. Boards that need to differ from
this machine (a CPU without AVX2, a tiny disk) run their sshd in a private mount namespace (``unshare``,
root only) with a fake /proc/cpuinfo bind-mounted over the real one or a small tmpfs as the remote dir.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SSHD = "/usr/sbin/sshd"
IS_ROOT = os.geteuid() == 0

#: the ``ssh_env`` fixture: ``ssh_env(board, **overrides)`` -> the SshOptions fields for ``board``
Env = Callable[..., dict[str, Any]]


def _namespaces_work() -> bool:
    if not IS_ROOT or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return r.returncode == 0


NAMESPACES = _namespaces_work()
needs_namespaces = pytest.mark.skipif(
    not NAMESPACES, reason="needs root and unshare (a private mount namespace for a fake board)"
)


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        out.setdefault(ppid, []).append(int(d.name))
    return out


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the live processes whose command line contains ``text`` (runners, wrappers)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmd:
            found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def runners_in(remote_dir: str) -> list[str]:
    """The processes on the board running from ``remote_dir`` (runners, their wrappers)."""
    return processes_mentioning(remote_dir.rstrip("/") + "/")


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Sshd:
    """A real sshd on 127.0.0.1 (``-D -e``) with its own host key, accepting the test user's key."""

    def __init__(self, root: Path, user_key: Path, *, prelude: str | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.host_key = root / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            keygen(self.host_key)
        (root / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
        self.user = getpass.getuser()
        self.prelude = prelude  # shell commands run in a private mount namespace before sshd
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "sshd.log"

    def _config(self) -> Path:
        cfg = self.root / "sshd_config"
        cfg.write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.root}/sshd.pid
AuthorizedKeysFile {self.root}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
Subsystem sftp internal-sftp
MaxSessions 64
MaxStartups 64
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
# A login shell of bash reads ~/.bashrc for commands over SSH unless it is nested (SHLVL): keep a developer's
# heavy .bashrc (pyenv init...) out of every command the tests run on the board.
SetEnv SHLVL=1
"""
        )
        return cfg

    def start(self, port: int | None = None) -> Sshd:
        if IS_ROOT:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        for _ in range(5):
            self.port = port or free_port()
            cmd = [SSHD, "-f", str(self._config()), "-D", "-e"]
            if self.prelude:
                script = f"set -e; {self.prelude}; exec {' '.join(cmd)}"
                cmd = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            end = time.monotonic() + 10
            while time.monotonic() < end and self.proc.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
                time.sleep(0.02)
            self.stop()
            if port:
                break
        raise RuntimeError(f"sshd did not start:\n{self.log.read_text()[-3000:]}")

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def known_hosts_line(self) -> str:
        kind, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def kill_all(self) -> None:
        """SIGKILL the listener and every per-connection sshd (the connection drops; sessions' shells stay,
        as on a board whose sshd crashed)."""
        assert self.proc is not None
        children = _children()
        todo, found = [self.proc.pid], []
        while todo:
            pid = todo.pop()
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("sshd"):
                found.append(pid)
                todo.extend(children.get(pid, []))
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, grace=5.0)


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """Terminates ``proc``, and kills it if it has not ended after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ssh_args(env: dict[str, Any]) -> list[str]:
    """The ``kiln`` command-line options that reach the board ``env`` (an ``ssh_env(...)`` result) describes."""
    out = [
        "--ssh",
        env["destination"],
        "--known-hosts",
        env["known_hosts"],
        "--ssh-config",
        env["config_file"],
    ]
    out += ["--no-ssh-agent", "--remote-dir", env["remote_dir"]]
    for key in env["identity_files"]:
        out += ["--ssh-identity", key]
    if env.get("exec_prefix"):
        out += ["--ssh-exec-prefix", " ".join(env["exec_prefix"])]
    return out


def python_client(script: str) -> subprocess.Popen[str]:
    """A client in a separate process (so that a test can kill it like a user's crashed laptop)."""
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


class FarmCommand:
    """``python -m kiln.rpc.cli tracker|serve ...`` as a process; ``address`` is where it listens."""

    def __init__(self, *args: str, env: dict[str, str], log: Path, timeout: float = 30.0) -> None:
        self.log = log
        with log.open("w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kiln.rpc.cli", *args],
                stdout=subprocess.PIPE,
                stderr=f,
                text=True,
                env={**os.environ, **env},
            )
        assert self.proc.stdout is not None
        line = ""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line or "listening on " in line:
                break
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(
                f"kiln {' '.join(args[:1])} did not start: {line!r}\n{log.read_text()[-3000:]}"
            )
        self.address = line.rsplit("listening on ", 1)[1].split()[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, grace=10.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
