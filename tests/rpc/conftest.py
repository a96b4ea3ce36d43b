"""Fixtures of the RPC tests: real gRPC servers on 127.0.0.1, port 0, with a shared token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kiln.rpc.auth import server_security
from kiln.rpc.tracker import Tracker, TrackerServer

TOKEN = "kiln-test-token"


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
        kw.setdefault("lease_ttl", 2.0)
        srv = TrackerServer(Tracker(**kw), server_security(token), port=port).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop(grace=None)
