"""The tracker over real gRPC: auth, leasing through the client API, queueing, TTL, liveness, restarts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import grpc
import pytest

import kiln.rpc
from kiln.rpc import tracker_pb2, tracker_pb2_grpc
from kiln.rpc.agent import TrackerAgent
from kiln.rpc.auth import open_channel
from kiln.rpc.client import RemoteError
from kiln.rpc.common import Capabilities
from kiln.rpc.servers import TrackerServer


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def agent(tracker: TrackerServer, key: str, port: int, token: str) -> TrackerAgent:
    caps = Capabilities(
        key=key, target="x86_64-linux", launcher="local", runtime_version="1", address=f"127.0.0.1:{port}"
    )
    a = TrackerAgent(tracker.address, caps, token=token, retry_interval=0.05).start()
    assert a.registered.wait(5)
    return a


def test_token_required(make_tracker: Callable[..., TrackerServer], token: str) -> None:
    srv = make_tracker()
    for bad in ("wrong-token", None):
        stub = tracker_pb2_grpc.TrackerStub(open_channel(srv.address, token=bad))
        with pytest.raises(grpc.RpcError) as ei:
            stub.ListDevices(tracker_pb2.ListDevicesRequest(), timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as ei:
            stub.Register(
                tracker_pb2.RegisterRequest(caps=Capabilities("k", address="127.0.0.1:1").to_proto()),
                timeout=5,
            )
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert srv.tracker.devices() == []  # nothing registered by the rejected calls
    with pytest.raises(RemoteError) as ei2:
        kiln.rpc.connect(srv.address, token="wrong-token").devices()
    assert ei2.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_lease_release_devices_stats(make_tracker: Callable[..., TrackerServer], token: str) -> None:
    srv = make_tracker()
    agents = [agent(srv, "x86", 5001, token), agent(srv, "qemu-aarch64", 5002, token)]
    with kiln.rpc.connect(srv.address, client="alice") as tr:
        with tr.request("x86", timeout=5) as dev:
            assert dev.address == "127.0.0.1:5001"
            rows = {d.key: d for d in tr.devices()}
            assert rows["x86"].state == "leased" and rows["x86"].lease_holder == "alice"
            assert rows["qemu-aarch64"].state == "free"
        assert {d.state for d in tr.devices()} == {"free"}
        st = {k.key: k for k in tr.stats().keys}
        assert st["x86"].leases_granted == 1 and st["x86"].leases_released == 1
    for a in agents:
        a.stop()
    assert srv.tracker.devices() == []  # unregistered on stop


def test_queue_hands_over_on_release(make_tracker: Callable[..., TrackerServer], token: str) -> None:
    srv = make_tracker()
    a = agent(srv, "k", 5001, token)
    tr = kiln.rpc.connect(srv.address)
    first = tr.request("k", timeout=5)
    got: list[float] = []

    def second() -> None:
        with tr.request("k", timeout=10) as d:
            got.append(d.queued_s)

    t = threading.Thread(target=second)
    t.start()
    wait_until(lambda: tr.queues().get("k") == 1, what="second client queued")
    time.sleep(0.2)
    first.release()
    t.join(10)
    assert got and got[0] >= 0.2
    a.stop()


def test_request_timeout_and_cancel(make_tracker: Callable[..., TrackerServer], token: str) -> None:
    srv = make_tracker()
    tr = kiln.rpc.connect(srv.address)
    with pytest.raises(RemoteError, match="no device with key 'nope' is registered") as ei:
        tr.request("nope", timeout=0.2)
    assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # a waiting request whose client goes away leaves the queue at once
    stub = tracker_pb2_grpc.TrackerStub(open_channel(srv.address, token=token))
    call = stub.RequestDevice(tracker_pb2.DeviceRequest(key="nope", timeout_ms=60000))
    wait_until(lambda: tr.queues().get("nope") == 1, what="request queued")
    call.cancel()
    wait_until(lambda: tr.queues().get("nope", 0) == 0, what="cancelled request to leave the queue")


def test_message_size_bound(make_tracker: Callable[..., TrackerServer], token: str) -> None:
    srv = make_tracker()
    stub = tracker_pb2_grpc.TrackerStub(open_channel(srv.address, token=token))
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.RequestDevice(tracker_pb2.DeviceRequest(key="k" * 100_000), timeout=5))
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.RequestDevice(tracker_pb2.DeviceRequest(key="k" * 1000), timeout=5))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_dead_device_is_dropped_and_lease_freed(
    make_tracker: Callable[..., TrackerServer], token: str
) -> None:
    srv = make_tracker(heartbeat_interval=0.1, liveness=0.3)
    a = agent(srv, "k", 5001, token)
    tr = kiln.rpc.connect(srv.address)
    dev = tr.request("k", timeout=5)
    a.stop(unregister=False)  # the device server dies silently
    wait_until(lambda: not srv.tracker.devices(), timeout=3, what="device dropped")
    wait_until(dev.lost.is_set, timeout=3, what="client to notice the lost lease")
    assert srv.tracker.state.leases() == []
    assert tr.stats().devices_dropped == 1
    dev.release()


def test_killed_client_lease_expires_to_next_in_queue(
    make_tracker: Callable[..., TrackerServer], token: str
) -> None:
    srv = make_tracker(lease_ttl=1.5)
    a = agent(srv, "k", 5001, token)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time, kiln.rpc
            dev = kiln.rpc.connect({srv.address!r}, client="doomed").request("k", timeout=10)
            print("leased", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "leased"
        tr = kiln.rpc.connect(srv.address, client="next")
        time.sleep(2.0)  # the holder renews: its lease outlives the TTL while it lives
        assert tr.devices()[0].lease_holder == "doomed"
        holder.kill()
        holder.wait()
        t0 = time.monotonic()
        with tr.request("k", timeout=10) as dev:
            waited = time.monotonic() - t0
            assert dev.address == "127.0.0.1:5001"
        assert waited <= 1.5 + 0.1 + 3.0  # TTL + sweep period + slack for a busy machine
        assert tr.stats().keys[0].leases_expired == 1
    finally:
        holder.kill()
        a.stop()


def test_devices_reregister_after_tracker_restart(
    make_tracker: Callable[..., TrackerServer], token: str
) -> None:
    srv = make_tracker()
    port = srv.port
    agents = [agent(srv, "k", 5001 + i, token) for i in range(3)]
    srv.stop(grace=None)
    time.sleep(0.3)  # devices see the tracker gone
    srv2 = make_tracker(port=port)
    wait_until(lambda: len(srv2.tracker.devices()) == 3, timeout=10, what="devices to re-register")
    wait_until(lambda: all(a.registrations == 2 for a in agents), timeout=5, what="agents to see the replies")
    with kiln.rpc.connect(srv2.address).request("k", timeout=5):
        pass
    for a in agents:
        a.stop()
