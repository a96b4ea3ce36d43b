"""Client API of the device farm.

    import kiln.rpc
    with kiln.rpc.connect("HOST:9190").request("qemu-aarch64", timeout=60) as dev:
        m = dev.load(pkg)                 # uploads only if the device does not have it yet
        outputs = m.run({"data": x})
        seconds = m.time(number=20, repeat=5)
        prof = m.profile()

``kiln.rpc.connect_device("HOST:PORT")`` talks to one device server without a tracker. Every failure surfaces
as :class:`RemoteError`, whose ``code`` is the gRPC status and whose message names the device and what went
wrong there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from kiln.device import Executable, Profile
from kiln.rpc import device_pb2, device_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from kiln.rpc.auth import LEASE_METADATA_KEY, METADATA_KEY, TLSConfig, load_token, open_channel
from kiln.rpc.common import (
    MAX_DEVICE_MESSAGE_BYTES,
    UPLOAD_CHUNK_BYTES,
    Capabilities,
    pack_tensors,
    unpack_tensors,
)
from kiln.runtime_c import abi

log = logging.getLogger("kiln.rpc.client")

_DEADLINE_MARGIN_S = 10.0  # the server's own timeout answers first, with a clearer message
_MAX_TIMEOUT_MS = 2**32 - 1  # timeout_ms is a uint32
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def check_timeout(value: float, what: str = "timeout") -> float:
    """``value`` as seconds if it is a finite number in (0, one week], else ValueError (NaN, negative, 1e300)."""
    try:
        t = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be a number of seconds, not {value!r}") from e
    if not math.isfinite(t) or t <= 0 or t > MAX_TIMEOUT_S:
        raise ValueError(
            f"{what} must be a finite number of seconds in (0, {MAX_TIMEOUT_S:g}], not {value!r}"
        )
    return t


class RemoteError(RuntimeError):
    """A tracker or device RPC failed. ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


_TLS_FAILURE = ("ssl", "tls", "handshake", "certificate", "wrong_version_number", "socket closed")


def _translate(e: grpc.RpcError, where: str, *, service: str = "", tls: bool = False) -> RemoteError:
    """A RemoteError that says what went wrong and, for the usual mistakes, what to do."""
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else str(e)) or ""
    low = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        msg = f"{where} is unreachable: {details}"
        if not tls and any(w in low for w in _TLS_FAILURE):
            msg += " (if the server uses TLS, connect with --tls or --tls-ca CA.pem)"
        elif tls and any(w in low for w in _TLS_FAILURE):
            msg += (
                " (the TLS handshake failed: is the server serving TLS, does --tls-ca name the CA that signed "
                "its certificate, and does the certificate name this host (--tls-server-name)?)"
            )
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        msg = f"{where} rejected the call ({details}); set KILN_RPC_TOKEN or pass --token-file"
    elif code == grpc.StatusCode.UNIMPLEMENTED and service == "Tracker":
        msg = (
            f"{where} is not a kiln tracker (it does not serve the Tracker service; is it a device server? "
            "--tracker takes the address `kiln tracker` listens on, --device a device server's)"
        )
    elif code == grpc.StatusCode.UNIMPLEMENTED and service == "Device":
        msg = (
            f"{where} is not a kiln device server (it does not serve the Device service; is it a tracker? "
            "--device takes the address `kiln serve` listens on; lease through a tracker with --tracker)"
        )
    else:
        msg = f"{where}: {details}"
    return RemoteError(msg, code)


def _options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_DEVICE_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_DEVICE_MESSAGE_BYTES),
    ]


def _package_source(pkg: Any) -> tuple[str | None, Path | None, Callable[[], bytes] | None]:
    """A package given as a Package object, a .kpkg path or archive bytes -> (known sha256 or None, file to
    stream or None, function giving the archive bytes or None)."""
    if isinstance(pkg, (bytes, bytearray, memoryview)):
        data = bytes(pkg)
        return None, None, lambda: data
    if isinstance(pkg, (str, os.PathLike)):
        return None, Path(pkg), None
    if hasattr(pkg, "to_bytes") and hasattr(pkg, "sha256"):  # kiln.package.kpkg.Package
        return str(pkg.sha256), None, pkg.to_bytes
    raise TypeError(f"cannot upload a {type(pkg).__name__}: pass a kiln Package, a .kpkg path or its bytes")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------------- device


