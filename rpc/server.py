"""The device server: fronts one device, runs verified packages on it, and registers with a tracker.

Protocol rules
==============

Packages
    A package is addressed by the sha256 of its ``.kpkg`` archive. ``Upload`` streams it in chunks; the first
    chunk names the sha256 and the total size. The server writes to a temporary file, refuses more than the
    announced size or ``max_upload_bytes`` (``RESOURCE_EXHAUSTED``), then checks the sha256
    (``DATA_LOSS`` on a mismatch) and the archive itself with :meth:`kiln.package.kpkg.Package.load` (every
    member's sha256, no path traversal, a manifest; ``INVALID_ARGUMENT`` otherwise). Only then does the file
    enter the cache, atomically. A rejected upload leaves the cache untouched.

Cache
    The cache holds at most ``cache_bytes``; when a new package does not fit, the least recently used
    packages that have no live runner are evicted. A package larger than the whole cache is refused.

Runners
    ``Load`` extracts a cached package and starts its runner through the launcher (local process, qemu-user,
    and later qemu-system, ssh, serial); the runner speaks the device protocol (:mod:`kiln.device.protocol`).
    The runner stays alive, so repeated ``Run`` calls do not respawn it; at most ``max_runners`` live at once
    (least recently used closed first). ``Run``, ``Time`` and ``Profile`` load the package on demand.
    The server never executes anything but the runner of a package that passed the checks above, and refuses
    a package built for another target (``FAILED_PRECONDITION``).

Timeouts and crashes
    Every call to a runner has a timeout (the request's ``timeout_ms``, else ``call_timeout`` plus the
    model's FLOPs at the slowest device rate, :func:`kiln.package.kpkg.run_timeout`). A runner
    that exceeds it is killed and the call fails with ``DEADLINE_EXCEEDED``; a runner that crashes or exits
    fails the call with ``INTERNAL`` and a message naming the model and how it died. Either way the runner is
    discarded and the next call starts a fresh one: the server keeps serving.

Tracker
    With a tracker address, the server registers its capabilities and heartbeats at the interval the tracker
    asks for. A heartbeat answered ``NOT_FOUND`` (the tracker restarted, or dropped the device) makes it
    register again at once; while the tracker is unreachable it retries every ``retry_interval``.

Message size bounds
    One message is at most :data:`kiln.rpc.wire.MAX_DEVICE_MESSAGE_BYTES` (64 MiB of tensors plus framing);
    upload chunks are at most ``UPLOAD_CHUNK_BYTES`` each, the whole upload at most ``max_upload_bytes``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from kiln.rpc import device_pb2, device_pb2_grpc, tracker_pb2, tracker_pb2_grpc, wire
from kiln.rpc.auth import ServerSecurity, TLSConfig, open_channel
from kiln.rpc.tracker import Capabilities

log = logging.getLogger("kiln.rpc.server")

UPLOAD_CHUNK_BYTES = 1024 * 1024
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
CACHE_BYTES = 1024 * 1024 * 1024
MAX_RUNNERS = 4
CALL_TIMEOUT_S = 120.0


# ------------------------------------------------------------------------------------------------ errors


class DeviceServerError(Exception):
    """A request the device server refuses or could not complete; subclasses map to gRPC status codes."""


class BadRequest(DeviceServerError):
    pass


class NotCached(DeviceServerError):
    pass


class TooLarge(DeviceServerError):
    pass


class CorruptUpload(DeviceServerError):
    pass


class InvalidPackage(DeviceServerError):
    pass


class WrongTarget(DeviceServerError):
    pass


class RunnerTimeout(DeviceServerError):
    pass


class RunnerFailed(DeviceServerError):
    """The runner crashed, exited, or answered with an error."""


_STATUS: dict[type[DeviceServerError], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotCached: grpc.StatusCode.NOT_FOUND,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CorruptUpload: grpc.StatusCode.DATA_LOSS,
    InvalidPackage: grpc.StatusCode.INVALID_ARGUMENT,
    WrongTarget: grpc.StatusCode.FAILED_PRECONDITION,
    RunnerTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    RunnerFailed: grpc.StatusCode.INTERNAL,
}


def _check_sha(sha: str) -> str:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BadRequest(f"{sha[:80]!r} is not a lowercase hex sha256")
    return sha


# ------------------------------------------------------------------------------------------------- cache


class PackageCache:
    """Content-addressed, size-bounded, LRU cache of verified package archives in ``root``."""

    def __init__(self, root: Path, limit_bytes: int = CACHE_BYTES, max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        self.max_upload_bytes = max_upload_bytes
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict()  # sha -> bytes, least recent first
        for p in sorted(self.root.glob("*.kpkg"), key=lambda p: p.stat().st_mtime):
            self._lru[p.stem] = p.stat().st_size
        for p in self.root.glob("*.part"):
            p.unlink(missing_ok=True)

    def path(self, sha: str) -> Path:
        return self.root / f"{sha}.kpkg"

    def has(self, sha: str) -> bool:
        with self._lock:
            return sha in self._lru

    def touch(self, sha: str) -> Path:
        with self._lock:
            if sha not in self._lru:
                raise NotCached(f"package {sha[:12]} is not on this device; upload it first")
            self._lru.move_to_end(sha)
            return self.path(sha)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._lru.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)

    def receive(
        self,
        chunks: Iterator[device_pb2.UploadChunk],
        verify: Callable[[Path], None],
        pinned: Callable[[], set[str]] = set,
    ) -> tuple[str, int]:
        """Write an upload stream to a temporary file, verify it, and move it into the cache."""
        first = next(chunks, None)
        if first is None:
            raise BadRequest("empty upload")
        sha, size = _check_sha(first.sha256), first.size
        if size > self.max_upload_bytes:
            raise TooLarge(
                f"package of {size} bytes exceeds this device's upload limit of {self.max_upload_bytes}"
            )
        if size > self.limit_bytes:
            raise TooLarge(
                f"package of {size} bytes does not fit this device's cache of {self.limit_bytes} bytes"
            )
        fd, tmp_name = tempfile.mkstemp(dir=self.root, suffix=".part")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            got = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in _chain(first, chunks):
                    got += len(chunk.data)
                    if got > size:
                        raise CorruptUpload(f"upload of {sha[:12]} sent more than the announced {size} bytes")
                    h.update(chunk.data)
                    f.write(chunk.data)
            if got != size:
                raise CorruptUpload(f"upload of {sha[:12]} ended after {got} of {size} bytes")
            if h.hexdigest() != sha:
                raise CorruptUpload(
                    f"upload does not match its sha256: announced {sha[:12]}, received {h.hexdigest()[:12]}"
                )
            verify(tmp)
            with self._lock:
                self._evict_locked(size, pinned())
                os.replace(tmp, self.path(sha))
                self._lru[sha] = size
                self._lru.move_to_end(sha)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def _evict_locked(self, need: int, pinned: set[str]) -> None:
        total = sum(self._lru.values())
        for sha in list(self._lru):
            if total + need <= self.limit_bytes:
                return
            if sha in pinned:
                continue
            total -= self._lru.pop(sha)
            self.path(sha).unlink(missing_ok=True)
            log.info("evicted package %s from the cache", sha[:12])
        if total + need > self.limit_bytes:
            raise TooLarge(f"cache full: {total} of {self.limit_bytes} bytes held by loaded packages")


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


# ------------------------------------------------------------------------------------------------ runners


@dataclass
class Runner:
    """A live runner process for one loaded package."""

    sha: str
    name: str
    manifest: dict[str, Any]
    session: Any  # kiln.device.protocol.Session
    workdir: Path
    lock: threading.Lock
    info_json: str = "{}"


class DeviceService:
    """The device server's logic: cache, runners, calls. Thread-safe."""

    def __init__(
        self,
        caps: Capabilities,
        launcher: Any,  # kiln.device.launchers.Launcher
        cache: PackageCache,
        *,
        max_runners: int = MAX_RUNNERS,
        call_timeout: float = CALL_TIMEOUT_S,
    ) -> None:
        self.caps = caps
        self.launcher = launcher
        self.cache = cache
        self.max_runners = max_runners
        self.call_timeout = call_timeout
        self.runs_served = 0
        self._lock = threading.Lock()
        self._runners: OrderedDict[str, Runner] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._workroot = Path(tempfile.mkdtemp(prefix="kiln-device-"))

    # ---- packages

    def verify_package(self, path: Path) -> None:
        from kiln.package.kpkg import Package, PackageError

        try:
            pkg = Package.load(path)
        except PackageError as e:
            raise InvalidPackage(f"package rejected: {e}") from e
        target = pkg.manifest.get("target")
        if isinstance(target, dict):
            target = target.get("name")
        if self.caps.target and target and target != self.caps.target:
            raise WrongTarget(
                f"package {pkg.manifest.get('name')!r} is built for {target}, "
                f"this device is {self.caps.target}"
            )

    def upload(self, chunks: Iterator[device_pb2.UploadChunk]) -> tuple[str, int]:
        return self.cache.receive(chunks, self.verify_package, self.loaded)

    def loaded(self) -> set[str]:
        with self._lock:
            return set(self._runners)

    # ---- runners

    def load(self, sha: str) -> Runner:
        _check_sha(sha)
        with self._lock:
            r = self._runners.get(sha)
            if r is not None:
                self._runners.move_to_end(sha)
                return r
            gate = self._loading.setdefault(sha, threading.Lock())
        with gate:
            with self._lock:
                r = self._runners.get(sha)
                if r is not None:
                    return r
            r = self._start(sha)
            evict: list[Runner] = []
            with self._lock:
                self._runners[sha] = r
                while len(self._runners) > self.max_runners:
                    _, old = self._runners.popitem(last=False)
                    evict.append(old)
            for old in evict:
                self._close(old)
            return r

    def _start(self, sha: str) -> Runner:
        from kiln.package.kpkg import Package, PackageError

        path = self.cache.touch(sha)
        try:
            pkg = Package.load(path)
        except PackageError as e:  # the cached file was tampered with after the upload
            raise InvalidPackage(f"cached package {sha[:12]} no longer verifies: {e}") from e
        workdir = self._workroot / sha
        shutil.rmtree(workdir, ignore_errors=True)
        pkg.extract(workdir)
        manifest = pkg.manifest
        name = str(manifest.get("name", sha[:12]))
        runnable = manifest.get("runnable")
        if not runnable or runnable not in pkg.files:  # only a verified member of the package ever runs
            shutil.rmtree(workdir, ignore_errors=True)
            raise InvalidPackage(f"package {name!r} has no runnable for this device (runnable: {runnable!r})")
        try:
            session = self.launcher.start(workdir / runnable, timeout=self.call_timeout)
        except Exception as e:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RunnerFailed(
                f"cannot start the runner of {name!r} with the {self.caps.launcher} launcher: {e}"
            ) from e
        r = Runner(sha, name, manifest, session, workdir, threading.Lock())
        try:
            info = session.info()
            r.info_json = json.dumps(dataclasses.asdict(info), default=str)  # a protocol.DeviceInfo
        except Exception as e:
            self._close(r)
            raise RunnerFailed(f"runner of {name!r} did not answer INFO: {e}") from e
        log.info("started runner for %s (%s)", name, sha[:12])
        return r

    def unload(self, sha: str) -> None:
        with self._lock:
            r = self._runners.pop(sha, None)
        if r is not None:
            self._close(r)

    def _close(self, r: Runner) -> None:
        with contextlib.suppress(Exception):
            r.session.close()
        shutil.rmtree(r.workdir, ignore_errors=True)

    def _discard(self, r: Runner) -> None:
        with self._lock:
            if self._runners.get(r.sha) is r:
                del self._runners[r.sha]
        self._close(r)

    def call(self, sha: str, fn: Callable[[Any], Any], timeout_ms: int = 0, what: str = "run") -> Any:
        """Call ``fn(session)`` on the package's runner under its lock, with a timeout and crash isolation.
        Returns ``(result, seconds spent)``."""
        from kiln.device.protocol import DeviceError, DeviceLost, DeviceTimeout, InputError
        from kiln.package.kpkg import run_timeout

        r = self.load(sha)
        timeout = timeout_ms / 1000.0 if timeout_ms else run_timeout(r.manifest, self.call_timeout)
        with r.lock:
            if self._runners.get(sha) is not r:  # discarded (crashed) while we waited for the lock
                return self.call(sha, fn, timeout_ms, what)
            r.session.timeout = timeout
            t0 = time.perf_counter()
            try:
                out = fn(r.session)
            except DeviceTimeout as e:
                self._discard(r)
                raise RunnerTimeout(
                    f"{what} of {r.name!r} did not finish within {timeout:g} s; the runner was killed "
                    "and the next call starts a new one"
                ) from e
            except DeviceLost as e:
                self._discard(r)
                raise RunnerFailed(f"runner of {r.name!r} died during {what}: {e}") from e
            except InputError as e:
                raise BadRequest(f"{what} of {r.name!r}: {e}") from e
            except DeviceError as e:
                if not r.session.alive:  # protocol error: the session cannot be trusted any more
                    self._discard(r)
                raise RunnerFailed(f"{what} of {r.name!r} failed on the device: {e}") from e
            except ValueError as e:
                raise BadRequest(f"{what} of {r.name!r}: {e}") from e
            with self._lock:
                self.runs_served += 1
            return out, time.perf_counter() - t0

    def close(self) -> None:
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for r in runners:
            self._close(r)
        shutil.rmtree(self._workroot, ignore_errors=True)


