"""TLS: server certificates, optional client certificates, together with the token."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import kiln.rpc
from kiln.rpc.auth import AuthError, TLSConfig, server_security
from kiln.rpc.client import RemoteError
from kiln.rpc.servers import TrackerServer
from kiln.rpc.tracker import Tracker

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


def _write_pair(d: Path, name: str, cert: object, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    c, k = d / f"{name}.pem", d / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))  # type: ignore[attr-defined]
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(c), str(k)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: object, san: bool) -> tuple[object, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)  # type: ignore[list-item]
        )
        if san:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return b.sign(ca_key, hashes.SHA256()), key

    out: dict[str, str] = {}
    out["ca"], _ = _write_pair(d, "ca", ca, ca_key)
    out["server_cert"], out["server_key"] = _write_pair(
        d, "server", *leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, True)
    )
    out["client_cert"], out["client_key"] = _write_pair(
        d, "client", *leaf("ci", ExtendedKeyUsageOID.CLIENT_AUTH, False)
    )
    return out


@pytest.fixture
def start(token: str) -> Iterator[Callable[[TLSConfig], TrackerServer]]:
    servers: list[TrackerServer] = []

    def make(tls: TLSConfig) -> TrackerServer:
        srv = TrackerServer(Tracker(), server_security(token, tls=tls)).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop(grace=None)


def test_server_tls(pki: dict[str, str], start: Callable[[TLSConfig], TrackerServer], token: str) -> None:
    srv = start(TLSConfig(cert=pki["server_cert"], key=pki["server_key"]))
    assert kiln.rpc.connect(srv.address, tls=TLSConfig(ca=pki["ca"])).devices() == []
    with pytest.raises(RemoteError) as ei:  # plaintext client against a TLS server
        kiln.rpc.connect(srv.address).devices()
    assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(RemoteError) as ei:  # TLS is not a substitute for the token
        kiln.rpc.connect(srv.address, token="nope", tls=TLSConfig(ca=pki["ca"])).devices()
    assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_mutual_tls(pki: dict[str, str], start: Callable[[TLSConfig], TrackerServer]) -> None:
    srv = start(TLSConfig(cert=pki["server_cert"], key=pki["server_key"], ca=pki["ca"]))
    with pytest.raises(RemoteError) as ei:
        kiln.rpc.connect(srv.address, tls=TLSConfig(ca=pki["ca"])).devices()
    assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    good = TLSConfig(cert=pki["client_cert"], key=pki["client_key"], ca=pki["ca"])
    assert kiln.rpc.connect(srv.address, tls=good).devices() == []


def test_settings_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_RPC_TOKEN", raising=False)
    monkeypatch.delenv("KILN_RPC_TOKEN_FILE", raising=False)
    with pytest.raises(AuthError, match="--insecure"):
        server_security()
    assert server_security(insecure=True).token is None
    f = tmp_path / "token"
    f.write_text("s3cret\n")
    assert server_security(token_file=f).token == "s3cret"
    monkeypatch.setenv("KILN_RPC_TOKEN_FILE", str(f))
    assert server_security().token == "s3cret"
    with pytest.raises(AuthError, match="cannot read"):
        server_security(token_file=tmp_path / "missing")
    with pytest.raises(AuthError, match="key"):
        TLSConfig(cert=str(f)).server_credentials()


@pytest.mark.qemu
def test_farm_over_tls(pki: dict[str, str], token: str, tiny_packages: dict[str, Any]) -> None:
    import tinypkg
    from kiln.device.launchers import make_launcher
    from kiln.rpc.servers import DeviceServer

    server_tls = TLSConfig(cert=pki["server_cert"], key=pki["server_key"])
    client_tls = TLSConfig(ca=pki["ca"])
    tracker = TrackerServer(Tracker(heartbeat_interval=0.2), server_security(token, tls=server_tls)).start()
    device = DeviceServer(
        key="x86",
        target="x86_64-linux",
        launcher=make_launcher("local", "x86_64-linux"),
        security=server_security(token, tls=server_tls),
        tracker=tracker.address,
        tracker_token=token,
        tracker_tls=client_tls,
        retry_interval=0.1,
    ).start()
    try:
        assert device.agent is not None and device.agent.registered.wait(10)
        with kiln.rpc.connect(tracker.address, tls=client_tls).request("x86", timeout=10) as dev:
            feeds = tinypkg.inputs()
            out = dev.load(tiny_packages["x86_64-linux"]).run(feeds)
            assert (out["y"] == tinypkg.reference(feeds)["y"]).all()
        with pytest.raises(RemoteError) as ei:  # plaintext to a TLS device server
            kiln.rpc.connect_device(device.address).health()
        assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        device.stop(grace=None)
        tracker.stop(grace=None)


def test_tls_mistakes_are_explained(pki: dict[str, str], token: str) -> None:
    """Issue 9, item 10: a plaintext client against a TLS server, and swapped certificate and key."""
    import subprocess
    import sys

    from farmproc import FarmProcess

    tls = FarmProcess(
        "tracker", "--port", "0", "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"]
    )
    try:
        with pytest.raises(RemoteError, match="if the server uses TLS, connect with --tls"):
            kiln.rpc.connect(tls.address).devices()
    finally:
        tls.kill()
    plain = FarmProcess("tracker", "--port", "0")
    try:
        with pytest.raises(RemoteError, match="TLS handshake failed"):
            kiln.rpc.connect(plain.address, tls=TLSConfig(ca=pki["ca"])).devices()
    finally:
        plain.kill()
    r = subprocess.run(
        [sys.executable, "-m", "kiln.rpc.cli", "tracker", "--port", "0"]
        + ["--tls-cert", pki["server_key"], "--tls-key", pki["server_cert"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "swapped" in r.stderr and "Traceback" not in r.stderr, r.stderr
