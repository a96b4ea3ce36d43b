"""The ``ssh`` launcher: run a package's runner on a Linux board reached over SSH (paramiko).

A board needs an SSH login and a POSIX shell with coreutils or busybox (``sha256sum``, ``mkfifo``, ``df``);
no Python, no kiln. The launcher has the same interface as ``local`` and ``qemu-user``
(:class:`~kiln.device.launchers.Launcher`): ``start(runnable)`` returns a :class:`~kiln.device.protocol.Session`
whose device protocol travels over the stdin/stdout of an SSH channel.

Connection
    The destination is ``[USER@]HOST[:PORT]`` or a ``~/.ssh/config`` alias (HostName, User, Port,
    IdentityFile, ProxyJump, ProxyCommand, ServerAliveInterval, ConnectTimeout, UserKnownHostsFile,
    StrictHostKeyChecking are read with :class:`paramiko.SSHConfig`). Keys: ``identity_files``, then the
    ssh-agent, then ``~/.ssh/id_*``. Host keys are checked against ``~/.ssh/known_hosts`` (and
    ``/etc/ssh/ssh_known_hosts``): an unknown key is refused unless ``accept_new_host_key`` (then it is
    recorded, like ``StrictHostKeyChecking=accept-new``); a changed key is always refused. One connection
    serves every runner of a launcher; a dead one is replaced at the next start. Keepalives every
    ``keepalive`` seconds.

Checks
    Before the first upload the launcher probes the board once (``uname -m``, the first processor of
    ``/proc/cpuinfo``, ``df``) and refuses a target the board cannot run (:func:`kiln.targets.cpu.cannot_run`:
    another architecture, a CPU feature the code needs) instead of letting the runner die of SIGILL. With an
    ``exec_prefix`` (an emulator on the board, ``qemu-aarch64 -cpu cortex-a72``) it checks the emulator is
    installed there instead.

Uploads
    Runners are cached in ``remote_dir`` (default ``~/.cache/kiln``) under the sha256 of their bytes. An
    upload goes by SFTP to a temporary name (``.tmp-<sha>-<random>``), is checked with ``sha256sum`` on the
    board, made executable and renamed into place: concurrent uploads of the same runner each write their
    own file and the rename is atomic, so a runner is never seen half-written. A cached runner is verified
    again (``sha256sum``) the first time a launcher uses it. Before an upload, runners not used for the last
    two minutes are deleted, least recently used first, until the cache fits ``cache_bytes`` and the disk
    has room; a disk that still has no room is a :class:`BoardError` saying how much is free.

Runners and their lifetime
    The runner runs under a small ``sh`` wrapper (:data:`WRAPPER`): the runner reads a FIFO that ``cat``
    fills from the channel's stdin, and when that stdin ends (the session closed, the client was killed, the
    connection dropped: sshd closes the pipe in every case) the wrapper kills the runner with SIGKILL. So a
    runner never outlives its session, even a hung one that reads nothing. The wrapper exits with the
    runner's status (128+N for signal N); stderr is kept (last few KiB) for error messages. The Session
    reads and writes OS pipes that threads copy to and from the channel, so its select()-based timeouts
    work: a call that times out closes the channel, which kills the runner on the board.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import getpass
import hashlib
import io
import logging
import os
import posixpath
import re
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.device.launchers import Launcher, LauncherError, StderrTail, describe_exit
from kiln.device.protocol import Session
from kiln.targets import Target, get_target, list_targets
from kiln.targets.cpu import cannot_run, cpuinfo_features

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)

DEFAULT_REMOTE_DIR = "~/.cache/kiln"
DEFAULT_CACHE_BYTES = 512 << 20
CONNECT_TIMEOUT_S = 15.0
KEEPALIVE_S = 15.0
COMMAND_TIMEOUT_S = 60.0
#: Free space an upload leaves on the board's disk, beyond the runner itself.
FREE_MARGIN_BYTES = 64 << 10
#: Runners used this recently (by the board's clock) are never evicted: a session may be starting them.
RECENT_S = 120.0
#: Temporary upload files older than this are left-overs of interrupted uploads and are removed.
STALE_UPLOAD_S = 3600.0

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SshError(LauncherError):
    """The board cannot be reached or used over SSH; the message says what and what to do."""


class HostKeyError(SshError):
    """The board's host key is unknown (``changed`` False) or differs from the recorded one (True)."""

    def __init__(self, message: str, *, changed: bool) -> None:
        super().__init__(message)
        self.changed = changed


class BoardError(SshError):
    """The board is reachable but cannot run this: architecture, CPU features, emulator, disk space."""


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class SshOptions:
    """How to reach a board and where to keep runners on it (the ``--ssh*`` options of the CLI)."""

    destination: str  # [USER@]HOST[:PORT] or a ~/.ssh/config alias
    port: int | None = None  # overrides the destination's and the config's port
    identity_files: tuple[str, ...] = ()
    use_agent: bool = True
    config_file: str | None = None  # None: ~/.ssh/config if it exists
    known_hosts: str | None = None  # None: the config's UserKnownHostsFile, else ~/.ssh/known_hosts
    accept_new_host_key: bool = False
    remote_dir: str = DEFAULT_REMOTE_DIR
    cache_bytes: int = DEFAULT_CACHE_BYTES
    exec_prefix: tuple[str, ...] = ()  # e.g. ("qemu-aarch64", "-cpu", "cortex-a72")
    connect_timeout: float = CONNECT_TIMEOUT_S
    keepalive: float = KEEPALIVE_S


