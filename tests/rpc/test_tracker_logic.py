"""The tracker's logic and state, without gRPC: queue policy, leases, TTL, liveness."""

from __future__ import annotations

import threading
import time

import pytest

from kiln.rpc.common import Capabilities
from kiln.rpc.state import DeviceRecord, KeyStats, LeaseRecord, TrackerState, Waiter
from kiln.rpc.tracker import InvalidRequest, NotFound, QueueFull, QueueTimeout, Tracker


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def caps(key: str = "k", port: int = 1, host: str = "127.0.0.1") -> Capabilities:
    return Capabilities(
        key=key, target="x86_64-linux", launcher="local", runtime_version="1", address=f"{host}:{port}"
    )


# ------------------------------------------------------------------------------------- state interface suite
# ``state`` (conftest.py) is each TrackerState implementation in turn.


def test_state_devices(state: TrackerState) -> None:
    a = DeviceRecord("a", caps("k", 1), 0, 0, free_since=5)
    b = DeviceRecord("b", caps("k", 2), 0, 0, free_since=3)
    c = DeviceRecord("c", caps("other", 3), 0, 0, free_since=1)
    for d in (a, b, c):
        state.put_device(d)
    assert state.get_device("a") is not None
    assert state.device_at("127.0.0.1:2").device_id == "b"  # type: ignore[union-attr]
    assert [d.device_id for d in state.free_devices("k")] == ["b", "a"]  # free the longest first
    b.lease_id = "L"
    state.put_device(b)
    assert [d.device_id for d in state.free_devices("k")] == ["a"]
    state.remove_device("a")
    assert state.get_device("a") is None and state.device_at("127.0.0.1:1") is None
    assert sorted(d.device_id for d in state.devices()) == ["b", "c"]


def test_state_leases(state: TrackerState) -> None:
    lease = LeaseRecord("L", "a", "k", "me", 0, 10, 0)
    state.put_lease(lease)
    assert state.get_lease("L") == lease
    assert state.leases() == [lease]
    state.remove_lease("L")
    assert state.get_lease("L") is None and state.leases() == []


def test_state_queue_order(state: TrackerState) -> None:
    ws = [
        Waiter(ticket=1, key="k", priority=0, client="a", enqueued_at=0),
        Waiter(ticket=2, key="k", priority=5, client="b", enqueued_at=0),
        Waiter(ticket=3, key="k", priority=0, client="c", enqueued_at=0),
        Waiter(ticket=4, key="j", priority=9, client="d", enqueued_at=0),
        Waiter(ticket=5, key="k", priority=5, client="e", enqueued_at=0),
    ]
    for w in ws:
        state.push_waiter(w)
    assert state.queue_lengths() == {"k": 4, "j": 1}
    assert state.remove_waiter(5) is not None  # not at the head
    order = []
    while (w := state.peek_waiter("k")) is not None:
        order.append(w.ticket)
        state.remove_waiter(w.ticket)
    assert order == [2, 1, 3]
    assert state.remove_waiter(99) is None
    assert state.queue_lengths() == {"j": 1}


def test_state_key_stats(state: TrackerState) -> None:
    st = state.key_stats("k")
    assert isinstance(st, KeyStats)
    st.leases_granted += 2
    assert state.key_stats("k").leases_granted == 2
    assert [s.key for s in state.all_key_stats()] == ["k"]


# ------------------------------------------------------------------------------------------------- logic


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(state: TrackerState, clock: Clock) -> Tracker:
    return Tracker(state, heartbeat_interval=1.0, lease_ttl=10.0, clock=clock)


def test_request_release_and_stats(tracker: Tracker, clock: Clock) -> None:
    dev = tracker.register(caps())
    lease = tracker.request("k", client="alice")
    assert lease.device_id == dev.device_id
    [view] = tracker.devices()
    assert (view.state, view.lease_holder) == ("leased", "alice")
    clock.t += 2.5
    assert tracker.release(lease.lease_id) == pytest.approx(2.5)
    assert tracker.devices()[0].state == "free"
    [ks] = tracker.stats().keys
    assert (ks.devices, ks.free, ks.leases_granted, ks.leases_released) == (1, 1, 1, 1)
    assert ks.lease_seconds_max == pytest.approx(2.5)
    with pytest.raises(NotFound):
        tracker.release(lease.lease_id)


def test_priority_then_fifo(tracker: Tracker) -> None:
    tracker.register(caps())
    first = tracker.request("k")
    low1 = tracker.enqueue("k", 0, "low1")
    high = tracker.enqueue("k", 5, "high")
    low2 = tracker.enqueue("k", 0, "low2")
    assert tracker.queue_lengths() == {"k": 3}
    served = []
    lease = first
    waiting = [low1, high, low2]
    for _ in range(3):
        tracker.release(lease.lease_id)
        granted = [t for t in waiting if tracker._pending[t].lease is not None]
        assert len(granted) == 1
        waiting.remove(granted[0])
        lease = tracker.wait(granted[0], timeout=1)
        served.append(lease.client)
    assert served == ["high", "low1", "low2"]