def runtime_version() -> str:
    """The device-protocol version this server's runners speak (reported to the tracker)."""
    try:
        from kiln.device import protocol
    except ImportError:
        return "unknown"
    return str(getattr(protocol, "PROTOCOL_VERSION", "unknown"))


# ------------------------------------------------------------------------------------------------ servicer


def _abort(context: grpc.ServicerContext, e: DeviceServerError) -> NoReturn:
    context.abort(_STATUS.get(type(e), grpc.StatusCode.UNKNOWN), str(e))
    raise AssertionError("unreachable: context.abort raises")


class DeviceServicer(device_pb2_grpc.DeviceServicer):
    """Translates Device RPCs to :class:`DeviceService` calls."""

    def __init__(self, service: DeviceService) -> None:
        self.s = service

    def Info(self, request, context):
        s = self.s
        return device_pb2.DeviceInfo(
            caps=s.caps.to_proto(),
            runs_served=s.runs_served,
            packages_cached=len(s.cache),
            cache_bytes=s.cache.total_bytes,
            cache_limit_bytes=s.cache.limit_bytes,
            max_upload_bytes=s.cache.max_upload_bytes,
            loaded=sorted(s.loaded()),
        )

    def Health(self, request, context):
        return device_pb2.HealthReply(serving=True)

    def HasPackage(self, request, context):
        return device_pb2.HasPackageReply(cached=self.s.cache.has(request.sha256))

    def Upload(self, request_iterator, context):
        try:
            sha, size = self.s.upload(request_iterator)
        except DeviceServerError as e:
            _abort(context, e)
        return device_pb2.UploadReply(sha256=sha, size=size)

    def Load(self, request, context):
        try:
            r = self.s.load(request.sha256)
        except DeviceServerError as e:
            _abort(context, e)
        return device_pb2.LoadReply(sha256=r.sha, manifest_json=json.dumps(r.manifest), info_json=r.info_json)

    def Unload(self, request, context):
        self.s.unload(request.sha256)
        return device_pb2.UnloadReply()

    def Run(self, request, context):
        try:
            inputs = _inputs(request.inputs)
            outputs, dt = self.s.call(request.sha256, lambda sess: sess.run(inputs), request.timeout_ms)
        except DeviceServerError as e:
            _abort(context, e)
        return device_pb2.RunReply(outputs=wire.pack(outputs), device_s=dt)

    def Time(self, request, context):
        def fn(sess: Any) -> Any:
            if inputs:
                sess.set_inputs(inputs)
            return sess.time(request.number or 1, request.repeat or 1, request.min_repeat_ms)

        try:
            inputs = _inputs(request.inputs)
            secs, _ = self.s.call(request.sha256, fn, request.timeout_ms, what="time")
        except DeviceServerError as e:
            _abort(context, e)
        return device_pb2.TimeReply(seconds=list(secs))

    def Profile(self, request, context):
        def fn(sess: Any) -> Any:
            if inputs:
                sess.set_inputs(inputs)
            return sess.profile()

        try:
            inputs = _inputs(request.inputs)
            prof, _ = self.s.call(request.sha256, fn, request.timeout_ms, what="profile")
        except DeviceServerError as e:
            _abort(context, e)
        return device_pb2.ProfileReply(profile_json=prof.to_json())


