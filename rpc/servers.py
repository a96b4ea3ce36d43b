"""The tracker server and the device server: gRPC wiring around the plain classes, and nothing else.

Each server builds a ``grpc.server`` with a thread pool, the security interceptors and credentials of
:mod:`kiln.rpc.auth`, and the message size limits of :mod:`kiln.rpc.common`; registers a thin servicer
(:mod:`kiln.rpc.servicers`) over its logic; and owns the background threads and the start / stop order.

- :class:`TrackerServer`: a :class:`~kiln.rpc.tracker.Tracker`, plus a sweeper thread that applies the
  liveness rule and lease TTLs every half heartbeat interval. Its pool has a thread per allowed waiter plus a
  reserve, so waiting clients never starve heartbeats and releases.
- :class:`DeviceServer`: a :class:`~kiln.rpc.cache.PackageCache` and a
  :class:`~kiln.rpc.device_service.DeviceService` for one device, plus a
  :class:`~kiln.rpc.agent.TrackerAgent` when it is given a tracker address (which turns lease enforcement
  on: the agent checks each call's lease with the tracker). It reports
  :func:`~kiln.rpc.device_service.runtime_fingerprint` as its runtime. Its files live in one state directory:
  ``packages/`` (the cache) and ``work/`` (runner directories and records). With ``--cache-dir D`` that is
  ``D``; otherwise ``$TMPDIR/kiln-serve-<pid>``, and a server starting this way first removes the directories
  of servers that died without cleaning up, killing the runners they left. Of its worker threads,
  :data:`RESERVED_WORKERS` are kept for the quick calls (Health, Info, HasPackage): long calls beyond the rest
  are refused with ``RESOURCE_EXHAUSTED`` instead of starving them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from kiln.device import Launcher
from kiln.device.launchers import Isolation
from kiln.rpc import device_pb2_grpc, tracker_pb2_grpc
from kiln.rpc.agent import TrackerAgent
from kiln.rpc.auth import ServerSecurity, TLSConfig
from kiln.rpc.cache import CACHE_BYTES, MAX_UPLOAD_BYTES, PackageCache
from kiln.rpc.common import (
    MAX_DEVICE_MESSAGE_BYTES,
    MAX_TRACKER_REPLY_BYTES,
    MAX_TRACKER_REQUEST_BYTES,
    Capabilities,
)
from kiln.rpc.device_service import (
    CALL_TIMEOUT_S,
    MAX_RUNNERS,
    MAX_UPLOADS,
    RUNNER_UID_BASE,
    DeviceService,
    bare_metal_target,
    device_cores,
    runtime_fingerprint,
)
from kiln.rpc.servicers import DeviceServicer, TrackerServicer
from kiln.rpc.tracker import Tracker
from kiln.runtime_c import abi

log = logging.getLogger("kiln.rpc.servers")

RESERVED_WORKERS = 4
STATE_PREFIX = "kiln-serve-"


def _reap_stale_state_dirs(base: Path) -> None:
    """Remove ``kiln-serve-<pid>`` directories of device servers that are no longer running (killed before
    they could clean up), killing the runners they recorded."""
    for d in base.glob(f"{STATE_PREFIX}*"):
        pid = d.name[len(STATE_PREFIX) :]
        if not pid.isdigit() or not d.is_dir() or d.stat().st_uid != os.geteuid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        work = d / "work"
        if work.is_dir():
            for rec in work.glob("*.pid"):
                with contextlib.suppress(OSError, ValueError):
                    rpid, start = rec.read_text().split()
                    stat = Path(f"/proc/{rpid}/stat").read_text()
                    if stat.rpartition(")")[2].split()[19] == start:
                        os.kill(int(rpid), signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)
        log.warning("removed %s, left by a device server that died", d)


_DEFAULT_ISOLATION: Any = object()

# ------------------------------------------------------------------------------------------------- tracker


class TrackerServer:
    """A gRPC server around a :class:`Tracker`, with a background sweeper.

    >>> srv = TrackerServer(Tracker(), server_security(insecure=True)).start()  # doctest: +SKIP
    >>> srv.address  # '127.0.0.1:41234'
    """

    def __init__(
        self,
        tracker: Tracker,
        security: ServerSecurity,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.tracker = tracker
        self.host = host
        # Waiting requests hold a thread each; the reserve keeps heartbeats and releases flowing.
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=tracker.max_waiters + 16, thread_name_prefix="tracker"),
            interceptors=security.interceptors(),
            options=[
                ("grpc.max_receive_message_length", MAX_TRACKER_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_TRACKER_REPLY_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        tracker_pb2_grpc.add_TrackerServicer_to_server(TrackerServicer(tracker, security), self._server)
        self.port = security.add_port(self._server, host, port)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="tracker-sweep", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TrackerServer:
        self._server.start()
        self._sweeper.start()
        log.info("tracker listening on %s", self.address)
        return self

    def _sweep_loop(self) -> None:
        """Apply the liveness rule and lease TTLs every H/2 (see :mod:`kiln.rpc.tracker`)."""
        period = max(0.01, self.tracker.heartbeat_interval / 2)
        while not self._stop.wait(period):
            try:
                self.tracker.sweep()
            except Exception:  # pragma: no cover - never let the sweeper die
                log.exception("tracker sweep failed")

    def stop(self, grace: float | None = 0.5) -> None:
        self._stop.set()
        self._server.stop(grace).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> TrackerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -------------------------------------------------------------------------------------------------- device


class DeviceServer:
    """A gRPC Device server for one device, optionally registered with a tracker. ``cores`` is the most
    threads a session may ask for (default: :func:`~kiln.rpc.device_service.device_cores`)."""

    def __init__(
        self,
        *,
        key: str,
        target: str,
        launcher: Launcher,
        security: ServerSecurity,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_bytes: int = CACHE_BYTES,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_runners: int = MAX_RUNNERS,
        call_timeout: float = CALL_TIMEOUT_S,
        tracker: str | None = None,
        tracker_token: str | None = None,
        tracker_tls: TLSConfig | None = None,
        retry_interval: float = 1.0,
        max_workers: int = 16,
        isolation: Isolation | None = _DEFAULT_ISOLATION,
        runner_uid_base: int | None = RUNNER_UID_BASE,
        max_uploads: int = MAX_UPLOADS,
        cores: int | None = None,
    ) -> None:
        self.host = host
        is_bare_metal = bare_metal_target(target)
        if cores is None:
            cores = device_cores(launcher, is_bare_metal)
        elif isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= abi.THREADS_MAX:
            raise ValueError(f"cores must be a whole number from 1 to {abi.THREADS_MAX}, not {cores!r}")
        elif is_bare_metal and cores != 1:
            raise ValueError(f"target {target} is bare metal: its firmware runs on one core, not {cores}")
        self._own_cache = cache_dir is None
        if cache_dir is None:
            base = Path(tempfile.gettempdir())
            _reap_stale_state_dirs(base)
            state = base / f"{STATE_PREFIX}{os.getpid()}"
            if state.exists():  # a previous server of this process (tests start several)
                state = Path(tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{os.getpid()}-", dir=base))
            state.mkdir(mode=0o711, exist_ok=True)
        else:
            state = Path(cache_dir)
            state.mkdir(parents=True, exist_ok=True)
        self.state_dir = state
        self.cache = PackageCache(
            state / "packages" if cache_dir is None else state, cache_bytes, max_upload_bytes
        )
        if isolation is _DEFAULT_ISOLATION:
            isolation = Isolation()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="device"),
            interceptors=security.interceptors(),
            options=[
                ("grpc.max_receive_message_length", MAX_DEVICE_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_DEVICE_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.port = security.add_port(self._server, host, port)
        launcher_name = getattr(launcher, "name", type(launcher).__name__)
        self.caps = Capabilities(
            key=key,
            target=target,
            launcher=str(launcher_name),
            runtime_version=runtime_fingerprint(),
            address=advertise or f"{host}:{self.port}",
            cores=cores,
        )
        self.agent = (
            TrackerAgent(
                tracker,
                self.caps,
                token=tracker_token,
                tls=tracker_tls,
                runs_served=lambda: self.service.runs_served,
                retry_interval=retry_interval,
                on_lease=lambda lease_id, asked: self.service.tracker_lease(lease_id, asked),
                on_forgot=lambda: self.service.tracker_forgot(),
            )
            if tracker
            else None
        )
        self.service = DeviceService(
            self.caps,
            launcher,
            self.cache,
            workroot=state / "work",
            max_runners=max_runners,
            call_timeout=call_timeout,
            isolation=isolation,
            runner_uid_base=runner_uid_base,
            verify_lease=self.agent.verify_lease if self.agent else None,
            max_uploads=max_uploads,
            max_calls=max(1, max_workers - RESERVED_WORKERS),
        )
        device_pb2_grpc.add_DeviceServicer_to_server(DeviceServicer(self.service, security), self._server)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> DeviceServer:
        self._server.start()
        if self.agent:
            self.agent.start()
        log.info(
            "device server %s (%s, %s) listening on %s",
            self.caps.key,
            self.caps.target,
            self.caps.launcher,
            self.address,
        )
        return self

    def stop(self, grace: float | None = 0.5) -> None:
        if self.agent:
            self.agent.stop()
        self._server.stop(grace).wait()
        self.service.close()
        if self._own_cache:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> DeviceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
