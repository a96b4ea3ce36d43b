"""The tracker server and the device server: gRPC wiring around the plain classes, and nothing else.

Each server builds a ``grpc.server`` with a thread pool, the security interceptors and credentials of
:mod:`kiln.rpc.auth`, and the message size limits of :mod:`kiln.rpc.common`; registers a thin servicer
(:mod:`kiln.rpc.servicers`) over its logic; and owns the background threads and the start / stop order.

- :class:`TrackerServer`: a :class:`~kiln.rpc.tracker.Tracker`, plus a sweeper thread that applies the
  liveness rule and lease TTLs every half heartbeat interval. Its pool has a thread per allowed waiter plus a
  reserve, so waiting clients never starve heartbeats and releases.
- :class:`DeviceServer`: a :class:`~kiln.rpc.cache.PackageCache` and a
  :class:`~kiln.rpc.device_service.DeviceService` for one device, plus a
  :class:`~kiln.rpc.agent.TrackerAgent` when it is given a tracker address. It reports
  :func:`~kiln.rpc.device_service.runtime_fingerprint` as its runtime.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc

from kiln.device import Launcher
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
from kiln.rpc.device_service import CALL_TIMEOUT_S, MAX_RUNNERS, DeviceService, runtime_fingerprint
from kiln.rpc.servicers import DeviceServicer, TrackerServicer
from kiln.rpc.tracker import Tracker

log = logging.getLogger("kiln.rpc.servers")


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
        tracker_pb2_grpc.add_TrackerServicer_to_server(TrackerServicer(tracker), self._server)
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
    """A gRPC Device server for one device, optionally registered with a tracker."""

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
    ) -> None:
        self.host = host
        self._own_cache = cache_dir is None
        root = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="kiln-cache-"))
        self.cache = PackageCache(root, cache_bytes, max_upload_bytes)
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
        )
        self.service = DeviceService(
            self.caps, launcher, self.cache, max_runners=max_runners, call_timeout=call_timeout
        )
        device_pb2_grpc.add_DeviceServicer_to_server(DeviceServicer(self.service), self._server)
        self.agent = (
            TrackerAgent(
                tracker,
                self.caps,
                token=tracker_token,
                tls=tracker_tls,
                runs_served=lambda: self.service.runs_served,
                retry_interval=retry_interval,
            )
            if tracker
            else None
        )

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
            shutil.rmtree(self.cache.root, ignore_errors=True)

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> DeviceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
