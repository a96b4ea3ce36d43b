"""The device server's side of the tracker protocol: register, heartbeat, register again.

Protocol rules
==============

With a tracker address, the device server registers its capabilities and then heartbeats at the interval
the tracker's ``Register`` reply asks for, reporting how many calls it has served. A heartbeat answered
``NOT_FOUND`` (the tracker restarted, or dropped the device for silence) makes it register again at once;
while the tracker is unreachable it retries every ``retry_interval``, and gRPC reconnects at about that pace
too instead of its default backoff of up to two minutes. A rejected token (``UNAUTHENTICATED``) is logged and
retried like an outage. On stop the agent unregisters, so the device leaves the pool without waiting for the
liveness window. The tracker's half of these rules is in :mod:`kiln.rpc.tracker`.

The agent is also the device server's line to the tracker for leases: :meth:`TrackerAgent.verify_lease` asks
``VerifyLease`` for a call's lease; each heartbeat reply names the device's current lease
(``on_lease(lease_id, asked_at)``); a ``NOT_FOUND`` heartbeat calls ``on_forgot()`` before registering again
(the leases the tracker granted before are gone). Registering, heartbeats and lease checks need the admin
role, so the agent presents the farm's admin token.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import grpc

from kiln.rpc import tracker_pb2, tracker_pb2_grpc
from kiln.rpc.auth import TLSConfig, open_channel
from kiln.rpc.common import Capabilities
from kiln.rpc.device_service import NotLeased, TrackerUnreachable

log = logging.getLogger("kiln.rpc.agent")


class TrackerAgent:
    """Keeps a device registered with a tracker: register, heartbeat, register again on NOT_FOUND or after
    the tracker comes back (see the module docstring)."""

    def __init__(
        self,
        tracker_address: str,
        caps: Capabilities,
        *,
        token: str | None = None,
        tls: TLSConfig | None = None,
        runs_served: Callable[[], int] = lambda: 0,
        retry_interval: float = 1.0,
        on_lease: Callable[[str, float], None] | None = None,
        on_forgot: Callable[[], None] | None = None,
    ) -> None:
        self.tracker_address = tracker_address
        self.caps = caps
        self.runs_served = runs_served
        self.retry_interval = retry_interval
        self.on_lease = on_lease
        self.on_forgot = on_forgot
        self.device_id: str | None = None
        self.registrations = 0
        self.registered = threading.Event()
        # Reconnect quickly after a tracker restart instead of gRPC's default backoff of up to two minutes.
        backoff_ms = max(100, int(retry_interval * 1000))
        self._channel = open_channel(
            tracker_address,
            token=token,
            tls=tls,
            options=[
                ("grpc.initial_reconnect_backoff_ms", backoff_ms),
                ("grpc.min_reconnect_backoff_ms", backoff_ms),
                ("grpc.max_reconnect_backoff_ms", max(backoff_ms, 2000)),
            ],
        )
        self._stub = tracker_pb2_grpc.TrackerStub(self._channel)
        self._outage = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"agent-{caps.key}", daemon=True)

    def start(self) -> TrackerAgent:
        self._thread.start()
        return self

    def _loop(self) -> None:
        interval = self.retry_interval
        while not self._stop.is_set():
            try:
                if self.device_id is None:
                    reply = self._stub.Register(
                        tracker_pb2.RegisterRequest(caps=self.caps.to_proto()), timeout=max(1.0, interval)
                    )
                    if self.on_forgot is not None and self.registrations:
                        self.on_forgot()
                    self.device_id = reply.device_id
                    self.registrations += 1
                    interval = reply.heartbeat_interval_ms / 1000.0
                    self.registered.set()
                    self._outage = False
                    log.info("registered with tracker %s as %s", self.tracker_address, self.device_id)
                else:
                    asked = time.monotonic()
                    hb = self._stub.Heartbeat(
                        tracker_pb2.HeartbeatRequest(
                            device_id=self.device_id, runs_served=self.runs_served()
                        ),
                        timeout=max(1.0, interval),
                    )
                    self._outage = False
                    if self.on_lease is not None:
                        self.on_lease(hb.lease_id, asked)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.NOT_FOUND:
                    log.warning(
                        "tracker %s forgot device %s; registering again", self.tracker_address, self.device_id
                    )
                    self.device_id = None
                    self.registered.clear()
                    if self.on_forgot is not None:
                        self.on_forgot()
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("tracker %s rejected this device: %s", self.tracker_address, e.details())
                elif not self._outage:
                    log.warning(
                        "tracker %s unreachable (%s); retrying every %.1f s",
                        self.tracker_address,
                        code.name if code else e,
                        self.retry_interval,
                    )
                self._outage = True
                if self.device_id is None:
                    self._stop.wait(self.retry_interval)
                    continue
            self._stop.wait(interval if self.device_id else self.retry_interval)

    def verify_lease(self, lease_id: str) -> tuple[str, float]:
        """Ask the tracker whether ``lease_id`` is a live lease of this device: (owner, seconds it is valid at
        least). :class:`NotLeased` if not; :class:`TrackerUnreachable` if the tracker cannot say."""
        device_id = self.device_id
        if device_id is None:
            raise TrackerUnreachable(
                f"this device is not registered with tracker {self.tracker_address} right now; retry shortly"
            )
        try:
            g = self._stub.VerifyLease(
                tracker_pb2.VerifyLeaseRequest(device_id=device_id, lease_id=lease_id), timeout=5.0
            )
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotLeased(
                    "the call's lease is not a live lease of this device (expired, released, or another "
                    "device's); request the device from the tracker again"
                ) from None
            raise TrackerUnreachable(
                f"cannot check the call's lease with tracker {self.tracker_address}: "
                f"{code.name if code else e}"
            ) from None
        return g.owner, g.expires_in_ms / 1000.0

    def stop(self, unregister: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if unregister and self.device_id:
            with contextlib.suppress(grpc.RpcError):
                self._stub.Unregister(tracker_pb2.DeviceRef(device_id=self.device_id), timeout=1.0)
        self._channel.close()
