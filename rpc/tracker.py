"""The tracker: a registry of device servers and a fair, leased queue per device key.

Protocol rules
==============

Registration
    A device server calls ``Register`` with its capabilities: key (the pool clients ask for), target,
    launcher, runtime version and the ``host:port`` it serves on (an empty or wildcard host is replaced by the
    peer address the tracker sees). The reply carries the device id, the heartbeat interval H and the liveness
    window L. Registering an address that is already registered replaces the old record (a restarted device
    server) and revokes the old record's lease.

Heartbeats and liveness
    A device server sends ``Heartbeat`` at least every H (default 2 s). A device whose last Register or
    Heartbeat is older than L (default 3·H) is dropped: it leaves the pool, its lease is revoked, and its next
    heartbeat answers ``NOT_FOUND``. ``NOT_FOUND`` means "register again": the tracker keeps no state on disk,
    so after a tracker restart every device server re-registers on its next heartbeat without human action
    (the device side of this is :mod:`kiln.rpc.agent`). :meth:`Tracker.sweep` applies the rule; the tracker
    server runs it every H/2 (:class:`kiln.rpc.servers.TrackerServer`), so a silent device is gone between L
    and L + H/2 after it was last heard.

Leases
    ``RequestDevice(key, priority, timeout)`` blocks until a free device with that key is leased to the caller
    (the reply names the device's address) or the timeout passes (``DEADLINE_EXCEEDED``; the request leaves
    the queue). A lease lives for the TTL T (default 30 s) unless the client renews it with ``RenewLease``
    (the client library renews every T/3). A lease that is not renewed within T expires; ``ReleaseLease``
    ends it at once; a lease whose device is dropped is revoked. In every case the device goes back to the
    pool and straight to the next waiter. ``RenewLease`` of an ended lease answers ``NOT_FOUND``.
    Invariant: a device has at most one lease and a lease names exactly one device.

Queue and priority policy
    One queue per key. A free device goes to the waiter with the highest priority; among equal priorities to
    the one that asked first (FIFO). Among several free devices of a key, the one free the longest is leased,
    so load spreads over the pool. A waiter whose RPC ends (client cancelled or disconnected) leaves the queue
    at once; a lease granted in the same instant to a caller that has gone is released. A request for a key
    that no device has registered waits like any other (the device may come later); its timeout error names
    the registered keys. At most ``max_waiters`` requests wait at once; more are refused with
    ``RESOURCE_EXHAUSTED``, so waiting clients can never starve heartbeats of server threads.

Field bounds
    String fields (key, target, launcher, runtime version, address, client name) are limited to
    :data:`MAX_FIELD_CHARS` characters, and the key must not be empty (``INVALID_ARGUMENT`` otherwise). The
    bounds of whole messages are in :mod:`kiln.rpc.common`.

Security
    Every RPC needs the shared token unless the tracker runs with ``--insecure`` (see :mod:`kiln.rpc.auth`).

This module is the logic only: the plain, thread-safe class :class:`Tracker`, whose data sits behind
:class:`kiln.rpc.state.TrackerState`. It raises :class:`TrackerError` subclasses; the gRPC servicer
(:class:`kiln.rpc.servicers.TrackerServicer`) translates messages and maps those errors to the status codes
named above.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kiln.rpc.common import Capabilities
from kiln.rpc.state import DeviceRecord, LeaseRecord, MemoryTrackerState, TrackerState, Waiter

log = logging.getLogger("kiln.rpc.tracker")

HEARTBEAT_INTERVAL_S = 2.0
LIVENESS_FACTOR = 3.0
LEASE_TTL_S = 30.0
MAX_WAIT_S = 3600.0
MAX_WAITERS = 256
MAX_FIELD_CHARS = 256


# ------------------------------------------------------------------------------------------------ errors


class TrackerError(Exception):
    """A request the tracker cannot satisfy; each subclass stands for one gRPC status code."""


class NotFound(TrackerError):
    """Unknown device or lease (dropped, expired or never registered): ``NOT_FOUND``."""


class QueueTimeout(TrackerError):
    """No device of the key became free within the request timeout: ``DEADLINE_EXCEEDED``."""


class QueueFull(TrackerError):
    """Too many requests are waiting already: ``RESOURCE_EXHAUSTED``."""


class InvalidRequest(TrackerError):
    """A malformed request (empty key, oversized field): ``INVALID_ARGUMENT``."""


# --------------------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class DeviceView:
    """A device as ``kiln devices`` shows it."""

    device_id: str
    caps: Capabilities
    state: str
    lease_holder: str
    lease_id: str
    last_seen_s: float
    runs_served: int


@dataclass(frozen=True)
class KeyStatsView:
    """The pool and counters of one key (the fields of the ``KeyStats`` message)."""

    key: str
    devices: int
    free: int
    queue_length: int
    leases_granted: int
    leases_released: int
    leases_expired: int
    requests_timed_out: int
    lease_seconds_total: float
    lease_seconds_max: float
    wait_seconds_total: float
    runs_served: int


@dataclass(frozen=True)
class StatsView:
    """Statistics of the whole tracker (the fields of the ``Stats`` message)."""

    keys: list[KeyStatsView]
    uptime_s: float
    devices_dropped: int


# --------------------------------------------------------------------------------------------------- logic


@dataclass
class _Pending:
    waiter: Waiter
    event: threading.Event = field(default_factory=threading.Event)
    lease: LeaseRecord | None = None
    cancelled: bool = False


def _check_field(name: str, value: str, *, required: bool = False) -> None:
    if required and not value:
        raise InvalidRequest(f"{name} must not be empty")
    if len(value) > MAX_FIELD_CHARS:
        raise InvalidRequest(f"{name} is longer than {MAX_FIELD_CHARS} characters")


class Tracker:
    """The tracker's logic (see the module docstring for the rules). Thread-safe; ``clock`` is injectable so
    that the TTL and liveness rules can be tested without sleeping (call :meth:`sweep` to apply them)."""

    def __init__(
        self,
        state: TrackerState | None = None,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        liveness: float | None = None,
        lease_ttl: float = LEASE_TTL_S,
        max_wait: float = MAX_WAIT_S,
        max_waiters: int = MAX_WAITERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state if state is not None else MemoryTrackerState()
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness if liveness is not None else LIVENESS_FACTOR * heartbeat_interval
        self.lease_ttl = lease_ttl
        self.max_wait = max_wait
        self.max_waiters = max_waiters
        self.clock = clock
        self.started_at = clock()
        self.devices_dropped = 0
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._tickets = itertools.count(1)

    # ---- device servers

    def register(self, caps: Capabilities, peer_host: str = "") -> DeviceRecord:
        _check_field("key", caps.key, required=True)
        for name in ("target", "launcher", "runtime_version", "address"):
            _check_field(name, getattr(caps, name))
        host, sep, port = caps.address.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidRequest(f"device address {caps.address!r} is not host:port")
        if host in ("", "0.0.0.0", "[::]", "::") and peer_host:
            caps = replace(caps, address=f"{peer_host}:{port}")
        now = self.clock()
        rec = DeviceRecord(secrets.token_hex(6), caps, now, now, now)
        with self._lock:
            old = self.state.device_at(caps.address)
            if old is not None:
                log.info(
                    "device %s at %s re-registered; replacing %s", rec.device_id, caps.address, old.device_id
                )
                self._drop_locked(old, dropped=False)
            self.state.put_device(rec)
            self.state.key_stats(caps.key)
            self._dispatch_locked(caps.key, now)
        log.info(
            "registered device %s key=%s target=%s at %s", rec.device_id, caps.key, caps.target, caps.address
        )
        return rec

    def heartbeat(self, device_id: str, runs_served: int = 0) -> None:
        with self._lock:
            rec = self.state.get_device(device_id)
            if rec is None:
                raise NotFound(f"device {device_id} is not registered (tracker restarted or device dropped)")
            now = self.clock()
            rec.last_seen = now
            if runs_served > rec.runs_served:
                self.state.key_stats(rec.caps.key).runs_served += runs_served - rec.runs_served
                rec.runs_served = runs_served
            self.state.put_device(rec)

    def unregister(self, device_id: str) -> None:
        with self._lock:
            rec = self.state.get_device(device_id)
            if rec is None:
                raise NotFound(f"device {device_id} is not registered")
            self._drop_locked(rec, dropped=False)

    # ---- clients

    def enqueue(self, key: str, priority: int = 0, client: str = "") -> int:
        """Queue a request; returns its ticket for :meth:`wait` (which may find it granted already)."""
        _check_field("key", key, required=True)
        _check_field("client", client)
        with self._lock:
            if len(self._pending) >= self.max_waiters:
                raise QueueFull(f"{len(self._pending)} requests are already waiting; try again later")
            w = Waiter(
                ticket=next(self._tickets),
                key=key,
                priority=priority,
                client=client,
                enqueued_at=self.clock(),
            )
            self._pending[w.ticket] = _Pending(w)
            self.state.push_waiter(w)
            self._dispatch_locked(key, w.enqueued_at)
            return w.ticket

    def wait(self, ticket: int, timeout: float | None = None) -> LeaseRecord:
        """Block until the ticket is granted (returns the lease), times out or is cancelled."""
        timeout = self.max_wait if timeout is None or timeout <= 0 else min(timeout, self.max_wait)
        with self._lock:
            p = self._pending.get(ticket)
        if p is None:
            raise NotFound(f"unknown request ticket {ticket}")
        p.event.wait(timeout)
        with self._lock:
            self._pending.pop(ticket, None)
            if p.lease is not None:
                return p.lease
            self.state.remove_waiter(ticket)
            key = p.waiter.key
            if p.cancelled:
                raise QueueTimeout(f"request for key {key!r} was cancelled")
            self.state.key_stats(key).requests_timed_out += 1
            keys = sorted({d.caps.key for d in self.state.devices()})
            if key in keys:
                n = sum(1 for d in self.state.devices() if d.caps.key == key)
                raise QueueTimeout(
                    f"no device with key {key!r} became free within {timeout:g} s "
                    f"({n} registered, all leased; {self.state.queue_lengths().get(key, 0)} still waiting)"
                )
            raise QueueTimeout(
                f"no device with key {key!r} is registered (waited {timeout:g} s); "
                f"registered keys: {', '.join(keys) or 'none'}"
            )

    def cancel(self, ticket: int) -> None:
        """Withdraw a waiting request (its caller has gone). A granted request is left alone."""
        with self._lock:
            p = self._pending.get(ticket)
            if p is None or p.lease is not None:
                return
            p.cancelled = True
            self.state.remove_waiter(ticket)
            p.event.set()

    def request(
        self, key: str, priority: int = 0, timeout: float | None = None, client: str = ""
    ) -> LeaseRecord:
        """Queue and wait: the whole RequestDevice call."""
        return self.wait(self.enqueue(key, priority, client), timeout)

    def renew(self, lease_id: str) -> LeaseRecord:
        with self._lock:
            lease = self.state.get_lease(lease_id)
            if lease is None:
                raise NotFound(f"lease {lease_id} has ended (expired, released, or its device was dropped)")
            lease.expires_at = self.clock() + self.lease_ttl
            self.state.put_lease(lease)
            return lease

    def release(self, lease_id: str) -> float:
        """End a lease; returns how long it was held."""
        with self._lock:
            lease = self.state.get_lease(lease_id)
            if lease is None:
                raise NotFound(f"lease {lease_id} has ended (expired, released, or its device was dropped)")
            held = self._end_lease_locked(lease, "released")
            return held

    def device_for(self, lease: LeaseRecord) -> DeviceRecord:
        with self._lock:
            rec = self.state.get_device(lease.device_id)
            if rec is None:
                raise NotFound(f"device {lease.device_id} of lease {lease.lease_id} is gone")
            return rec

    # ---- housekeeping

    def sweep(self) -> None:
        """Apply the liveness rule and lease TTLs."""
        now = self.clock()
        with self._lock:
            for rec in self.state.devices():
                if now - rec.last_seen > self.liveness:
                    log.warning(
                        "dropping device %s (%s at %s): no heartbeat for %.1f s",
                        rec.device_id,
                        rec.caps.key,
                        rec.caps.address,
                        now - rec.last_seen,
                    )
                    self._drop_locked(rec, dropped=True)
            for lease in self.state.leases():
                if now > lease.expires_at:
                    log.warning("lease %s on %s by %r expired", lease.lease_id, lease.device_id, lease.client)
                    self._end_lease_locked(lease, "expired")

    # ---- views

    def devices(self) -> list[DeviceView]:
        now = self.clock()
        with self._lock:
            out = []
            for d in self.state.devices():
                lease = self.state.get_lease(d.lease_id) if d.lease_id else None
                out.append(
                    DeviceView(
                        d.device_id,
                        d.caps,
                        "leased" if lease else "free",
                        lease.client if lease else "",
                        lease.lease_id if lease else "",
                        now - d.last_seen,
                        d.runs_served,
                    )
                )
            return sorted(out, key=lambda v: (v.caps.key, v.caps.address))

    def queue_lengths(self) -> dict[str, int]:
        with self._lock:
            return self.state.queue_lengths()

    def stats(self) -> StatsView:
        with self._lock:
            queues = self.state.queue_lengths()
            devs = self.state.devices()
            keys = []
            for st in sorted(self.state.all_key_stats(), key=lambda s: s.key):
                mine = [d for d in devs if d.caps.key == st.key]
                keys.append(
                    KeyStatsView(
                        key=st.key,
                        devices=len(mine),
                        free=sum(1 for d in mine if d.lease_id is None),
                        queue_length=queues.get(st.key, 0),
                        leases_granted=st.leases_granted,
                        leases_released=st.leases_released,
                        leases_expired=st.leases_expired,
                        requests_timed_out=st.requests_timed_out,
                        lease_seconds_total=st.lease_seconds_total,
                        lease_seconds_max=st.lease_seconds_max,
                        wait_seconds_total=st.wait_seconds_total,
                        runs_served=st.runs_served,
                    )
                )
            return StatsView(
                keys=keys, uptime_s=self.clock() - self.started_at, devices_dropped=self.devices_dropped
            )

    # ---- internals (lock held)

    def _drop_locked(self, rec: DeviceRecord, *, dropped: bool) -> None:
        if rec.lease_id:
            lease = self.state.get_lease(rec.lease_id)
            if lease is not None:
                self._end_lease_locked(lease, "revoked", redispatch=False)
        self.state.remove_device(rec.device_id)
        if dropped:
            self.devices_dropped += 1

    def _end_lease_locked(self, lease: LeaseRecord, how: str, *, redispatch: bool = True) -> float:
        now = self.clock()
        held = now - lease.granted_at
        self.state.remove_lease(lease.lease_id)
        st = self.state.key_stats(lease.key)
        if how == "expired":
            st.leases_expired += 1
        else:
            st.leases_released += 1
        st.lease_seconds_total += held
        st.lease_seconds_max = max(st.lease_seconds_max, held)
        rec = self.state.get_device(lease.device_id)
        if rec is not None and rec.lease_id == lease.lease_id:
            rec.lease_id = None
            rec.free_since = now
            self.state.put_device(rec)
            if redispatch:
                self._dispatch_locked(lease.key, now)
        return held

    def _dispatch_locked(self, key: str, now: float) -> None:
        """Hand free devices of ``key`` to waiters in queue order."""
        while True:
            w = self.state.peek_waiter(key)
            if w is None:
                return
            free = self.state.free_devices(key)
            if not free:
                return
            dev = free[0]
            self.state.remove_waiter(w.ticket)
            lease = LeaseRecord(
                lease_id=secrets.token_hex(8),
                device_id=dev.device_id,
                key=key,
                client=w.client,
                granted_at=now,
                expires_at=now + self.lease_ttl,
                queued_s=now - w.enqueued_at,
            )
            dev.lease_id = lease.lease_id
            self.state.put_device(dev)
            self.state.put_lease(lease)
            st = self.state.key_stats(key)
            st.leases_granted += 1
            st.wait_seconds_total += lease.queued_s
            p = self._pending.get(w.ticket)
            if p is not None:
                p.lease = lease
                p.event.set()