class RemoteModule(Executable):
    """A package loaded on a remote device: the :class:`~kiln.device.Executable` of the farm. ``timeout``
    bounds each call on the device (None: the device server's own limit); closing runs the cleanups its
    opener attached (e.g. releasing the lease). The device keeps the runner warm until it is evicted or
    :meth:`unload` is called. ``threads`` is what the module asks the device for with every call (None: the
    package's default); ``pool_threads`` the size of the runner's thread pool as the device reported it."""

    def __init__(
        self,
        device: RemoteDevice,
        sha256: str,
        manifest: dict[str, Any],
        info: dict[str, Any],
        *,
        timeout: float | None = None,
        threads: int | None = None,
        pool_threads: int = 0,
    ) -> None:
        self.device = device
        self.sha256 = sha256
        self.manifest = manifest
        self.info = info
        self.timeout = timeout
        self.threads = threads
        self.pool_threads = pool_threads
        self.name = str(manifest.get("name", sha256[:12]))
        self.label = f"{self.name} on {device.label}"
        self._cleanups: list[Callable[[], None]] = []

    def _deadline(self) -> tuple[int, float | None]:
        if self.timeout is None:
            return 0, None
        t = check_timeout(self.timeout, "timeout")
        return max(1, min(_MAX_TIMEOUT_MS, int(t * 1000))), t + _DEADLINE_MARGIN_S

    def run(self, inputs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        ms, deadline = self._deadline()
        req = device_pb2.RunRequest(
            sha256=self.sha256, inputs=pack_tensors(inputs), timeout_ms=ms, threads=self.threads
        )
        reply = self.device._call("Run", req, deadline)
        return unpack_tensors(reply.outputs)

    def time(
        self,
        number: int = 10,
        repeat: int = 3,
        min_repeat_ms: int = 0,
        *,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[float]:
        ms, deadline = self._deadline()
        req = device_pb2.TimeRequest(
            sha256=self.sha256,
            inputs=pack_tensors(inputs),
            number=number,
            repeat=repeat,
            min_repeat_ms=min_repeat_ms,
            timeout_ms=ms,
            threads=self.threads,
        )
        return list(self.device._call("Time", req, deadline).seconds)

    def profile(self, inputs: Mapping[str, Any] | None = None) -> Profile:
        ms, deadline = self._deadline()
        req = device_pb2.ProfileRequest(
            sha256=self.sha256, inputs=pack_tensors(inputs), timeout_ms=ms, threads=self.threads
        )
        data = json.loads(self.device._call("Profile", req, deadline).profile_json)
        return Profile.from_dict(data)

    def unload(self) -> None:
        """Stops the package's runners on the device (the package stays in its cache)."""
        self.device._call("Unload", device_pb2.PackageRef(sha256=self.sha256), 30.0)

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        """Calls ``fn`` when the module is closed (last added, first called)."""
        self._cleanups.append(fn)

    def close(self) -> None:
        while self._cleanups:
            self._cleanups.pop()()

    def __enter__(self) -> RemoteModule:
        return self

    def __repr__(self) -> str:
        return f"RemoteModule({self.name!r} on {self.device.address})"


class RemoteDevice:
    """A connection to one device server."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: TLSConfig | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.address = address
        self._tls = tls is not None
        # The token goes into each call's metadata directly: cheaper than a channel interceptor on the
        # run path, which the remote-overhead benchmark measures.
        self._channel = open_channel(address, tls=tls, options=_options())
        self._stub = device_pb2_grpc.DeviceStub(self._channel)
        md = list(metadata)
        if token:
            md.append((METADATA_KEY, f"Bearer {token}"))
        self._metadata = tuple(md) or None
        self.label = f"device server {address}"

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _translate(e, self.label, service="Device", tls=self._tls) from None

    def info(self) -> dict[str, Any]:
        r = self._call("Info", device_pb2.InfoRequest(), 30.0)
        return {
            "caps": Capabilities.from_proto(r.caps),
            "runs_served": r.runs_served,
            "packages_cached": r.packages_cached,
            "cache_bytes": r.cache_bytes,
            "cache_limit_bytes": r.cache_limit_bytes,
            "max_upload_bytes": r.max_upload_bytes,
            "loaded": list(r.loaded),
        }

    def health(self, timeout: float = 5.0) -> bool:
        return bool(self._call("Health", device_pb2.HealthRequest(), timeout).serving)

    def upload(self, pkg: Any, *, force: bool = False) -> str:
        """Send a package unless the device has it; returns its sha256."""
        sha, path, get_bytes = _package_source(pkg)
        data: bytes | None = None
        if path is not None:
            sha = _sha256_file(path)
        elif sha is None:
            assert get_bytes is not None
            data = get_bytes()
            sha = hashlib.sha256(data).hexdigest()
        if not force and self._call("HasPackage", device_pb2.PackageRef(sha256=sha), 30.0).cached:
            return sha
        if path is None and data is None:
            assert get_bytes is not None
            data = get_bytes()
        size = path.stat().st_size if path is not None else len(data or b"")

        def chunks() -> Iterator[device_pb2.UploadChunk]:
            first = True
            if path is not None:
                with path.open("rb") as f:
                    while block := f.read(UPLOAD_CHUNK_BYTES):
                        yield device_pb2.UploadChunk(
                            sha256=sha if first else "", size=size if first else 0, data=block
                        )
                        first = False
            else:
                assert data is not None
                view = memoryview(data)
                for off in range(0, len(data), UPLOAD_CHUNK_BYTES):
                    yield device_pb2.UploadChunk(
                        sha256=sha if first else "",
                        size=size if first else 0,
                        data=bytes(view[off : off + UPLOAD_CHUNK_BYTES]),
                    )
                    first = False
            if first:  # empty archive: still announce it
                yield device_pb2.UploadChunk(sha256=sha, size=0)

        self._call("Upload", chunks(), None)
        return sha

    def load(self, pkg: Any, *, timeout: float | None = None, threads: int | None = None) -> RemoteModule:
        """Upload ``pkg`` if needed and start its runner; returns the remote module, whose calls time out
        after ``timeout`` seconds (None: the device server's limit). ``threads`` sizes the runner's thread
        pool (None: the package's default, from ``kiln compile --threads``; 0: one per core of the device;
        else at most the device's ``cores``); the device refuses a count it cannot give (``INVALID_ARGUMENT``)."""
        if threads is not None:
            threads = abi.check_threads(threads)
        sha = self.upload(pkg)
        r = self._call("Load", device_pb2.LoadRequest(sha256=sha, threads=threads), None)
        manifest = json.loads(r.manifest_json)
        return RemoteModule(
            self,
            sha,
            manifest,
            json.loads(r.info_json or "{}"),
            timeout=timeout,
            threads=threads,
            pool_threads=r.threads,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RemoteDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LeasedDevice(RemoteDevice):
    """A device leased from a tracker. The lease is renewed in the background until :meth:`release`
    (or leaving the ``with`` block)."""

    def __init__(self, tracker: TrackerClient, lease: tracker_pb2.Lease) -> None:
        super().__init__(
            lease.device.address,
            token=tracker._token,
            tls=tracker._tls,
            metadata=((LEASE_METADATA_KEY, lease.lease_id),),
        )
        self.tracker = tracker
        self.lease_id = lease.lease_id
        self.device_id = lease.device_id
        self.caps = Capabilities.from_proto(lease.device)
        self.key = self.caps.key
        self.ttl = lease.ttl_ms / 1000.0
        self.queued_s = lease.queued_s
        self.owner = lease.owner
        self.label = f"device {self.key!r} at {self.address}"
        self.lost = threading.Event()
        self._released = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{self.key}", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._released.wait(self.ttl / 3):
            try:
                self.tracker._stub.RenewLease(
                    tracker_pb2.LeaseRef(lease_id=self.lease_id), timeout=self.ttl / 3
                )
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("the lease on %s was lost: %s", self.label, e.details())
                    self.lost.set()
                    return
                log.warning("cannot renew the lease on %s: %s", self.label, e.details())

    def release(self) -> None:
        if self._released.is_set():
            return
        self._released.set()
        self._renewer.join(timeout=5)
        if not self.lost.is_set():
            with contextlib.suppress(grpc.RpcError):
                self.tracker._stub.ReleaseLease(tracker_pb2.LeaseRef(lease_id=self.lease_id), timeout=10)
        self.close()

    def __enter__(self) -> LeasedDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:  # never the lease id: it is a secret
        return f"LeasedDevice({self.key!r} at {self.address}, held by {self.owner or '?'})"


# ------------------------------------------------------------------------------------------------- tracker


@dataclass(frozen=True)
class QueueStatus:
    """Where a waiting request stands: ``position`` 1 is served next."""

    key: str
    position: int
    waiting: int
    devices: int
    waited_s: float

    def __str__(self) -> str:
        devs = f"{self.devices} device{'s' if self.devices != 1 else ''}"
        if not self.devices:
            devs = "no device registered yet"
        return (
            f"waiting for a {self.key!r} device: position {self.position} of {self.waiting} in the queue, "
            f"{devs}, waited {self.waited_s:.0f} s"
        )


@dataclass(frozen=True)
class DeviceStatus:
    device_id: str
    key: str
    target: str
    launcher: str
    runtime_version: str
    address: str
    state: str
    lease_holder: str
    last_seen_s: float
    runs_served: int
    queue: int
    cores: int = 0


class TrackerClient:
    """A connection to a tracker: lease devices, list them, read statistics."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: TLSConfig | None = None,
        client: str | None = None,
    ) -> None:
        self.address = address
        self._token = token
        self._tls = tls
        self.client = client or f"{os.environ.get('USER', 'user')}@{os.uname().nodename}:{os.getpid()}"
        self._channel = open_channel(address, token=token, tls=tls)
        self._stub = tracker_pb2_grpc.TrackerStub(self._channel)

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise _translate(
                e, f"tracker {self.address}", service="Tracker", tls=self._tls is not None
            ) from None

    def request(
        self,
        key: str,
        *,
        timeout: float = 60.0,
        priority: int = 0,
        progress: Callable[[QueueStatus], None] | None = None,
    ) -> LeasedDevice:
        """Wait up to ``timeout`` s in the queue of ``key`` and lease a device (higher priority first).
        ``progress`` is called with a :class:`QueueStatus` while the request waits (at once, when its position
        changes, and every few seconds)."""
        timeout = check_timeout(timeout, "queue timeout")
        req = tracker_pb2.DeviceRequest(
            key=key,
            priority=priority,
            timeout_ms=max(1, min(_MAX_TIMEOUT_MS, int(timeout * 1000))),
            client=self.client,
        )
        where = f"tracker {self.address}"
        stream = self._stub.RequestDevice(req, timeout=timeout + _DEADLINE_MARGIN_S)
        try:
            for update in stream:
                if update.HasField("lease"):
                    return LeasedDevice(self, update.lease)
                if progress is not None:
                    p = update.position
                    progress(QueueStatus(key, p.position, p.waiting, p.devices, p.waited_s))
        except grpc.RpcError as e:
            raise _translate(e, where, service="Tracker", tls=self._tls is not None) from None
        except BaseException:
            stream.cancel()  # Ctrl-C while queued: leave the queue at once
            raise
        raise RemoteError(f"{where} ended the request for {key!r} without a lease")

    def devices(self) -> list[DeviceStatus]:
        r = self._call("ListDevices", tracker_pb2.ListDevicesRequest(), 30.0)
        queues = {q.key: q.waiting for q in r.queues}
        return [
            DeviceStatus(
                d.device_id,
                d.caps.key,
                d.caps.target,
                d.caps.launcher,
                d.caps.runtime_version,
                d.caps.address,
                d.state,
                d.lease_holder,
                d.last_seen_s,
                d.runs_served,
                queues.get(d.caps.key, 0),
                d.caps.cores,
            )
            for d in r.devices
        ]

    def queues(self) -> dict[str, int]:
        r = self._call("ListDevices", tracker_pb2.ListDevicesRequest(), 30.0)
        return {q.key: q.waiting for q in r.queues}

    def stats(self) -> tracker_pb2.Stats:
        return self._call("GetStats", tracker_pb2.StatsRequest(), 30.0)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TrackerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    address: str,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls: TLSConfig | None = None,
    client: str | None = None,
) -> TrackerClient:
    """Connect to a tracker. The token defaults to $KILN_RPC_TOKEN / $KILN_RPC_TOKEN_FILE."""
    return TrackerClient(address, token=load_token(token, token_file), tls=tls, client=client)


def connect_device(
    address: str,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls: TLSConfig | None = None,
) -> RemoteDevice:
    """Connect to one device server directly, without a tracker."""
    return RemoteDevice(address, token=load_token(token, token_file), tls=tls)