def parse_destination(text: str) -> tuple[str | None, str, int | None]:
    """``[ssh://][USER@]HOST[:PORT]`` (IPv6 as ``[::1]:22``) -> (user or None, host, port or None)."""
    rest = text.strip()
    rest = rest.removeprefix("ssh://").rstrip("/")
    user, _, rest = rest.rpartition("@")
    port_text = ""
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise SshError(f"cannot read the SSH destination {text!r}; write [USER@]HOST[:PORT]")
        port_text = tail[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host = rest
    if not host:
        raise SshError(f"the SSH destination {text!r} names no host; write [USER@]HOST[:PORT]")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise SshError(f"the SSH destination {text!r} has an invalid port {port_text!r}")
        port = int(port_text)
    return user or None, host, port


@dataclass(frozen=True)
class Hop:
    """One SSH server on the way to the board (jump hosts first), as the config resolves it."""

    name: str  # as written (maybe a config alias)
    host: str  # what is connected to (HostName)
    port: int
    user: str
    identity_files: tuple[str, ...]  # from the config (the options' come first)
    proxy_jump: str | None = None
    proxy_command: str | None = None
    keepalive: float | None = None
    connect_timeout: float | None = None
    known_hosts: str | None = None
    strict_host_keys: str | None = None

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host's name in known_hosts: ``host``, or ``[host]:port`` for another port than 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _load_config(path: str | None) -> paramiko.SSHConfig:
    import paramiko

    explicit = path is not None
    p = Path(os.path.expanduser(path or "~/.ssh/config"))
    if not p.exists():
        if explicit:
            raise SshError(f"ssh config file {p} does not exist")
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(p))
    except (OSError, ValueError, paramiko.SSHException) as e:
        raise SshError(f"cannot read ssh config file {p}: {e}") from e


def _hop(config: paramiko.SSHConfig, spec: str, port: int | None = None) -> Hop:
    user, name, spec_port = parse_destination(spec)
    c = config.lookup(name)

    def number(key: str) -> float | None:
        try:
            return float(c[key]) if key in c else None
        except ValueError:
            raise SshError(f"ssh config for {name}: {key} {c[key]!r} is not a number") from None

    try:
        port = port or spec_port or int(c.get("port", 22))
    except ValueError:
        raise SshError(f"ssh config for {name}: Port {c.get('port')!r} is not a number") from None
    known = c.get("userknownhostsfile")
    return Hop(
        name=name,
        host=str(c.get("hostname", name)),
        port=port,
        user=user or c.get("user") or getpass.getuser(),
        identity_files=tuple(os.path.expanduser(p) for p in c.get("identityfile", [])),
        proxy_jump=c.get("proxyjump"),
        proxy_command=c.get("proxycommand"),
        keepalive=number("serveraliveinterval"),
        connect_timeout=number("connecttimeout"),
        known_hosts=os.path.expanduser(known.split()[0]) if known else None,
        strict_host_keys=(c.get("stricthostkeychecking") or "").lower() or None,
    )


def resolve(options: SshOptions) -> list[Hop]:
    """The hops to the board: ProxyJump hosts first (resolved through the config too), the board last."""
    config = _load_config(options.config_file)
    _, _, spec_port = parse_destination(options.destination)
    if options.port is not None and spec_port is not None and options.port != spec_port:
        raise SshError(
            f"the destination {options.destination!r} says port {spec_port} and --ssh-port says "
            f"{options.port}; give one"
        )

    def chain(spec: str, port: int | None, depth: int) -> list[Hop]:
        hop = _hop(config, spec, port)
        jumps = hop.proxy_jump
        if not jumps or jumps.lower() == "none":
            return [hop]
        if depth >= 8:
            raise SshError(f"ProxyJump of {hop.name} loops (more than 8 jump hosts); check the ssh config")
        specs = [s.strip() for s in jumps.split(",") if s.strip()]
        first = chain(specs[0], None, depth + 1)
        return [*first, *(_hop(config, s) for s in specs[1:]), hop]

    return chain(options.destination, options.port, 0)


# ------------------------------------------------------------------------------------------------ connection


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's notation: ``ssh-ed25519 SHA256:base64``."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


