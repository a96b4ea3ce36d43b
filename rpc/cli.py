"""Command-line side of the device farm: ``kiln tracker``, ``kiln serve``, ``kiln devices``, and the remote
options of ``kiln run|bench|profile``.

The top-level CLI (``kiln.cli``) calls :func:`register` to add the three farm commands, and for its own
``run``/``bench``/``profile`` commands calls :func:`add_remote_args` on their parsers and :func:`open_remote`
with the parsed arguments: it returns ``None`` when neither ``--tracker`` nor ``--device`` was given (run
locally), else a :class:`kiln.rpc.client.RemoteModule`, an :class:`~kiln.device.Executable` like a local session.

``python -m kiln.rpc.cli tracker|serve|devices ...`` runs the same commands without the rest of the SDK.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kiln.rpc.auth import AuthError, TLSConfig, load_token, server_security

# The servers, the client and the launchers are imported inside the commands that use them, so that
# `kiln --help` and the local commands do not load the farm's servers and the package layer (~0.1 s).
if TYPE_CHECKING:
    from kiln.rpc.client import RemoteDevice, RemoteModule

# ------------------------------------------------------------------------------------------------ options


def _add_token_args(p: argparse.ArgumentParser, *, server: bool) -> None:
    g = p.add_argument_group("security")
    g.add_argument(
        "--token-file",
        metavar="PATH",
        help="file holding the farm's shared token (default: $KILN_RPC_TOKEN, then $KILN_RPC_TOKEN_FILE)",
    )
    if server:
        g.add_argument(
            "--tokens",
            metavar="TOML",
            help="per-client tokens: a file mapping token sha256s to names, roles and priority caps "
            "(`kiln token NAME` makes an entry); with --token-file as well, that token is an admin one",
        )
        g.add_argument(
            "--insecure", action="store_true", help="accept calls without a token (trusted networks only)"
        )
        g.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (needs --tls-key)")
        g.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
        g.add_argument(
            "--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA bundle"
        )
    else:
        g.add_argument(
            "--tls-cert", metavar="PEM", help="client certificate for mutual TLS (needs --tls-key)"
        )
        g.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    g.add_argument(
        "--tls", action="store_true", help="connect with TLS, checking servers against system roots"
    )
    g.add_argument(
        "--tls-ca", metavar="PEM", help="connect with TLS, checking servers against this CA bundle"
    )
    g.add_argument("--tls-server-name", metavar="NAME", help="name expected in server certificates")


def _client_tls(args: argparse.Namespace, *, own_cert: bool = True) -> TLSConfig | None:
    if not (getattr(args, "tls", False) or getattr(args, "tls_ca", None)):
        return None
    cert = getattr(args, "tls_cert", None) if own_cert else None
    key = getattr(args, "tls_key", None) if own_cert else None
    return TLSConfig(cert=cert, key=key, ca=args.tls_ca, server_name=getattr(args, "tls_server_name", None))


def _server_tls(args: argparse.Namespace) -> TLSConfig | None:
    if not (args.tls_cert or args.tls_key):
        return None
    return TLSConfig(cert=args.tls_cert, key=args.tls_key, ca=args.tls_client_ca)


def _listen_args(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)",
    )
    p.add_argument(
        "--port", type=int, default=port, help=f"port to listen on (default {port}; 0 = any free port)"
    )


# ------------------------------------------------------------------------------------------------ register


def register(subparsers: Any) -> None:
    """Add the ``tracker``, ``serve`` and ``devices`` subcommands to an argparse subparsers object. Each sets
    ``fn`` (called with the parsed namespace, returns an exit code)."""
    p = subparsers.add_parser("tracker", help="run a device-farm tracker", description=_TRACKER_DOC)
    _listen_args(p, 9190)
    p.add_argument("--heartbeat-interval", type=float, default=2.0, metavar="S", help="seconds (default 2)")
    p.add_argument(
        "--liveness", type=float, metavar="S", help="drop devices silent this long (default 3 heartbeats)"
    )
    p.add_argument("--lease-ttl", type=float, default=30.0, metavar="S", help="lease TTL (default 30 s)")
    p.add_argument("--max-waiters", type=int, default=256, help="requests allowed to wait at once")
    p.add_argument(
        "--state",
        metavar="FILE",
        help="keep devices and leases in this SQLite file, so that leases survive a restart (default: memory)",
    )
    _add_token_args(p, server=True)
    p.set_defaults(fn=cmd_tracker)

    p = subparsers.add_parser(
        "token", help="make a per-client token and its tokens-file entry", description=_TOKEN_DOC
    )
    p.add_argument("name", help="the identity: a person, team or CI system (letters, digits, _.@+-)")
    p.add_argument("--role", choices=("client", "admin"), default="client", help="admin: device servers")
    p.add_argument("--max-priority", type=int, default=None, help="highest queue priority it may ask for")
    p.set_defaults(fn=cmd_token)

    p = subparsers.add_parser("serve", help="serve one device to a tracker", description=_SERVE_DOC)
    p.add_argument("--tracker", metavar="HOST:PORT", help="tracker to register with (none: direct use only)")
    p.add_argument("--key", required=True, help="pool name clients request, e.g. qemu-aarch64")
    p.add_argument("--target", required=True, help="kiln target of the device, e.g. aarch64-linux")
    p.add_argument(
        "--launcher",
        default=None,
        help="local | qemu-user | ssh (default: ssh with --ssh, else local if the target runs here, else qemu-user)",
    )
    _listen_args(p, 9191)
    p.add_argument(
        "--advertise", metavar="HOST:PORT", help="address clients should use (default: the listen one)"
    )
    p.add_argument("--cache-dir", help="package cache directory (default: a temporary one)")
    p.add_argument("--cache-mb", type=int, default=1024, help="package cache size (default 1024 MiB)")
    p.add_argument(
        "--max-upload-mb", type=int, default=256, help="largest accepted package (default 256 MiB)"
    )
    p.add_argument("--max-runners", type=int, default=4, help="runner processes kept alive (default 4)")
    p.add_argument("--call-timeout", type=float, default=120.0, metavar="S", help="default per-call timeout")
    p.add_argument(
        "--cores",
        type=int,
        metavar="N",
        help="the most threads a session may ask for (kiln run/bench/profile --threads; default: the CPUs this "
        "server may use for local and qemu-user runners, 1 for bare metal)",
    )
    _add_token_args(p, server=True)
    from kiln.device.ssh import add_ssh_args  # the board of --launcher ssh

    add_ssh_args(p)
    p.set_defaults(fn=cmd_serve)

    p = subparsers.add_parser("devices", help="list the devices of a tracker")
    p.add_argument("--tracker", required=True, metavar="HOST:PORT")
    p.add_argument("--stats", action="store_true", help="also print per-key statistics")
    _add_token_args(p, server=False)
    p.set_defaults(fn=cmd_devices)


_TRACKER_DOC = """Run a tracker that pools device servers and leases them to clients by key. Protocol rules
(heartbeats, liveness, lease TTL, queue policy): see kiln.rpc.tracker."""
_TOKEN_DOC = """Print a new random token (give it to the client, e.g. in a file for --token-file) and the entry
to append to the farm's tokens file (--tokens on the tracker and the device servers). The file holds only the
token's sha256, so it may be copied to every server."""
_SERVE_DOC = """Serve one device (this machine, or an emulator on it) over gRPC; register it with a tracker.
The server runs only the runners of uploaded packages that pass verification."""


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    while not stop.wait(1.0):
        pass