def _inputs(tensors: Any) -> dict[str, Any]:
    try:
        return wire.unpack(tensors)
    except wire.TensorError as e:
        raise BadRequest(str(e)) from e


# ------------------------------------------------------------------------------------------------ tracker


class TrackerAgent:
    """Keeps a device registered with a tracker: register, heartbeat, register again on NOT_FOUND or after
    the tracker comes back (see "Tracker" in the module docstring)."""

    def __init__(
        self,
        tracker_address: str,
        caps: Capabilities,
        *,
        token: str | None = None,
        tls: TLSConfig | None = None,
        runs_served: Callable[[], int] = lambda: 0,
        retry_interval: float = 1.0,
    ) -> None:
        self.tracker_address = tracker_address
        self.caps = caps
        self.runs_served = runs_served
        self.retry_interval = retry_interval
        self.device_id: str | None = None
        self.registrations = 0
        self.registered = threading.Event()
        # Reconnect quickly after a tracker restart instead of gRPC's default backoff of up to two minutes.
        backoff_ms = max(100, int(retry_interval * 1000))
        self._channel = open_channel(
            tracker_address,
            token=token,
            tls=tls,
            options=[
                ("grpc.initial_reconnect_backoff_ms", backoff_ms),
                ("grpc.min_reconnect_backoff_ms", backoff_ms),
                ("grpc.max_reconnect_backoff_ms", max(backoff_ms, 2000)),
            ],
        )
        self._stub = tracker_pb2_grpc.TrackerStub(self._channel)
        self._outage = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"agent-{caps.key}", daemon=True)

    def start(self) -> TrackerAgent:
        self._thread.start()
        return self

    def _loop(self) -> None:
        interval = self.retry_interval
        while not self._stop.is_set():
            try:
                if self.device_id is None:
                    reply = self._stub.Register(
                        tracker_pb2.RegisterRequest(caps=self.caps.to_proto()), timeout=max(1.0, interval)
                    )
                    self.device_id = reply.device_id
                    self.registrations += 1
                    interval = reply.heartbeat_interval_ms / 1000.0
                    self.registered.set()
                    self._outage = False
                    log.info("registered with tracker %s as %s", self.tracker_address, self.device_id)
                else:
                    self._stub.Heartbeat(
                        tracker_pb2.HeartbeatRequest(
                            device_id=self.device_id, runs_served=self.runs_served()
                        ),
                        timeout=max(1.0, interval),
                    )
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.NOT_FOUND:
                    log.warning(
                        "tracker %s forgot device %s; registering again", self.tracker_address, self.device_id
                    )
                    self.device_id = None
                    self.registered.clear()
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("tracker %s rejected this device: %s", self.tracker_address, e.details())
                elif not self._outage:
                    log.warning(
                        "tracker %s unreachable (%s); retrying every %.1f s",
                        self.tracker_address,
                        code.name if code else e,
                        self.retry_interval,
                    )
                self._outage = True
                if self.device_id is None:
                    self._stop.wait(self.retry_interval)
                    continue
            self._stop.wait(interval if self.device_id else self.retry_interval)

    def stop(self, unregister: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if unregister and self.device_id:
            with contextlib.suppress(grpc.RpcError):
                self._stub.Unregister(tracker_pb2.DeviceRef(device_id=self.device_id), timeout=1.0)
        self._channel.close()


# ------------------------------------------------------------------------------------------------- server


class DeviceServer:
    """A gRPC Device server for one device, optionally registered with a tracker."""

    def __init__(
        self,
        *,
        key: str,
        target: str,
        launcher: Any,
        security: ServerSecurity,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_bytes: int = CACHE_BYTES,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_runners: int = MAX_RUNNERS,
        call_timeout: float = CALL_TIMEOUT_S,
        tracker: str | None = None,
        tracker_token: str | None = None,
        tracker_tls: TLSConfig | None = None,
        retry_interval: float = 1.0,
        max_workers: int = 16,
    ) -> None:
        self.host = host
        self._own_cache = cache_dir is None
        root = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="kiln-cache-"))
        self.cache = PackageCache(root, cache_bytes, max_upload_bytes)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="device"),
            interceptors=security.interceptors(),
            options=[
                ("grpc.max_receive_message_length", wire.MAX_DEVICE_MESSAGE_BYTES),
                ("grpc.max_send_message_length", wire.MAX_DEVICE_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.port = security.add_port(self._server, host, port)
        launcher_name = getattr(launcher, "name", type(launcher).__name__)
        self.caps = Capabilities(
            key=key,
            target=target,
            launcher=str(launcher_name),
            runtime_version=runtime_version(),
            address=advertise or f"{host}:{self.port}",
        )
        self.service = DeviceService(
            self.caps, launcher, self.cache, max_runners=max_runners, call_timeout=call_timeout
        )
        device_pb2_grpc.add_DeviceServicer_to_server(DeviceServicer(self.service), self._server)
        self.agent = (
            TrackerAgent(
                tracker,
                self.caps,
                token=tracker_token,
                tls=tracker_tls,
                runs_served=lambda: self.service.runs_served,
                retry_interval=retry_interval,
            )
            if tracker
            else None
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> DeviceServer:
        self._server.start()
        if self.agent:
            self.agent.start()
        log.info(
            "device server %s (%s, %s) listening on %s",
            self.caps.key,
            self.caps.target,
            self.caps.launcher,
            self.address,
        )
        return self

    def stop(self, grace: float | None = 0.5) -> None:
        if self.agent:
            self.agent.stop()
        self._server.stop(grace).wait()
        self.service.close()
        if self._own_cache:
            shutil.rmtree(self.cache.root, ignore_errors=True)

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> DeviceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
