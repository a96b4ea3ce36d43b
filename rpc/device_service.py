"""The device server's logic: packages checked, runners started and kept, calls run on them.

Protocol rules
==============

Packages
    An uploaded archive enters the cache (:mod:`kiln.rpc.cache`, which checks its size and sha256) only if
    :meth:`kiln.package.kpkg.Package.load` accepts it: every member's sha256, no path traversal, a manifest
    (:class:`InvalidPackage`, ``INVALID_ARGUMENT`` otherwise). A package built for another target than the
    device's is refused (:class:`WrongTarget`, ``FAILED_PRECONDITION``).

Runners
    ``Load`` extracts a cached package and starts its runner through the launcher (local process, qemu-user,
    and later qemu-system, ssh, serial); the runner speaks the device protocol (:mod:`kiln.device.protocol`).
    The runner stays alive, so repeated ``Run`` calls do not respawn it; at most ``max_runners`` live at once
    (least recently used closed first). ``Run``, ``Time`` and ``Profile`` load the package on demand.
    The server never executes anything but the runner named by the manifest of a package that passed the
    checks above, and the cache never evicts a package whose runner is alive.

Timeouts and crashes
    Every call to a runner has a timeout (the request's ``timeout_ms``, else ``call_timeout`` plus the
    model's FLOPs at the slowest device rate, :func:`kiln.package.kpkg.run_timeout`). A runner
    that exceeds it is killed and the call fails with :class:`RunnerTimeout` (``DEADLINE_EXCEEDED``); a runner
    that crashes or exits fails the call with :class:`RunnerFailed` (``INTERNAL``) and a message naming the
    model and how it died. Either way the runner is discarded and the next call starts a fresh one: the server
    keeps serving. Inputs the model refuses fail with :class:`~kiln.rpc.cache.BadRequest`
    (``INVALID_ARGUMENT``) and leave the runner alone.

The errors here and in :mod:`kiln.rpc.cache` are :class:`~kiln.rpc.cache.DeviceServerError` subclasses;
the servicer (:class:`kiln.rpc.servicers.DeviceServicer`) maps them to the status codes named above.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kiln import runtime_c
from kiln.device import DeviceError, DeviceLost, DeviceTimeout, InputError, Launcher, Session
from kiln.package.kpkg import Package, PackageError, run_timeout
from kiln.rpc import device_pb2
from kiln.rpc.cache import BadRequest, DeviceServerError, PackageCache, check_sha
from kiln.rpc.common import Capabilities
from kiln.runtime_c import abi

log = logging.getLogger("kiln.rpc.device_service")

MAX_RUNNERS = 4
CALL_TIMEOUT_S = 120.0

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ errors


class InvalidPackage(DeviceServerError):
    """The archive is not a valid package, or has no runner for this device: ``INVALID_ARGUMENT``."""


class WrongTarget(DeviceServerError):
    """The package is built for another target: ``FAILED_PRECONDITION``."""


class RunnerTimeout(DeviceServerError):
    """The runner did not answer within the call's timeout and was killed: ``DEADLINE_EXCEEDED``."""


class RunnerFailed(DeviceServerError):
    """The runner crashed, exited, or answered with an error: ``INTERNAL``."""


@functools.cache
def runtime_fingerprint() -> str:
    """What a device server reports as its runtime (``Capabilities.runtime_version``):
    ``abi=A protocol=P runtime=H``, the model ABI version, the device-protocol version its sessions speak,
    and the first 12 hex digits of the hash of the C runtime sources of this kiln installation
    (:func:`kiln.runtime_c.runtime_hash`; a package built by the same kiln records the whole hash in its
    manifest as ``runtime.sha256``)."""
    return f"abi={abi.ABI_VERSION} protocol={abi.PROTOCOL_VERSION} runtime={runtime_c.runtime_hash()[:12]}"


# ------------------------------------------------------------------------------------------------ runners


@dataclass
class Runner:
    """A live runner process for one loaded package."""

    sha: str
    name: str
    manifest: dict[str, Any]
    session: Session
    workdir: Path
    lock: threading.Lock
    info_json: str = "{}"


class DeviceService:
    """The device server's logic: cache, runners, calls. Thread-safe."""

    def __init__(
        self,
        caps: Capabilities,
        launcher: Launcher,
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
        """Check a received archive (the cache's ``verify``): it must load as a package (every member's
        sha256, no path traversal, a manifest) and be built for this device's target."""
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
        check_sha(sha)
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
            r.info_json = json.dumps(dataclasses.asdict(info), default=str)
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

    def call(
        self, sha: str, fn: Callable[[Session], T], timeout_ms: int = 0, what: str = "run"
    ) -> tuple[T, float]:
        """Call ``fn(session)`` on the package's runner under its lock, with a timeout and crash isolation.
        Returns ``(result, seconds spent)``."""
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