def cmd_tracker(args: argparse.Namespace) -> int:
    from kiln.rpc.servers import TrackerServer
    from kiln.rpc.state import SqliteTrackerState
    from kiln.rpc.tracker import Tracker

    try:
        security = server_security(
            token_file=args.token_file, tokens_file=args.tokens, insecure=args.insecure, tls=_server_tls(args)
        )
        tracker = Tracker(
            SqliteTrackerState(args.state) if args.state else None,
            heartbeat_interval=args.heartbeat_interval,
            liveness=args.liveness,
            lease_ttl=args.lease_ttl,
            max_waiters=args.max_waiters,
        )
        srv = TrackerServer(tracker, security, host=args.host, port=args.port).start()
    except (AuthError, OSError, ValueError) as e:
        print(f"kiln tracker: {e}", file=sys.stderr)
        return 2
    print(f"kiln tracker listening on {srv.address}", flush=True)
    try:
        _wait_for_signal()
    finally:
        srv.stop()
    return 0


def make_launcher(name: str | None, target: str, ssh: Any = None) -> Any:
    """The launcher named ``name`` for ``target`` (``None``: the target's default); ``ssh``, the board's
    :class:`kiln.device.ssh.SshOptions`, makes it ``ssh``, checked against the board now."""
    from kiln.device import launchers

    if ssh is not None:
        if name not in (None, "ssh"):
            raise ValueError(f"--ssh runs the device on a board: use --launcher ssh, not {name}")
        from kiln.device.ssh import SshLauncher

        board = SshLauncher(target, ssh)
        board.check()  # refuse to serve a board that cannot run the target (before the first client)
        return board
    if name is None:
        return launchers.launcher_for(target)
    return launchers.make_launcher(name, target)


