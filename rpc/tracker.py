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
    so after a tracker restart every device server re-registers on its next heartbeat without human action.
    A sweep runs every H/2, so a silent device is gone between L and L + H/2 after it was last heard.

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

Message size bounds
    Requests are at most 64 KiB (``MAX_REQUEST_BYTES``) and replies at most 4 MiB (``MAX_REPLY_BYTES``);
    string fields are limited to ``MAX_FIELD_CHARS`` characters (``INVALID_ARGUMENT`` beyond).

Security
    Every RPC needs the shared token unless the tracker runs with ``--insecure`` (see :mod:`kiln.rpc.auth`).

The logic is the plain class :class:`Tracker`, whose data sits behind :class:`TrackerState`; the gRPC
servicer only translates messages and maps :class:`TrackerError` subclasses to status codes.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import NoReturn

import grpc

from kiln.rpc import common_pb2, tracker_pb2, tracker_pb2_grpc
from kiln.rpc.auth import ServerSecurity

log = logging.getLogger("kiln.rpc.tracker")

HEARTBEAT_INTERVAL_S = 2.0
LIVENESS_FACTOR = 3.0
LEASE_TTL_S = 30.0
MAX_WAIT_S = 3600.0
MAX_WAITERS = 256
MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 4 * 1024 * 1024
MAX_FIELD_CHARS = 256


# ------------------------------------------------------------------------------------------------ errors


class TrackerError(Exception):
    """A request the tracker cannot satisfy; subclasses map to gRPC status codes."""


class NotFound(TrackerError):
    """Unknown device or lease (dropped, expired or never registered)."""


class QueueTimeout(TrackerError):
    """No device of the key became free within the request timeout."""


class QueueFull(TrackerError):
    """Too many requests are waiting already."""


class InvalidRequest(TrackerError):
    """A malformed request (empty key, oversized field)."""


# ------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Capabilities:
    key: str
    target: str = ""
    launcher: str = ""
    runtime_version: str = ""
    address: str = ""

    @classmethod
    def from_proto(cls, m: common_pb2.Capabilities) -> Capabilities:
        return cls(m.key, m.target, m.launcher, m.runtime_version, m.address)

    def to_proto(self) -> common_pb2.Capabilities:
        return common_pb2.Capabilities(
            key=self.key,
            target=self.target,
            launcher=self.launcher,
            runtime_version=self.runtime_version,
            address=self.address,
        )


@dataclass
class DeviceRecord:
    device_id: str
    caps: Capabilities
    registered_at: float
    last_seen: float
    free_since: float
    runs_served: int = 0
    lease_id: str | None = None


@dataclass
class LeaseRecord:
    lease_id: str
    device_id: str
    key: str
    client: str
    granted_at: float
    expires_at: float
    queued_s: float


@dataclass(order=True)
class Waiter:
    """A queued request. Ordering is the queue policy: higher priority first, then arrival order."""

    sort_key: tuple[int, int] = field(init=False, repr=False)
    ticket: int = field(compare=False)
    key: str = field(compare=False)
    priority: int = field(compare=False)
    client: str = field(compare=False)
    enqueued_at: float = field(compare=False)

    def __post_init__(self) -> None:
        self.sort_key = (-self.priority, self.ticket)


@dataclass
class KeyStats:
    key: str
    leases_granted: int = 0
    leases_released: int = 0
    leases_expired: int = 0
    requests_timed_out: int = 0
    lease_seconds_total: float = 0.0
    lease_seconds_max: float = 0.0
    wait_seconds_total: float = 0.0
    runs_served: int = 0


# --------------------------------------------------------------------------------------------------- state


