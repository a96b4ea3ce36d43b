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
    heartbeat answers ``NOT_FOUND``. ``NOT_FOUND`` means "register again": after a restart of a tracker that
    keeps its state in memory, every device server re-registers on its next heartbeat without human action
    and ends the lease it was serving, since the tracker has forgotten it (the device side of this is
    :mod:`kiln.rpc.agent`). A tracker with a persistent state (``--state FILE``,
    :class:`~kiln.rpc.state.SqliteTrackerState`) remembers devices and leases across a restart: heartbeats
    keep working, holders keep renewing, and each device and lease gets a full liveness window or TTL from
    the restart (:meth:`Tracker.restore`). The heartbeat reply names the lease the device is held under (empty
    when free); the device server ends every other lease it still serves. :meth:`Tracker.sweep` applies the
    rule; the tracker server runs it every H/2 (:class:`kiln.rpc.servers.TrackerServer`), so a silent device
    is gone between L and L + H/2 after it was last heard.

Leases
    ``RequestDevice(key, priority, timeout)`` waits until a free device with that key is leased to the
    caller or the timeout passes (``DEADLINE_EXCEEDED``; the request leaves the queue). While it waits it
    streams the request's queue position (at once, on every change, and at least every
    :data:`PROGRESS_INTERVAL_S`); its last message is the lease, which names the device's address. A lease
    lives for the TTL T (default 30 s) unless the client renews it with ``RenewLease`` (the client library
    renews every T/3). A lease that is not renewed within T expires; ``ReleaseLease``
    ends it at once; a lease whose device is dropped is revoked. In every case the device goes back to the
    pool and straight to the next waiter. ``RenewLease`` of an ended lease answers ``NOT_FOUND``.
    Invariant: a device has at most one lease and a lease names exactly one device.

Lease ids are secrets
    A lease id (128 random bits) is told only to the caller that was granted it: ``ListDevices`` shows the
    holder's identity, never the id. Renewing or releasing needs the id, and, with per-client tokens, the
    identity that owns the lease (another identity's attempt answers ``NOT_FOUND`` as if the lease did not
    exist; admins may end any lease). Device servers check every call's lease with ``VerifyLease(device,
    lease)`` (admin role), which answers the owner and how long the lease is valid at least, or
    ``NOT_FOUND`` when the lease is not a live lease of that device (:mod:`kiln.rpc.device_service`).

Queue and priority policy
    One queue per key. A free device goes to the waiter with the highest priority; among equal priorities to
    the one that asked first (FIFO). Among several free devices of a key, the one free the longest is leased,
    so load spreads over the pool. A waiter whose RPC ends (client cancelled or disconnected) leaves the queue
    at once; a lease granted in the same instant to a caller that has gone is released. A request for a key
    that no device has registered waits like any other (the device may come later); its timeout error names
    the registered keys. At most ``max_waiters`` requests wait at once; more are refused with
    ``RESOURCE_EXHAUSTED``, so waiting clients can never starve heartbeats of server threads. Priorities are
    integers in [-1000, 1000]; a caller may not ask for more than its identity's ``max_priority``
    (``PERMISSION_DENIED``, see :mod:`kiln.rpc.auth`).

Field bounds
    String fields (key, target, launcher, runtime version, address, client name) are limited to
    :data:`MAX_FIELD_CHARS` characters, and the key must not be empty (``INVALID_ARGUMENT`` otherwise). The
    bounds of whole messages are in :mod:`kiln.rpc.common`.

Security
    Every RPC needs a known token unless the tracker runs with ``--insecure`` (see :mod:`kiln.rpc.auth`).
    ``Register``, ``Heartbeat``, ``Unregister`` and ``VerifyLease`` need the ``admin`` role
    (``PERMISSION_DENIED``): a client cannot take a device out of the pool or put a rogue address in it.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from kiln.rpc.auth import ANONYMOUS, SHARED_NAME
from kiln.rpc.common import Capabilities
from kiln.rpc.state import DeviceRecord, LeaseRecord, MemoryTrackerState, TrackerState, Waiter

log = logging.getLogger("kiln.rpc.tracker")

HEARTBEAT_INTERVAL_S = 2.0
LIVENESS_FACTOR = 3.0
LEASE_TTL_S = 30.0
MAX_WAIT_S = 3600.0
MAX_WAITERS = 256
MAX_FIELD_CHARS = 256
MAX_PRIORITY = 1000
PROGRESS_INTERVAL_S = 5.0


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


class PermissionDenied(TrackerError):
    """The caller's identity may not do this (a client registering devices, a priority over its cap):
    ``PERMISSION_DENIED``."""