def test_spreads_over_free_devices(tracker: Tracker, clock: Clock) -> None:
    tracker.register(caps(port=1))
    clock.t += 1
    tracker.register(caps(port=2))
    clock.t += 1
    a = tracker.request("k")
    tracker.release(a.lease_id)
    b = tracker.request("k")
    assert a.device_id != b.device_id


def test_timeout_names_registered_keys(tracker: Tracker) -> None:
    tracker.register(caps("qemu-aarch64"))
    t0 = time.monotonic()
    with pytest.raises(QueueTimeout, match="no device with key 'qemu-aarch65' is registered.*qemu-aarch64"):
        tracker.request("qemu-aarch65", timeout=0.05)
    assert time.monotonic() - t0 < 1
    tracker.request("qemu-aarch64")
    with pytest.raises(QueueTimeout, match="all leased"):
        tracker.request("qemu-aarch64", timeout=0.05)
    assert tracker.queue_lengths() == {}
    assert {k.key: k.requests_timed_out for k in tracker.stats().keys} == {
        "qemu-aarch64": 1,
        "qemu-aarch65": 1,
    }


def test_lease_ttl_expiry_hands_device_to_next(tracker: Tracker, clock: Clock) -> None:
    tracker.register(caps())
    lease = tracker.request("k")
    nxt = tracker.enqueue("k", client="next")
    clock.t += 6
    tracker.renew(lease.lease_id)  # renewed: 10 s from now
    clock.t += 6
    tracker.heartbeat(tracker.devices()[0].device_id)
    tracker.sweep()
    assert tracker._pending[nxt].lease is None
    clock.t += 4.1
    tracker.heartbeat(tracker.devices()[0].device_id)
    tracker.sweep()
    with pytest.raises(NotFound):
        tracker.renew(lease.lease_id)
    assert tracker.wait(nxt, 1).client == "next"
    assert tracker.stats().keys[0].leases_expired == 1


def test_liveness_drops_device_and_revokes_lease(tracker: Tracker, clock: Clock) -> None:
    dev = tracker.register(caps())
    lease = tracker.request("k")
    clock.t += 2.9  # liveness = 3 heartbeat intervals
    tracker.sweep()
    assert len(tracker.devices()) == 1
    clock.t += 0.2
    tracker.sweep()
    assert tracker.devices() == []
    with pytest.raises(NotFound):
        tracker.renew(lease.lease_id)
    with pytest.raises(NotFound, match="register"):
        tracker.heartbeat(dev.device_id)
    assert tracker.stats().devices_dropped == 1


def test_reregister_same_address_replaces(tracker: Tracker) -> None:
    old = tracker.register(caps())
    lease = tracker.request("k")
    new = tracker.register(caps())
    assert new.device_id != old.device_id
    assert [d.device_id for d in tracker.devices()] == [new.device_id]
    with pytest.raises(NotFound):
        tracker.renew(lease.lease_id)


def test_wildcard_host_uses_peer(tracker: Tracker) -> None:
    rec = tracker.register(caps(host="0.0.0.0", port=7), peer_host="10.1.2.3")
    assert rec.caps.address == "10.1.2.3:7"


def test_invalid_requests(tracker: Tracker) -> None:
    with pytest.raises(InvalidRequest):
        tracker.register(caps(key=""))
    with pytest.raises(InvalidRequest):
        tracker.register(Capabilities(key="k", address="nohostport"))
    with pytest.raises(InvalidRequest):
        tracker.request("k" * 1000)


def test_cancel_leaves_queue(tracker: Tracker) -> None:
    tracker.register(caps())
    held = tracker.request("k")
    t = tracker.enqueue("k")
    tracker.cancel(t)
    assert tracker.queue_lengths() == {}
    with pytest.raises(QueueTimeout, match="cancelled"):
        tracker.wait(t, 1)
    tracker.release(held.lease_id)
    assert tracker.devices()[0].state == "free"


def test_queue_full(clock: Clock) -> None:
    tr = Tracker(max_waiters=2, clock=clock)
    tr.enqueue("k")
    tr.enqueue("k")
    with pytest.raises(QueueFull):
        tr.enqueue("k")


def test_threads_never_share_a_device() -> None:
    tr = Tracker(lease_ttl=30)
    for port in range(5):
        tr.register(caps(port=port + 1))
    holders: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    granted = [0]

    def client(i: int) -> None:
        for _ in range(200):
            lease = tr.request("k", priority=i % 3, timeout=10)
            with lock:
                if lease.device_id in holders:
                    errors.append(f"{lease.device_id} leased to {holders[lease.device_id]} and {i}")
                holders[lease.device_id] = i
                granted[0] += 1
            with lock:
                del holders[lease.device_id]
            tr.release(lease.lease_id)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert granted[0] == 12 * 200
    assert all(d.state == "free" for d in tr.devices())
    assert tr.stats().keys[0].leases_granted == 2400