class TrackerState(abc.ABC):
    """Storage of the tracker's devices, leases, queues and counters. Implementations need not be
    thread-safe: :class:`Tracker` calls them under its lock. Every method is non-blocking."""

    @abc.abstractmethod
    def put_device(self, rec: DeviceRecord) -> None: ...

    @abc.abstractmethod
    def get_device(self, device_id: str) -> DeviceRecord | None: ...

    @abc.abstractmethod
    def remove_device(self, device_id: str) -> None: ...

    @abc.abstractmethod
    def devices(self) -> list[DeviceRecord]: ...

    @abc.abstractmethod
    def device_at(self, address: str) -> DeviceRecord | None: ...

    @abc.abstractmethod
    def free_devices(self, key: str) -> list[DeviceRecord]:
        """Free devices of ``key``, the one free the longest first."""

    @abc.abstractmethod
    def put_lease(self, rec: LeaseRecord) -> None: ...

    @abc.abstractmethod
    def get_lease(self, lease_id: str) -> LeaseRecord | None: ...

    @abc.abstractmethod
    def remove_lease(self, lease_id: str) -> None: ...

    @abc.abstractmethod
    def leases(self) -> list[LeaseRecord]: ...

    @abc.abstractmethod
    def push_waiter(self, w: Waiter) -> None: ...

    @abc.abstractmethod
    def peek_waiter(self, key: str) -> Waiter | None:
        """The waiter of ``key`` that is served next (queue policy order), without removing it."""

    @abc.abstractmethod
    def remove_waiter(self, ticket: int) -> Waiter | None: ...

    @abc.abstractmethod
    def queue_lengths(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def key_stats(self, key: str) -> KeyStats:
        """The mutable counters of ``key`` (created on first use)."""

    @abc.abstractmethod
    def all_key_stats(self) -> list[KeyStats]: ...


class MemoryTrackerState(TrackerState):
    """In-memory state. Lost when the tracker stops; device servers re-register (see protocol rules)."""

    def __init__(self) -> None:
        self._devices: dict[str, DeviceRecord] = {}
        self._by_address: dict[str, str] = {}
        self._leases: dict[str, LeaseRecord] = {}
        self._queues: dict[str, list[Waiter]] = {}
        self._tickets: dict[int, Waiter] = {}
        self._stats: dict[str, KeyStats] = {}

    def put_device(self, rec: DeviceRecord) -> None:
        self._devices[rec.device_id] = rec
        self._by_address[rec.caps.address] = rec.device_id

    def get_device(self, device_id: str) -> DeviceRecord | None:
        return self._devices.get(device_id)

    def remove_device(self, device_id: str) -> None:
        rec = self._devices.pop(device_id, None)
        if rec is not None and self._by_address.get(rec.caps.address) == device_id:
            del self._by_address[rec.caps.address]

    def devices(self) -> list[DeviceRecord]:
        return list(self._devices.values())

    def device_at(self, address: str) -> DeviceRecord | None:
        did = self._by_address.get(address)
        return self._devices.get(did) if did else None

    def free_devices(self, key: str) -> list[DeviceRecord]:
        free = [d for d in self._devices.values() if d.caps.key == key and d.lease_id is None]
        return sorted(free, key=lambda d: d.free_since)

    def put_lease(self, rec: LeaseRecord) -> None:
        self._leases[rec.lease_id] = rec

    def get_lease(self, lease_id: str) -> LeaseRecord | None:
        return self._leases.get(lease_id)

    def remove_lease(self, lease_id: str) -> None:
        self._leases.pop(lease_id, None)

    def leases(self) -> list[LeaseRecord]:
        return list(self._leases.values())

    def push_waiter(self, w: Waiter) -> None:
        heapq.heappush(self._queues.setdefault(w.key, []), w)
        self._tickets[w.ticket] = w

    def peek_waiter(self, key: str) -> Waiter | None:
        q = self._queues.get(key)
        while q and q[0].ticket not in self._tickets:  # lazily drop removed waiters
            heapq.heappop(q)
        return q[0] if q else None

    def remove_waiter(self, ticket: int) -> Waiter | None:
        w = self._tickets.pop(ticket, None)
        if w is not None:
            q = self._queues.get(w.key, [])
            if q and q[0] is w:
                heapq.heappop(q)
        return w

    def queue_lengths(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self._tickets.values():
            out[w.key] = out.get(w.key, 0) + 1
        return out

    def key_stats(self, key: str) -> KeyStats:
        st = self._stats.get(key)
        if st is None:
            st = self._stats[key] = KeyStats(key)
        return st

    def all_key_stats(self) -> list[KeyStats]:
        return list(self._stats.values())


# --------------------------------------------------------------------------------------------------- logic


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

    def stats(self) -> tracker_pb2.Stats:
        with self._lock:
            queues = self.state.queue_lengths()
            devs = self.state.devices()
            keys = []
            for st in sorted(self.state.all_key_stats(), key=lambda s: s.key):
                mine = [d for d in devs if d.caps.key == st.key]
                keys.append(
                    tracker_pb2.KeyStats(
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
            return tracker_pb2.Stats(
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


# ------------------------------------------------------------------------------------------------- servicer


_STATUS: dict[type[TrackerError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    QueueTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
}


def _abort(context: grpc.ServicerContext, e: TrackerError) -> NoReturn:
    context.abort(_STATUS.get(type(e), grpc.StatusCode.UNKNOWN), str(e))
    raise AssertionError("unreachable: context.abort raises")


def _peer_host(context: grpc.ServicerContext) -> str:
    peer = context.peer()  # "ipv4:127.0.0.1:5555" | "ipv6:[::1]:5555"
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0]
    return ""


def _lease_proto(lease: LeaseRecord, dev: DeviceRecord, ttl: float) -> tracker_pb2.Lease:
    return tracker_pb2.Lease(
        lease_id=lease.lease_id,
        device_id=dev.device_id,
        device=dev.caps.to_proto(),
        ttl_ms=int(ttl * 1000),
        queued_s=lease.queued_s,
    )


class TrackerServicer(tracker_pb2_grpc.TrackerServicer):
    """Translates Tracker RPCs to :class:`Tracker` calls."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def Register(self, request, context):
        try:
            rec = self.tracker.register(Capabilities.from_proto(request.caps), _peer_host(context))
        except TrackerError as e:
            _abort(context, e)
        return tracker_pb2.RegisterReply(
            device_id=rec.device_id,
            heartbeat_interval_ms=int(self.tracker.heartbeat_interval * 1000),
            liveness_ms=int(self.tracker.liveness * 1000),
        )

    def Heartbeat(self, request, context):
        try:
            self.tracker.heartbeat(request.device_id, request.runs_served)
        except TrackerError as e:
            _abort(context, e)
        return tracker_pb2.HeartbeatReply()

    def Unregister(self, request, context):
        try:
            self.tracker.unregister(request.device_id)
        except TrackerError as e:
            _abort(context, e)
        return tracker_pb2.UnregisterReply()

    def RequestDevice(self, request, context):
        t = self.tracker
        try:
            ticket = t.enqueue(request.key, request.priority, request.client or context.peer())
            if not context.add_callback(lambda: t.cancel(ticket)):
                t.cancel(ticket)
            lease = t.wait(ticket, request.timeout_ms / 1000.0 if request.timeout_ms else None)
            if not context.is_active():  # the caller left as the lease was granted
                t.release(lease.lease_id)
                context.abort(grpc.StatusCode.CANCELLED, "request cancelled by the client")
            dev = t.device_for(lease)
        except TrackerError as e:
            _abort(context, e)
        return _lease_proto(lease, dev, t.lease_ttl)

    def RenewLease(self, request, context):
        try:
            lease = self.tracker.renew(request.lease_id)
            dev = self.tracker.device_for(lease)
        except TrackerError as e:
            _abort(context, e)
        return _lease_proto(lease, dev, self.tracker.lease_ttl)

    def ReleaseLease(self, request, context):
        try:
            held = self.tracker.release(request.lease_id)
        except TrackerError as e:
            _abort(context, e)
        return tracker_pb2.ReleaseReply(held_s=held)

    def ListDevices(self, request, context):
        devs = [
            tracker_pb2.DeviceStatus(
                device_id=v.device_id,
                caps=v.caps.to_proto(),
                state=v.state,
                lease_holder=v.lease_holder,
                lease_id=v.lease_id,
                last_seen_s=v.last_seen_s,
                runs_served=v.runs_served,
            )
            for v in self.tracker.devices()
        ]
        queues = [
            tracker_pb2.KeyQueue(key=k, waiting=n) for k, n in sorted(self.tracker.queue_lengths().items())
        ]
        return tracker_pb2.DeviceList(devices=devs, queues=queues)

    def GetStats(self, request, context):
        return self.tracker.stats()


# ---------------------------------------------------------------------------------------------------- server


class TrackerServer:
    """A gRPC server around a :class:`Tracker`, with a background sweeper.

    >>> srv = TrackerServer(Tracker(), security=server_security(insecure=True)).start()  # doctest: +SKIP
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
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_REPLY_BYTES),
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