# --------------------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class DeviceView:
    """A device as ``kiln devices`` shows it."""

    device_id: str
    caps: Capabilities
    state: str
    lease_holder: str
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
        self.restore()

    def restore(self) -> None:
        """Move the times of records a persistent state kept from a previous tracker onto this tracker's
        clock: every device gets a full liveness window and every lease a full TTL from now (their holders
        renew, their devices heartbeat, or the usual rules drop them). Leases without their device, and
        devices that point at a lease that is gone, are cleaned up."""
        now = self.clock()
        with self._lock:
            devs = self.state.devices()
            newest = max((d.free_since for d in devs), default=now)
            for d in devs:
                d.last_seen = now
                d.free_since = now - max(0.0, newest - d.free_since)  # keeps the free-longest order
                if d.lease_id and self.state.get_lease(d.lease_id) is None:
                    d.lease_id = None
                self.state.put_device(d)
            for lease in self.state.leases():
                dev = self.state.get_device(lease.device_id)
                if dev is None or dev.lease_id != lease.lease_id:
                    self.state.remove_lease(lease.lease_id)
                    continue
                lease.granted_at = now
                lease.expires_at = now + self.lease_ttl
                self.state.put_lease(lease)
        if devs:
            log.info("restored %d devices and %d leases", len(devs), len(self.state.leases()))

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
            self.state.put_key_stats(self.state.key_stats(caps.key))
            self._dispatch_locked(caps.key, now)
        log.info(
            "registered device %s key=%s target=%s at %s", rec.device_id, caps.key, caps.target, caps.address
        )
        return rec

    def heartbeat(self, device_id: str, runs_served: int = 0) -> str:
        """Note that the device is alive; returns the id of the lease it is held under ("" when free)."""
        with self._lock:
            rec = self.state.get_device(device_id)
            if rec is None:
                raise NotFound(f"device {device_id} is not registered (tracker restarted or device dropped)")
            now = self.clock()
            rec.last_seen = now
            if runs_served > rec.runs_served:
                st = self.state.key_stats(rec.caps.key)
                st.runs_served += runs_served - rec.runs_served
                self.state.put_key_stats(st)
                rec.runs_served = runs_served
            self.state.put_device(rec)
            return rec.lease_id or ""

    def verify(self, device_id: str, lease_id: str) -> LeaseRecord:
        """The lease ``lease_id`` if it is a live lease of device ``device_id``, else :class:`NotFound`."""
        with self._lock:
            lease = self.state.get_lease(lease_id) if lease_id else None
            if lease is None or lease.device_id != device_id:
                raise NotFound("not a live lease of this device (expired, released, or another device's)")
            return lease

    def unregister(self, device_id: str) -> None:
        with self._lock:
            rec = self.state.get_device(device_id)
            if rec is None:
                raise NotFound(f"device {device_id} is not registered")
            self._drop_locked(rec, dropped=False)

    # ---- clients

    def enqueue(
        self, key: str, priority: int = 0, client: str = "", owner: str = "", max_priority: int = MAX_PRIORITY
    ) -> int:
        """Queue a request of identity ``owner``; returns its ticket for :meth:`wait` (which may find it
        granted already). ``max_priority`` is the caller's cap."""
        _check_field("key", key, required=True)
        _check_field("client", client)
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidRequest(f"priority {priority} is outside [-{MAX_PRIORITY}, {MAX_PRIORITY}]")
        if priority > max_priority:
            raise PermissionDenied(
                f"priority {priority} is over the cap of {max_priority} of identity {owner or 'this caller'!r}"
                "; ask the farm's operator for a higher max_priority in the tokens file"
            )
        with self._lock:
            if len(self._pending) >= self.max_waiters:
                raise QueueFull(f"{len(self._pending)} requests are already waiting; try again later")
            w = Waiter(
                ticket=next(self._tickets),
                key=key,
                priority=priority,
                client=client,
                enqueued_at=self.clock(),
                owner=owner,
            )
            self._pending[w.ticket] = _Pending(w)
            self.state.push_waiter(w)
            self._dispatch_locked(key, w.enqueued_at)
            return w.ticket

    def wait(self, ticket: int, timeout: float | None = None) -> LeaseRecord:
        """Block until the ticket is granted (returns the lease), times out or is cancelled."""
        for item in self.wait_updates(ticket, timeout, None):
            if isinstance(item, LeaseRecord):
                return item
        raise AssertionError("unreachable: wait_updates ends with a lease or raises")

    def wait_updates(
        self, ticket: int, timeout: float | None = None, interval: float | None = PROGRESS_INTERVAL_S
    ) -> Iterator[tuple[int, int, int, float] | LeaseRecord]:
        """Wait like :meth:`wait`, yielding ``(position, waiting, devices, waited_s)`` at once, on every change
        and at least every ``interval`` seconds (None: never); the last item is the lease."""
        timeout = self.max_wait if timeout is None or timeout <= 0 else min(timeout, self.max_wait)
        with self._lock:
            p = self._pending.get(ticket)
        if p is None:
            raise NotFound(f"unknown request ticket {ticket}")
        if interval is None:
            p.event.wait(timeout)
        else:
            t0 = time.monotonic()
            end = t0 + timeout
            last: tuple[int, int, int] | None = None
            last_t = 0.0
            while not p.event.is_set():
                now = time.monotonic()
                if now >= end:
                    break
                where = self.position(ticket)
                if where is not None and (where != last or now - last_t >= interval):
                    yield (*where, now - t0)
                    last, last_t = where, now
                p.event.wait(min(end - time.monotonic(), 0.25))
        yield self._finish_wait(ticket, p, timeout)

    def _finish_wait(self, ticket: int, p: _Pending, timeout: float) -> LeaseRecord:
        with self._lock:
            self._pending.pop(ticket, None)
            if p.lease is not None:
                return p.lease
            self.state.remove_waiter(ticket)
            key = p.waiter.key
            if p.cancelled:
                raise QueueTimeout(f"request for key {key!r} was cancelled")
            st = self.state.key_stats(key)
            st.requests_timed_out += 1
            self.state.put_key_stats(st)
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

    def position(self, ticket: int) -> tuple[int, int, int] | None:
        """(position in its key's queue, requests waiting for the key, devices of the key), or None."""
        with self._lock:
            p = self._pending.get(ticket)
            pos = self.state.queue_position(ticket)
            if p is None or pos is None:
                return None
            key = p.waiter.key
            n = sum(1 for d in self.state.devices() if d.caps.key == key)
            return pos, self.state.queue_lengths().get(key, 0), n

    def request(
        self,
        key: str,
        priority: int = 0,
        timeout: float | None = None,
        client: str = "",
        owner: str = "",
        max_priority: int = MAX_PRIORITY,
    ) -> LeaseRecord:
        """Queue and wait: the whole RequestDevice call."""
        return self.wait(self.enqueue(key, priority, client, owner, max_priority), timeout)

    def _own_lease_locked(self, lease_id: str, owner: str | None) -> LeaseRecord:
        lease = self.state.get_lease(lease_id) if lease_id else None
        if lease is None or (owner is not None and lease.owner != owner):
            shown = lease_id[:8] + "..." if len(lease_id) > 8 else lease_id
            raise NotFound(f"lease {shown} has ended (expired, released, or its device was dropped)")
        return lease

    def renew(self, lease_id: str, owner: str | None = None) -> LeaseRecord:
        """Extend a lease by the TTL. ``owner``: the caller's identity, which must own the lease (None: any,
        for admins and tests)."""
        with self._lock:
            lease = self._own_lease_locked(lease_id, owner)
            lease.expires_at = self.clock() + self.lease_ttl
            self.state.put_lease(lease)
            return lease

    def release(self, lease_id: str, owner: str | None = None) -> float:
        """End a lease; returns how long it was held. ``owner`` as for :meth:`renew`."""
        with self._lock:
            lease = self._own_lease_locked(lease_id, owner)
            return self._end_lease_locked(lease, "released")

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

    def expires_in(self, lease: LeaseRecord) -> float:
        return max(0.0, lease.expires_at - self.clock())

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
                        _holder(lease) if lease else "",
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
        self.state.put_key_stats(st)
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
                lease_id=secrets.token_hex(16),
                device_id=dev.device_id,
                key=key,
                client=w.client,
                granted_at=now,
                expires_at=now + self.lease_ttl,
                queued_s=now - w.enqueued_at,
                owner=w.owner,
            )
            dev.lease_id = lease.lease_id
            self.state.put_device(dev)
            self.state.put_lease(lease)
            st = self.state.key_stats(key)
            st.leases_granted += 1
            st.wait_seconds_total += lease.queued_s
            self.state.put_key_stats(st)
            p = self._pending.get(w.ticket)
            if p is not None:
                p.lease = lease
                p.event.set()


def _holder(lease: LeaseRecord) -> str:
    """How ``kiln devices`` names a lease holder: the identity (unless it is the shared one, which says
    nothing), then the client's own label."""
    owner = "" if lease.owner in (SHARED_NAME, ANONYMOUS.name) else lease.owner
    if owner and lease.client and lease.client != owner:
        return f"{owner} ({lease.client})"
    return owner or lease.client
