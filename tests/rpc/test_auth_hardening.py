"""Issue 9, items 1 and 9: tokens that are empty or whitespace, --insecure with a token, authentication before
the request is received and parsed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from kiln.rpc.auth import AuthError, server_security
from kiln.rpc.servers import TrackerServer
from kiln.rpc.tracker import Tracker


@pytest.fixture
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_RPC_TOKEN", raising=False)
    monkeypatch.delenv("KILN_RPC_TOKEN_FILE", raising=False)


@pytest.mark.parametrize("value", [" ", "\t\n", ""])
def test_blank_token_in_environment_is_refused(
    value: str, no_env_token: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_RPC_TOKEN", value)
    with pytest.raises(AuthError, match="empty|no RPC token"):
        server_security()


@pytest.mark.parametrize("value", [" ", "  \n", ""])
def test_blank_explicit_token_is_refused(value: str, no_env_token: None) -> None:
    with pytest.raises(AuthError):
        server_security(value)


def test_blank_token_file_is_refused(no_env_token: None, tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text("   \n\n")
    with pytest.raises(AuthError, match="empty"):
        server_security(token_file=f)


def test_insecure_with_a_token_is_refused(no_env_token: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AuthError, match="--insecure"):
        server_security("s3cret", insecure=True)
    monkeypatch.setenv("KILN_RPC_TOKEN", "s3cret")
    with pytest.raises(AuthError, match="--insecure"):
        server_security(insecure=True)


def test_server_with_blank_token_never_accepts_everyone(no_env_token: None) -> None:
    """Even a ServerSecurity built by hand with an empty token must not serve unauthenticated calls."""
    from kiln.rpc.auth import ServerSecurity

    with pytest.raises(AuthError):
        TrackerServer(Tracker(), ServerSecurity(token=" "))


def _raw_unary(address: str, method: str, payload: bytes, token: str | None) -> grpc.RpcError:
    ch = grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", 80 << 20), ("grpc.max_receive_message_length", 1 << 20)],
    )
    call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
    md = (("authorization", f"Bearer {token}"),) if token else None
    with pytest.raises(grpc.RpcError) as ei:
        call(payload, timeout=30, metadata=md)
    ch.close()
    return ei.value


def test_unauthenticated_garbage_is_rejected_before_parsing(
    make_tracker: Callable[..., TrackerServer], make_device: Callable[..., object]
) -> None:
    tracker = make_tracker()
    device = make_device()
    junk = os.urandom(4096)
    for address, method in [
        (tracker.address, "/kiln.rpc.Tracker/ListDevices"),
        (tracker.address, "/kiln.rpc.Tracker/Register"),
        (device.address, "/kiln.rpc.Device/Run"),  # type: ignore[attr-defined]
        (device.address, "/kiln.rpc.Device/Load"),  # type: ignore[attr-defined]
    ]:
        for tok in (None, "wrong"):
            err = _raw_unary(address, method, junk, tok)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method, tok, err.code(), err.details())


def test_unauthenticated_large_request_is_not_received(make_device: Callable[..., object]) -> None:
    """A 60 MiB request without a token is refused at once, without the server reading it all."""
    device = make_device()
    big = b"\0" * (60 << 20)
    t0 = time.monotonic()
    err = _raw_unary(device.address, "/kiln.rpc.Device/Run", big, None)  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - t0 < 10