def cmd_serve(args: argparse.Namespace) -> int:
    from kiln.device.ssh import options_from_args

    try:
        security = server_security(
            token_file=args.token_file, tokens_file=args.tokens, insecure=args.insecure, tls=_server_tls(args)
        )
        launcher = make_launcher(args.launcher, args.target, options_from_args(args))
    except (AuthError, ValueError, LookupError) as e:
        print(f"kiln serve: {e}", file=sys.stderr)
        return 2
    if args.tracker and security.token is None and not security.insecure:
        print(
            "kiln serve: registering with a tracker needs the farm's admin token (--token-file or "
            "$KILN_RPC_TOKEN); a tokens file only lists the tokens clients present",
            file=sys.stderr,
        )
        return 2
    try:
        srv = _start_device_server(args, launcher, security)
    except (AuthError, OSError, ValueError) as e:
        print(f"kiln serve: {e}", file=sys.stderr)
        return 2
    print(
        f"kiln device server {args.key!r} ({args.target}, {srv.caps.launcher}) listening on {srv.address}",
        flush=True,
    )
    try:
        _wait_for_signal()
    finally:
        srv.stop()
    return 0


def _start_device_server(args: argparse.Namespace, launcher: Any, security: Any) -> Any:
    from kiln.rpc.servers import DeviceServer

    return DeviceServer(
        key=args.key,
        target=args.target,
        launcher=launcher,
        security=security,
        host=args.host,
        port=args.port,
        advertise=args.advertise,
        cache_dir=args.cache_dir,
        cache_bytes=args.cache_mb << 20,
        max_upload_bytes=args.max_upload_mb << 20,
        max_runners=args.max_runners,
        call_timeout=args.call_timeout,
        cores=args.cores,
        tracker=args.tracker,
        tracker_token=security.token,
        tracker_tls=_client_tls(args),
    ).start()