class _HostKeyPolicy:
    """paramiko's missing-host-key hook: refuse with instructions, or record the key (accept-new)."""

    def __init__(self, hop: Hop, known_hosts: Path, accept_new: bool) -> None:
        self.hop = hop
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept_new:
            port = f"-p {self.hop.port} " if self.hop.port != 22 else ""
            raise HostKeyError(
                f"the host key of {hostname} ({fingerprint(key)}) is not in {self.known_hosts}; if this is "
                f"the board you expect, accept it once with --accept-new-host-key (or run `ssh-keyscan "
                f"{port}{self.hop.host} >> {self.known_hosts}` after checking the fingerprint)",
                changed=False,
            )
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.known_hosts.open("a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning("Permanently added %s (%s) to %s", hostname, fingerprint(key), self.known_hosts)


def _connect_hop(hop: Hop, sock: Any, options: SshOptions) -> paramiko.SSHClient:
    import paramiko

    known_hosts = Path(os.path.expanduser(options.known_hosts or hop.known_hosts or "~/.ssh/known_hosts"))
    accept_new = options.accept_new_host_key or hop.strict_host_keys in ("accept-new", "no", "off")
    client = paramiko.SSHClient()
    for f in (Path("/etc/ssh/ssh_known_hosts"), known_hosts):
        if f.is_file():
            try:
                client.load_system_host_keys(str(f))
            except (OSError, paramiko.SSHException) as e:
                raise SshError(f"cannot read known hosts file {f}: {e}") from e
    client.set_missing_host_key_policy(_HostKeyPolicy(hop, known_hosts, accept_new))  # type: ignore[arg-type]
    for key in options.identity_files:
        if not Path(os.path.expanduser(key)).is_file():
            raise SshError(f"identity file {key} does not exist (--ssh-identity)")
    keys = [os.path.expanduser(k) for k in options.identity_files]
    keys += [k for k in hop.identity_files if Path(k).is_file() and k not in keys]
    timeout = hop.connect_timeout or options.connect_timeout
    try:
        client.connect(
            hop.host,
            hop.port,
            username=hop.user,
            key_filename=keys or None,
            allow_agent=options.use_agent,
            look_for_keys=True,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            sock=sock,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyError(
            f"HOST KEY CHANGED for {hop.known_hosts_name}: {known_hosts} has {fingerprint(e.expected_key)}, the server "
            f"offers {fingerprint(e.key)}; someone may be intercepting the connection, or the board was "
            f"reinstalled. Refusing to connect. If you know why it changed, remove the old key with "
            f"`ssh-keygen -f {known_hosts} -R '{hop.known_hosts_name}'` and connect again",
            changed=True,
        ) from e
    except paramiko.PasswordRequiredException as e:
        client.close()
        raise SshError(
            f"a private key for {hop.label} is encrypted ({e}); load it into the ssh-agent (ssh-add KEY)"
        ) from e
    except paramiko.AuthenticationException as e:
        client.close()
        tried = [*(f"the key {k}" for k in keys), *(["the ssh-agent"] if options.use_agent else [])]
        tried.append("~/.ssh/id_*")
        raise SshError(
            f"{hop.label} refused the login ({e}); tried {', '.join(tried)}. Pass the right key with "
            f"--ssh-identity KEY, or install yours on the board (ssh-copy-id -p {hop.port} "
            f"{hop.user}@{hop.host})"
        ) from e
    except TimeoutError as e:
        client.close()
        raise SshError(f"cannot connect to {hop.label}: no answer within {timeout:g} s") from e
    except socket.gaierror as e:
        client.close()
        raise SshError(f"cannot connect to {hop.label}: unknown host {hop.host!r} ({e.strerror})") from e
    except paramiko.ssh_exception.NoValidConnectionsError as e:
        client.close()
        raise SshError(
            f"cannot connect to {hop.label}: connection refused; is sshd running on the board and is the "
            "port right (--ssh-port)?"
        ) from e
    except ConnectionRefusedError as e:
        client.close()
        raise SshError(f"cannot connect to {hop.label}: connection refused") from e
    except paramiko.SSHException as e:
        client.close()
        if "No authentication methods" in str(e):
            raise SshError(
                f"no key to log in to {hop.label} with (no --ssh-identity, "
                f"{'nothing in the ssh-agent' if options.use_agent else 'the ssh-agent not used'}, "
                "no ~/.ssh/id_*); pass one with --ssh-identity KEY"
            ) from e
        raise SshError(f"SSH handshake with {hop.label} failed: {e}") from e
    except (OSError, EOFError) as e:
        client.close()
        raise SshError(f"cannot connect to {hop.label}: {getattr(e, 'strerror', None) or e}") from e
    return client


def _sh(script: str, *args: str) -> str:
    """A command line that runs ``script`` with ``/bin/sh`` whatever the login shell, with ``args``."""
    return " ".join(["exec", "/bin/sh", "-c", shlex.quote(script), "kiln", *map(shlex.quote, args)])


def _read_all(read: Any) -> bytes:
    out = bytearray()
    while chunk := read(65536):
        out += chunk
    return bytes(out)


class SshConnection:
    """An authenticated SSH connection to a board (through its jump hosts). Thread-safe."""

    def __init__(self, options: SshOptions) -> None:
        import paramiko

        self.options = options
        self.hops = resolve(options)
        self.label = self.hops[-1].label
        self._clients: list[paramiko.SSHClient] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()
        try:
            sock: Any = None
            for i, hop in enumerate(self.hops):
                if sock is None and hop.proxy_command:
                    sock = paramiko.ProxyCommand(hop.proxy_command)
                client = _connect_hop(hop, sock, options)
                self._clients.append(client)
                if i + 1 < len(self.hops):
                    nxt = self.hops[i + 1]
                    transport = client.get_transport()
                    assert transport is not None
                    try:
                        sock = transport.open_channel(
                            "direct-tcpip",
                            (nxt.host, nxt.port),
                            ("127.0.0.1", 0),
                            timeout=options.connect_timeout,
                        )
                    except (paramiko.SSHException, OSError, EOFError) as e:
                        raise SshError(
                            f"jump host {hop.label} cannot reach {nxt.host}:{nxt.port} ({e}); check ProxyJump"
                        ) from e
        except BaseException:
            self.close()
            raise
        transport = self._clients[-1].get_transport()
        assert transport is not None
        self.transport = transport
        keepalive = self.hops[-1].keepalive or options.keepalive
        for c in self._clients:
            t = c.get_transport()
            if t is None:
                continue
            if keepalive:
                t.set_keepalive(int(max(1, keepalive)))
            if isinstance(t.sock, socket.socket):  # small request/reply frames: no Nagle delays
                with contextlib.suppress(OSError):
                    t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def alive(self) -> bool:
        return bool(self._clients) and all(
            (t := c.get_transport()) is not None and t.is_active() for c in self._clients
        )

    def lost(self) -> str:
        """Why the connection is gone, as a phrase."""
        t = self.transport
        exc = t.get_exception() if t is not None else None
        return f"lost the SSH connection to {self.label}" + (f" ({exc})" if exc else "")

    def open_channel(self, command: str, timeout: float | None = None) -> paramiko.Channel:
        """A session channel executing ``command``."""
        import paramiko

        try:
            chan = self.transport.open_session(timeout=timeout or self.options.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            if not self.alive:
                raise SshError(self.lost()) from e
            raise SshError(f"{self.label} refused to start a command ({e}); is MaxSessions too low?") from e
        return chan

    def run(
        self, script: str, *args: str, stdin: bytes = b"", timeout: float = COMMAND_TIMEOUT_S
    ) -> tuple[int, str, str]:
        """Runs a ``sh`` script on the board: ``(exit status, stdout, stderr)``."""
        import paramiko

        chan = self.open_channel(_sh(script, *args), timeout)
        try:
            chan.settimeout(timeout)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out = _read_all(chan.recv)
            err = _read_all(chan.recv_stderr)
            if not chan.status_event.wait(timeout):
                raise TimeoutError
            if chan.exit_status < 0:
                raise EOFError("no exit status")
            return chan.exit_status, out.decode(errors="replace"), err.decode(errors="replace")
        except TimeoutError as e:
            raise SshError(f"{self.label} did not finish a command within {timeout:g} s") from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SshError(self.lost() if not self.alive else f"a command on {self.label} failed: {e}") from e
        finally:
            chan.close()

    @contextlib.contextmanager
    def sftp(self) -> Iterator[paramiko.SFTPClient]:
        """The connection's SFTP client, for one thread at a time."""
        import paramiko

        with self._sftp_lock:
            if self._sftp is None:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(self.transport)
                except (paramiko.SSHException, OSError, EOFError) as e:
                    raise SshError(
                        f"{self.label} offers no SFTP ({e}); enable `Subsystem sftp` in the board's sshd_config"
                    ) from e
                assert self._sftp is not None
                channel = self._sftp.get_channel()
                if channel is not None:
                    channel.settimeout(COMMAND_TIMEOUT_S)  # a board that stops answering fails the call
            yield self._sftp

    def close(self) -> None:
        """Closes the connection; operations in progress in other threads fail."""
        for c in reversed(self._clients):
            with contextlib.suppress(Exception):
                c.close()
        if self._sftp_lock.acquire(timeout=5.0):
            self._sftp = None
            self._sftp_lock.release()

    def __enter__(self) -> SshConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ the board

_PROBE = r"""
d=$1; shift
mkdir -p "$d" 2>/dev/null
cd "$d" 2>/dev/null || { echo "cannot create or enter $d" >&2; exit 3; }
echo "dir=$(pwd)"
echo "machine=$(uname -m)"
echo "system=$(uname -sr)"
echo "now=$(date +%s)"
echo "df=$(df -Pk . 2>/dev/null | tail -n 1)"
echo "cpus=$(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
for k in 'model name' Model uarch 'cpu model' Hardware; do
  m=$(grep -m 1 "^$k[[:space:]]*:" /proc/cpuinfo 2>/dev/null | cut -d: -f2-); [ -n "$m" ] && break
done
echo "model=$m"
for e in "$@"; do command -v "$e" >/dev/null 2>&1 && echo "have=$e"; done
if [ -r /proc/cpuinfo ]; then echo "cpuinfo:"; sed -n '1,/^[[:space:]]*$/p' /proc/cpuinfo; fi
"""


@dataclass(frozen=True)
class BoardInfo:
    """What a probe of the board found."""

    label: str  # user@host:port
    remote_dir: str  # absolute
    machine: str  # uname -m
    system: str  # uname -sr
    model: str
    cpus: int
    cpuinfo: str | None  # the first processor's entry of /proc/cpuinfo
    free_bytes: int | None  # in remote_dir
    clock: float  # the board's time (epoch seconds) at the probe
    probed_at: float  # time.monotonic() here at the probe
    commands: frozenset[str]  # the asked-for commands the board has (emulators)

    @property
    def cpu_features(self) -> frozenset[str]:
        return cpuinfo_features(self.cpuinfo or "")

    def now(self) -> float:
        """The board's clock now (from the probe's reading)."""
        return self.clock + time.monotonic() - self.probed_at

    def cannot_run(self, target: Target, exec_prefix: Sequence[str] = ()) -> str | None:
        """Why ``target``'s runner cannot run on the board (under ``exec_prefix``), or None."""
        if exec_prefix:
            if target.os != "linux":
                return f"{target.name} is a bare-metal target (no Linux runner)"
            if (
                exec_prefix[0] not in self.commands
                and posixpath.basename(exec_prefix[0]) not in self.commands
            ):
                return f"the exec prefix's {exec_prefix[0]!r} is not installed on it"
            return None
        return cannot_run(target, self.machine, self.cpuinfo)

    def runnable_targets(self) -> list[tuple[Target, str | None, str | None]]:
        """Every Linux target: ``(target, how it runs here or None, why not or None)``; how is ``native``
        or the exec prefix of an emulator installed on the board."""
        out: list[tuple[Target, str | None, str | None]] = []
        for t in list_targets():
            if t.os != "linux":
                continue
            why = cannot_run(t, self.machine, self.cpuinfo)
            if why is None:
                out.append((t, "native", None))
            elif t.emulator and t.emulator[0] in self.commands:
                out.append((t, "--ssh-exec-prefix " + shlex.quote(" ".join(t.emulator)), None))
            else:
                out.append((t, None, why))
        return out


def probe(conn: SshConnection, remote_dir: str, commands: Sequence[str] = ()) -> BoardInfo:
    """Runs the probe script on the board (creating ``remote_dir``)."""
    status, out, err = conn.run(_PROBE, _remote_path(remote_dir), *commands)
    if status != 0:
        raise BoardError(f"{conn.label}: {err.strip() or f'the probe exited with status {status}'}")
    fields: dict[str, str] = {}
    have: set[str] = set()
    head, sep, cpuinfo = out.partition("\ncpuinfo:\n")
    for line in head.splitlines():
        key, _, value = line.partition("=")
        if key == "have":
            have.add(value.strip())
        else:
            fields[key] = value.strip()
    df = fields.get("df", "").split()
    free = int(df[3]) * 1024 if len(df) >= 4 and df[3].isdigit() else None
    now = fields.get("now", "")
    return BoardInfo(
        label=conn.label,
        remote_dir=fields.get("dir") or remote_dir,
        machine=fields.get("machine", "unknown"),
        system=fields.get("system", ""),
        model=fields.get("model", ""),
        cpus=int(fields["cpus"]) if fields.get("cpus", "").isdigit() else 0,
        cpuinfo=cpuinfo if sep else None,
        free_bytes=free,
        clock=float(now) if now.isdigit() else time.time(),
        probed_at=time.monotonic(),
        commands=frozenset(have),
    )


def _remote_path(path: str) -> str:
    """SFTP and exec both start in the login directory: ``~/x`` is ``x`` there."""
    if path in ("~", "~/"):
        return "."
    return path[2:] if path.startswith("~/") else path


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _free_bytes(conn: SshConnection, directory: str) -> int | None:
    status, out, _ = conn.run('df -Pk "$1" | tail -n 1', directory)
    cols = out.split()
    return int(cols[3]) * 1024 if status == 0 and len(cols) >= 4 and cols[3].isdigit() else None


# ------------------------------------------------------------------------------------------------ runners

#: Runs ``"$@"`` (exec prefix + runner) with stdin from a FIFO fed by ``cat`` from the channel; when the
#: channel's stdin ends, the runner is killed (so it never outlives its session); exits with its status.
WRAPPER = r"""
f=$1; shift
for r in "$@"; do :; done
touch -c "$r" 2>/dev/null
rm -f "$f"; mkfifo -m 600 "$f" || exit 125
exec 3<&0 </dev/null
"$@" <"$f" 3<&- & p=$!
{ exec 4>"$f"; rm -f "$f"; cat <&3 >&4; kill -9 $p; } >/dev/null 2>&1 & w=$!
exec 3<&-
wait $p; s=$?
kill $w 2>/dev/null
exit $s
"""

_VERIFY = 'if [ -f "$1" ]; then touch -c "$1"; sha256sum "$1"; fi'

_INSTALL = r"""
got=$(sha256sum "$1" | cut -d ' ' -f 1)
if [ "$got" != "$2" ]; then
  rm -f "$1"; echo "the uploaded file has sha256 $got, not $2" >&2; exit 4
fi
chmod 755 "$1" && mv -f "$1" "$3"
"""


@dataclass(frozen=True)
class RemoteRunner:
    """A runner in a board's cache."""

    path: str  # absolute, <remote_dir>/<sha256>
    sha256: str
    size: int
    uploaded: bool  # False: it was there already
    board: str  # user@host:port


class SshPeer:
    """A runner on a board behind one SSH channel. ``reader``/``writer`` are OS pipes that threads copy from
    and to the channel (so the Session can select() with deadlines); stderr is kept for messages."""

    def __init__(self, chan: paramiko.Channel, label: str, conn: SshConnection) -> None:
        self.chan = chan
        self.label = label
        self._conn = conn
        self._killed = False
        r_out, self._w_out = os.pipe()
        self._r_in, w_in = os.pipe()
        self.reader = os.fdopen(r_out, "rb", buffering=0)
        self.writer = os.fdopen(w_in, "wb", buffering=0)
        self._stderr = StderrTail()
        self._threads = [
            threading.Thread(target=fn, name=f"{fn.__name__} of {label}", daemon=True)
            for fn in (self._down, self._up, self._drain_stderr)
        ]
        for t in self._threads:
            t.start()

    def _down(self) -> None:  # board -> session
        try:
            while data := self.chan.recv(65536):
                view = memoryview(data)
                while view:
                    view = view[os.write(self._w_out, view) :]
        except Exception:  # the channel or the session went away; paramiko raises plain Exceptions too
            pass
        finally:
            os.close(self._w_out)

    def _up(self) -> None:  # session -> board
        try:
            while data := os.read(self._r_in, 65536):
                self.chan.sendall(data)
            self.chan.shutdown_write()  # the session closed its end: the wrapper then stops the runner
        except Exception:
            pass
        finally:
            os.close(self._r_in)

    def _drain_stderr(self) -> None:
        with contextlib.suppress(Exception):
            while chunk := self.chan.recv_stderr(4096):
                self._stderr.append(chunk)

    def stderr_tail(self) -> str:
        return self._stderr.text()

    def running(self) -> bool:
        return not self.chan.closed and not self.chan.exit_status_ready() and self._conn.alive

    def failure(self, wait: float = 2.0) -> str:
        self.chan.status_event.wait(wait)
        self._threads[2].join(timeout=1.0)
        status = self.chan.exit_status
        if status >= 0:
            text = describe_exit(-(status - 128) if 128 < status < 128 + 65 else status)
            if status == 125:
                text += " (the wrapper could not create its FIFO in the remote dir)"
        elif self._killed:
            text = "was stopped"
        elif not self._conn.alive:
            text = f"is unreachable: {self._conn.lost()}"
        elif self.chan.exit_status_ready():
            text = "ended without an exit status (its SSH channel closed)"
        else:
            text = "closed its output but is still running"
        tail = self.stderr_tail()
        return f"{text}; stderr: {tail}" if tail else text

    def kill(self) -> None:
        """Closes the channel: sshd closes the wrapper's stdin, and the wrapper kills the runner."""
        self._killed = True
        with contextlib.suppress(Exception):
            self.chan.close()

    def close(self, wait: float = 5.0) -> None:
        self.chan.status_event.wait(wait)
        with contextlib.suppress(Exception):
            self.chan.close()
        for t in self._threads:
            t.join(timeout=1.0)
        for f in (self.reader, self.writer):
            with contextlib.suppress(OSError):
                f.close()


class SshLauncher(Launcher):
    """Runs runners on a Linux board over SSH (see the module docstring). ``options`` is an
    :class:`SshOptions` or a destination string; keyword arguments set or override its fields."""

    name = "ssh"

    def __init__(self, target: Target | str, options: SshOptions | str | None = None, **fields: Any) -> None:
        t = get_target(target)
        if t.is_bare_metal:
            raise LauncherError(
                f"target {t.name} is bare metal; the ssh launcher runs Linux runners on boards"
            )
        if options is None and "destination" not in fields:
            raise LauncherError(
                "the ssh launcher needs a board: --ssh [USER@]HOST[:PORT] (or an ssh config alias)"
            )
        if isinstance(options, str):
            options = SshOptions(options, **fields)
        elif options is None:
            options = SshOptions(**fields)
        elif fields:
            options = dataclasses.replace(options, **fields)
        self.target = t
        self.options = options
        self._conn: SshConnection | None = None
        self._board: BoardInfo | None = None
        self._verified: set[str] = set()
        self._lock = threading.RLock()
        self._sha_locks: dict[str, threading.Lock] = {}

    @property
    def label(self) -> str:
        return self._conn.label if self._conn is not None else self.options.destination

    def connection(self) -> SshConnection:
        """The live connection (made, or made again after it dropped)."""
        with self._lock:
            if self._conn is None or not self._conn.alive:
                if self._conn is not None:
                    self._conn.close()
                    log.info("%s; connecting again", self._conn.lost())
                self._conn = None
                self._board = None
                self._verified.clear()
                self._conn = SshConnection(self.options)
            return self._conn

    def probe(self) -> BoardInfo:
        """Probes the board now (every target's emulator is looked for, for ``kiln probe``)."""
        commands = {t.emulator[0] for t in list_targets() if t.emulator}
        if self.options.exec_prefix:
            commands.add(self.options.exec_prefix[0])
        board = probe(self.connection(), self.options.remote_dir, sorted(commands))
        with self._lock:
            self._board = board
        return board

    def board(self) -> BoardInfo:
        """The board as first probed on this connection."""
        conn = self.connection()
        with self._lock:
            if self._board is not None and self._conn is conn:
                return self._board
        return self.probe()

    def check(self) -> BoardInfo:
        """Refuses (:class:`BoardError`) if the board cannot run this launcher's target."""
        board = self.board()
        why = board.cannot_run(self.target, self.options.exec_prefix)
        if why is None:
            return board
        if self.options.exec_prefix:
            hint = "install it there (e.g. apt-get install qemu-user) or change --ssh-exec-prefix"
        else:
            hint = f"compile for a target it runs (kiln probe --ssh {self.options.destination} lists them)"
            if "uname" in why and self.target.emulator:
                hint += (
                    ", or run it under an emulator on the board: --ssh-exec-prefix "
                    f"{shlex.quote(' '.join(self.target.emulator))}"
                )
        raise BoardError(f"{board.label} cannot run {self.target.name} packages: {why}; {hint}")

    # ---- uploads

    def deploy(self, runner: bytes | str | os.PathLike[str]) -> RemoteRunner:
        """Puts a runner (bytes, or a file) into the board's cache unless it is there (after checking the
        board can run it); returns where it is."""
        data = runner if isinstance(runner, bytes) else Path(runner).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        board = self.check()
        conn = self.connection()
        path = posixpath.join(board.remote_dir, sha)
        uploaded = False
        with self._lock:
            gate = self._sha_locks.setdefault(sha, threading.Lock())
        with gate:
            if sha in self._verified and not self._still_there(conn, path, len(data)):
                self._verified.discard(sha)  # evicted meanwhile (another launcher shares the remote dir)
            if sha not in self._verified:
                _, out, _ = conn.run(_VERIFY, path)
                if out.split()[:1] != [sha]:
                    self._upload(conn, board, data, sha, path)
                    uploaded = True
                with self._lock:
                    if self._conn is conn:
                        self._verified.add(sha)
        return RemoteRunner(path, sha, len(data), uploaded, conn.label)

    @staticmethod
    def _still_there(conn: SshConnection, path: str, size: int) -> bool:
        """A runner verified on this connection is still in the cache (one SFTP stat, no shell)."""
        try:
            with conn.sftp() as sftp:
                return sftp.stat(path).st_size == size
        except OSError:
            return False

    def _upload(self, conn: SshConnection, board: BoardInfo, data: bytes, sha: str, path: str) -> None:
        import paramiko

        self._make_room(conn, board, len(data), keep=sha)
        tmp = posixpath.join(board.remote_dir, f".tmp-{sha[:16]}-{secrets.token_hex(4)}")
        try:
            with conn.sftp() as sftp:
                sftp.putfo(io.BytesIO(data), tmp, file_size=len(data), confirm=True)
        except (OSError, EOFError, paramiko.SSHException) as e:
            if not conn.alive:
                raise SshError(f"{conn.lost()} while uploading the runner") from e
            with contextlib.suppress(SshError):
                conn.run('rm -f "$1"', tmp)
            free = _free_bytes(conn, board.remote_dir)
            if free is not None and free < len(data) + FREE_MARGIN_BYTES:
                raise self._disk_full(board, free, len(data)) from e
            raise SshError(f"uploading the runner to {conn.label}:{tmp} failed: {e}") from e
        status, _, err = conn.run(_INSTALL, tmp, sha, path)
        if status != 0:
            with contextlib.suppress(SshError):
                conn.run('rm -f "$1"', tmp)
            raise SshError(
                f"installing the runner on {conn.label} failed: {err.strip() or f'status {status}'}"
            )
        log.info("uploaded %s (%d bytes) to %s:%s", self.target.name, len(data), conn.label, path)

    def _disk_full(self, board: BoardInfo, free: int | None, size: int) -> BoardError:
        return BoardError(
            f"no space left on {board.label}: {board.remote_dir} has {_size(free)} free and the runner needs "
            f"{_size(size)} (+{_size(FREE_MARGIN_BYTES)} spare); free space on the board, or point --remote-dir "
            "to a larger filesystem"
        )

    def _make_room(self, conn: SshConnection, board: BoardInfo, size: int, keep: str) -> None:
        """Deletes left-over uploads, then least recently used runners (not used for RECENT_S) until the
        cache fits ``cache_bytes`` and the disk has ``size`` + a margin free."""
        with conn.sftp() as sftp:
            try:
                entries = sftp.listdir_attr(board.remote_dir)
            except OSError as err:
                raise SshError(f"cannot list {board.remote_dir} on {conn.label}: {err}") from err
            now = board.now()
            cached = sorted(
                (e for e in entries if _SHA256.match(e.filename)), key=lambda e: e.st_mtime or 0.0
            )
            stale = [
                e
                for e in entries
                if e.filename.startswith((".tmp-", ".in-")) and now - (e.st_mtime or now) > STALE_UPLOAD_S
            ]
            total = sum(e.st_size or 0 for e in cached)
            free = _free_bytes(conn, board.remote_dir)
            for e in stale:
                with contextlib.suppress(OSError):
                    sftp.remove(posixpath.join(board.remote_dir, e.filename))
                    free = None if free is None else free + (e.st_size or 0)
            for e in cached:
                fits = total + size <= self.options.cache_bytes
                room = free is None or free >= size + FREE_MARGIN_BYTES
                if fits and room:
                    break
                if e.filename == keep or now - (e.st_mtime or now) < RECENT_S:
                    continue
                with contextlib.suppress(OSError):
                    sftp.remove(posixpath.join(board.remote_dir, e.filename))
                    log.info("evicted runner %s from %s", e.filename[:12], conn.label)
                    total -= e.st_size or 0
                    free = None if free is None else free + (e.st_size or 0)
        if free is not None and free < size + FREE_MARGIN_BYTES:
            raise self._disk_full(board, free, size)

    # ---- running

    def start(self, runnable: Path, *, timeout: float | None = 60.0) -> Session:
        runnable = Path(runnable)
        if not runnable.is_file():
            raise LauncherError(f"{runnable} does not exist; extract the package first (Package.extract)")
        path = self.deploy(runnable.read_bytes()).path
        conn = self.connection()
        fifo = posixpath.join(self.board().remote_dir, f".in-{secrets.token_hex(6)}")
        chan = conn.open_channel(_sh(WRAPPER, fifo, *self.options.exec_prefix, path))
        via = f", under {self.options.exec_prefix[0]}" if self.options.exec_prefix else ""
        peer = SshPeer(chan, f"runner of {self.target.name} on {conn.label} (ssh{via})", conn)
        return Session(peer.reader, peer.writer, timeout=timeout, peer=peer)  # type: ignore[arg-type]

    def close(self) -> None:
        """Closes the connection (and so every session on it)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._board = None

    def __enter__(self) -> SshLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SshLauncher({self.target.name}, {self.options.destination!r})"


# ------------------------------------------------------------------------------------------------ the CLI


def add_ssh_args(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """The ``--ssh*`` options (``kiln run|bench|profile|deploy|probe``, ``kiln serve --launcher ssh``)."""
    g = parser.add_argument_group("a Linux board over SSH")
    g.add_argument(
        "--ssh",
        metavar="[USER@]HOST[:PORT]",
        required=required,
        help="run on this board over SSH (an alias of ~/.ssh/config works too)",
    )
    g.add_argument(
        "--ssh-port", type=int, metavar="PORT", help="SSH port (default: the destination's, else 22)"
    )
    g.add_argument(
        "--ssh-identity",
        action="append",
        default=[],
        metavar="KEY",
        help="private key file (repeatable; the ssh-agent and ~/.ssh/id_* are tried too)",
    )
    g.add_argument("--ssh-config", metavar="FILE", help="ssh config file (default ~/.ssh/config)")
    g.add_argument("--no-ssh-agent", action="store_true", help="do not use the ssh-agent's keys")
    g.add_argument("--known-hosts", metavar="FILE", help="known hosts file (default ~/.ssh/known_hosts)")
    g.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust a board seen for the first time and record its key (a changed key is still refused)",
    )
    g.add_argument(
        "--remote-dir",
        default=DEFAULT_REMOTE_DIR,
        metavar="DIR",
        help=f"where runners are cached on the board (default {DEFAULT_REMOTE_DIR})",
    )
    g.add_argument(
        "--remote-cache-mb",
        type=int,
        default=DEFAULT_CACHE_BYTES >> 20,
        metavar="MB",
        help=f"size of that cache (default {DEFAULT_CACHE_BYTES >> 20} MiB; least recently used first out)",
    )
    g.add_argument(
        "--ssh-exec-prefix",
        metavar="CMD",
        help="run the runner under this command on the board, e.g. 'qemu-aarch64 -cpu cortex-a72'",
    )
    g.add_argument(
        "--ssh-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="S",
        help="connect timeout (default 15 s)",
    )


def options_from_args(args: argparse.Namespace) -> SshOptions | None:
    """The :class:`SshOptions` the parsed ``--ssh*`` options give (None without ``--ssh``)."""
    destination = getattr(args, "ssh", None)
    if not destination:
        return None
    try:
        prefix = tuple(shlex.split(args.ssh_exec_prefix or ""))
    except ValueError as e:
        raise SshError(f"--ssh-exec-prefix {args.ssh_exec_prefix!r}: {e}") from e
    return SshOptions(
        destination,
        port=args.ssh_port,
        identity_files=tuple(args.ssh_identity),
        use_agent=not args.no_ssh_agent,
        config_file=args.ssh_config,
        known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key,
        remote_dir=args.remote_dir,
        cache_bytes=args.remote_cache_mb << 20,
        exec_prefix=prefix,
        connect_timeout=args.ssh_timeout,
    )


__all__ = [
    "WRAPPER",
    "BoardError",
    "BoardInfo",
    "HostKeyError",
    "Hop",
    "RemoteRunner",
    "SshConnection",
    "SshError",
    "SshLauncher",
    "SshOptions",
    "SshPeer",
    "add_ssh_args",
    "fingerprint",
    "options_from_args",
    "parse_destination",
    "probe",
    "resolve",
]
