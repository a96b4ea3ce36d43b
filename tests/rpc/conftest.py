"""Fixtures of the RPC tests: real gRPC servers on 127.0.0.1, port 0, with a shared token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kiln.rpc.auth import server_security
from kiln.rpc.servers import DeviceServer, TrackerServer
from kiln.rpc.state import MemoryTrackerState, SqliteTrackerState, TrackerState
from kiln.rpc.tracker import Tracker

TOKEN = "kiln-test-token"

#: Every TrackerState implementation. The state suite and the tracker logic tests
#: (test_tracker_logic.py) take the ``state`` fixture, so each runs against every implementation listed here.
STATE_IMPLS: list[type[TrackerState]] = [MemoryTrackerState, SqliteTrackerState]


@pytest.fixture(params=STATE_IMPLS, ids=lambda c: c.__name__)
def state(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TrackerState:
    """A fresh, empty tracker state, once per implementation."""
    if request.param is SqliteTrackerState:
        return SqliteTrackerState(tmp_path_factory.mktemp("state") / "tracker.db")
    return request.param()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The farm's shared token, also exported as $KILN_RPC_TOKEN for clients created without one."""
    monkeypatch.setenv("KILN_RPC_TOKEN", TOKEN)
    monkeypatch.delenv("KILN_RPC_TOKEN_FILE", raising=False)
    return TOKEN


@pytest.fixture
def make_tracker(token: str) -> Iterator[Callable[..., TrackerServer]]:
    """Start a tracker server with short intervals: make_tracker(heartbeat_interval=0.2, lease_ttl=1.0)."""
    servers: list[TrackerServer] = []

    def make(port: int = 0, **kw: Any) -> TrackerServer:
        kw.setdefault("heartbeat_interval", 0.2)
        kw.setdefault("liveness", 3.0)  # generous unless a test is about liveness: CI machines are busy
        kw.setdefault("lease_ttl", 2.0)
        srv = TrackerServer(Tracker(**kw), server_security(token), port=port).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop(grace=None)


@pytest.fixture(scope="session")
def tiny_packages() -> dict[str, Any]:
    """The tiny test model built for each Linux target the farm tests use (target name -> Package)."""
    import tinypkg

    return {t: tinypkg.build(t) for t in ("x86_64-linux", "aarch64-linux", "riscv64-linux")}


@pytest.fixture
def make_device(token: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """Start a real device server: make_device("aarch64-linux", "qemu-user", key=..., tracker=..., ...)."""
    from kiln.device.launchers import make_launcher

    servers: list[DeviceServer] = []

    def make(target: str = "x86_64-linux", launcher: str = "local", **kw: Any) -> DeviceServer:
        kw.setdefault("key", {"local": "x86"}.get(launcher, f"qemu-{target.split('-')[0]}"))
        kw.setdefault("call_timeout", 30.0)
        kw.setdefault("retry_interval", 0.1)
        kw.setdefault("cache_dir", tmp_path_factory.mktemp("cache"))
        if kw.get("tracker"):
            kw.setdefault("tracker_token", token)
        srv = DeviceServer(
            target=target, launcher=make_launcher(launcher, target), security=server_security(token), **kw
        ).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop(grace=None)
