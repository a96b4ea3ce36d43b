"""The tracker's data: the records it keeps and the :class:`TrackerState` interface that stores them.

:class:`kiln.rpc.tracker.Tracker` holds all its data in a :class:`TrackerState` and calls it under its own
lock, so an implementation need not be thread-safe, and every method returns at once (no waiting happens in
the state). :class:`MemoryTrackerState` keeps everything in memory and loses it when the tracker stops: device
servers then register again when their heartbeat is answered ``NOT_FOUND`` and end the leases they were
serving (see :mod:`kiln.rpc.tracker`). :class:`SqliteTrackerState` keeps devices, leases and counters in an
SQLite file, so a restarted tracker still knows who holds which device; queued requests are not persisted
(they belong to connections that die with the tracker). ``STATE_IMPLS`` in ``tests/rpc/conftest.py`` lists the
implementations the state test suite and the tracker tests run against.

Records are plain mutable dataclasses. A caller that changes a record it got from the state hands it back
with ``put_device`` / ``put_lease`` / ``put_key_stats`` so that a store that copies (serializes) records sees
the change.
"""

from __future__ import annotations

import abc
import dataclasses
import heapq
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from kiln.rpc.common import Capabilities

# ------------------------------------------------------------------------------------------------- records


@dataclass
class DeviceRecord:
    """A registered device server. ``lease_id`` is set while it is leased; ``free_since`` orders the free
    devices of a key (the one free the longest is leased first)."""

    device_id: str
    caps: Capabilities
    registered_at: float
    last_seen: float
    free_since: float
    runs_served: int = 0
    lease_id: str | None = None


@dataclass
class LeaseRecord:
    """A device leased to a client until ``expires_at`` (renewals move it); ``queued_s`` is how long the
    request waited."""

    lease_id: str
    device_id: str
    key: str
    client: str
    granted_at: float
    expires_at: float
    queued_s: float
    owner: str = ""  # the identity (token name) the lease belongs to; ``client`` is a free-form label


@dataclass(order=True)
class Waiter:
    """A queued request. Ordering is the queue policy: higher priority first, then arrival order."""

    sort_key: tuple[int, int] = field(init=False, repr=False)
    ticket: int = field(compare=False)
    key: str = field(compare=False)
    priority: int = field(compare=False)
    client: str = field(compare=False)
    enqueued_at: float = field(compare=False)
    owner: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.sort_key = (-self.priority, self.ticket)


@dataclass
class KeyStats:
    """Counters of one device key since the tracker started."""

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
    thread-safe: :class:`~kiln.rpc.tracker.Tracker` calls them under its lock. Every method is non-blocking."""

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
    def queue_position(self, ticket: int) -> int | None:
        """1 for the waiter served next in its key's queue, 2 for the one after, ...; None if not queued."""

    @abc.abstractmethod
    def queue_lengths(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def key_stats(self, key: str) -> KeyStats:
        """The counters of ``key`` (created on first use); hand them back with :meth:`put_key_stats`."""

    @abc.abstractmethod
    def put_key_stats(self, st: KeyStats) -> None: ...

    @abc.abstractmethod
    def all_key_stats(self) -> list[KeyStats]: ...


class MemoryTrackerState(TrackerState):
    """In-memory state. Lost when the tracker stops; device servers re-register (see the protocol rules in
    :mod:`kiln.rpc.tracker`)."""

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

    def queue_position(self, ticket: int) -> int | None:
        w = self._tickets.get(ticket)
        if w is None:
            return None
        return 1 + sum(1 for o in self._tickets.values() if o.key == w.key and o.sort_key < w.sort_key)

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

    def put_key_stats(self, st: KeyStats) -> None:
        self._stats[st.key] = st

    def all_key_stats(self) -> list[KeyStats]:
        return list(self._stats.values())


class SqliteTrackerState(MemoryTrackerState):
    """Devices, leases and counters in an SQLite file (``path``), written through on every change; queued
    requests in memory. Reads are served from memory: the file is read once, when the state opens.

    A tracker restarted over the same file knows every device and lease it had: heartbeats of the devices
    keep working (no re-registration) and lease holders keep renewing. Timestamps in the file come from the
    previous tracker's clock; :meth:`kiln.rpc.tracker.Tracker.restore` moves them to the new one."""

    _TABLES = {"devices": "device_id", "leases": "lease_id", "stats": "key"}

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for table, pk in self._TABLES.items():
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({pk} TEXT PRIMARY KEY, rec TEXT NOT NULL)")
        for (rec,) in self._db.execute("SELECT rec FROM devices"):
            d = json.loads(rec)
            d["caps"] = Capabilities(**d["caps"])
            super().put_device(DeviceRecord(**d))
        for (rec,) in self._db.execute("SELECT rec FROM leases"):
            super().put_lease(LeaseRecord(**json.loads(rec)))
        for (rec,) in self._db.execute("SELECT rec FROM stats"):
            super().put_key_stats(KeyStats(**json.loads(rec)))

    def _put(self, table: str, pk: str, rec: DeviceRecord | LeaseRecord | KeyStats) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", (pk, json.dumps(dataclasses.asdict(rec)))
        )

    def put_device(self, rec: DeviceRecord) -> None:
        super().put_device(rec)
        self._put("devices", rec.device_id, rec)

    def remove_device(self, device_id: str) -> None:
        super().remove_device(device_id)
        self._db.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))

    def put_lease(self, rec: LeaseRecord) -> None:
        super().put_lease(rec)
        self._put("leases", rec.lease_id, rec)

    def remove_lease(self, lease_id: str) -> None:
        super().remove_lease(lease_id)
        self._db.execute("DELETE FROM leases WHERE lease_id = ?", (lease_id,))

    def key_stats(self, key: str) -> KeyStats:
        new = key not in self._stats
        st = super().key_stats(key)
        if new:
            self._put("stats", key, st)
        return st

    def put_key_stats(self, st: KeyStats) -> None:
        super().put_key_stats(st)
        self._put("stats", st.key, st)

    def close(self) -> None:
        self._db.close()