def cmd_token(args: argparse.Namespace) -> int:
    from kiln.rpc.auth import MAX_PRIORITY, new_token, token_digest

    tok = new_token()
    cap = (
        args.max_priority if args.max_priority is not None else (MAX_PRIORITY if args.role == "admin" else 0)
    )
    print(f"# token for {args.name} (give it to them; it is shown only once):", file=sys.stderr)
    print(tok, file=sys.stderr)
    print(f"[tokens.{args.name}]")
    print(f'sha256 = "{token_digest(tok)}"')
    print(f'role = "{args.role}"')
    print(f"max_priority = {cap}")
    return 0


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_devices(args: argparse.Namespace) -> int:
    from kiln.rpc.client import RemoteError, connect

    try:
        with connect(args.tracker, token=load_token(None, args.token_file), tls=_client_tls(args)) as tr:
            devs = tr.devices()
            queues = tr.queues()
            stats = tr.stats() if args.stats else None
    except (RemoteError, AuthError) as e:
        print(f"kiln devices: {e}", file=sys.stderr)
        return 1
    rows = [
        (
            d.key,
            d.target,
            d.launcher,
            d.cores or "-",
            d.state,
            d.lease_holder or "-",
            d.queue,
            d.address,
            d.runs_served,
        )
        for d in devs
    ]
    header = ("key", "target", "launcher", "cores", "state", "lease holder", "queue", "address", "runs")
    print(format_table(rows, header))
    waiting_only = sorted(k for k in queues if k not in {d.key for d in devs})
    for k in waiting_only:
        print(f"(no device registered for key {k!r}; {queues[k]} waiting)")
    if stats is not None:
        print()
        srows = [
            (
                k.key,
                k.devices,
                k.free,
                k.queue_length,
                k.leases_granted,
                k.leases_expired,
                k.requests_timed_out,
                f"{k.lease_seconds_total / max(1, k.leases_released + k.leases_expired):.2f}",
                f"{k.lease_seconds_max:.2f}",
                k.runs_served,
            )
            for k in stats.keys
        ]
        print(
            format_table(
                srows,
                (
                    "key",
                    "devices",
                    "free",
                    "queue",
                    "leases",
                    "expired",
                    "timeouts",
                    "mean s",
                    "max s",
                    "runs",
                ),
            )
        )
        print(f"uptime {stats.uptime_s:.0f} s, devices dropped {stats.devices_dropped}")
    return 0


# ----------------------------------------------------------------------------------------- run/bench/profile


def add_remote_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--tracker/--key/--device`` and the security options to a run/bench/profile parser."""
    g = parser.add_argument_group("remote device (instead of running locally)")
    g.add_argument("--tracker", metavar="HOST:PORT", help="lease a device from this tracker (needs --key)")
    g.add_argument("--key", help="device key to lease, e.g. qemu-aarch64")
    g.add_argument("--device", metavar="HOST:PORT", help="use this device server directly, without a tracker")
    g.add_argument("--priority", type=int, default=0, help="queue priority (higher first; default 0)")
    g.add_argument(
        "--queue-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="how long to wait for a device (default 300)",
    )
    _add_token_args(parser, server=False)


def open_remote(args: argparse.Namespace, package: Any) -> RemoteModule | None:
    """Connect as ``args`` say, lease a device if through a tracker, upload and load ``package``.

    Returns ``None`` when neither ``--tracker`` nor ``--device`` was given; closing the module releases the
    lease and the connections. Raises ``ValueError`` for inconsistent options and
    :class:`kiln.rpc.client.RemoteError` when the farm refuses or fails."""
    from kiln.rpc.client import TrackerClient, connect_device

    tracker: str | None = getattr(args, "tracker", None)
    device: str | None = getattr(args, "device", None)
    if not tracker and not device:
        return None
    if tracker and device:
        raise ValueError("give either --tracker (with --key) or --device, not both")
    if tracker and not args.key:
        raise ValueError("--tracker needs --key: the device pool to lease from (see `kiln devices`)")
    token = load_token(None, getattr(args, "token_file", None))
    tls = _client_tls(args)
    with contextlib.ExitStack() as stack:
        dev: RemoteDevice
        if device:
            dev = stack.enter_context(connect_device(device, token=token, tls=tls))
        else:
            assert tracker is not None
            tr = stack.enter_context(TrackerClient(tracker, token=token, tls=tls))  # the lease renews here

            def progress(status: Any) -> None:
                print(f"kiln: {status}", file=sys.stderr, flush=True)

            dev = stack.enter_context(
                tr.request(args.key, timeout=args.queue_timeout, priority=args.priority, progress=progress)
            )
        module = dev.load(package, threads=getattr(args, "threads", None))
        module.add_cleanup(stack.pop_all().close)
        return module
    raise AssertionError("unreachable")  # the with block returns or raises


# --------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """``python -m kiln.rpc.cli`` entry point with just the farm commands."""
    parser = argparse.ArgumentParser(prog="kiln", description="kiln device farm")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
