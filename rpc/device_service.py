"""The device server's logic: leases checked, packages checked, runners started, confined and kept, calls run.

Protocol rules
==============

Leases
    A device server registered with a tracker serves one lease holder at a time. Every call but ``Info`` and
    ``Health`` must carry a lease id (metadata ``kiln-lease``) that the tracker confirms is a live lease of
    this device (``VerifyLease``); the answer is cached until the lease could next expire, at most
    :data:`LEASE_RECHECK_S`. With per-client tokens the caller's identity must also own the lease. A call
    without a valid lease fails with :class:`NotLeased` (``PERMISSION_DENIED``); a tracker that cannot be
    asked fails it with :class:`TrackerUnreachable` (``UNAVAILABLE``). When a new lease is confirmed, or the
    tracker's heartbeat reply names another lease (or none), or the tracker forgets the device, the previous
    lease is *revoked on the device*: its calls are cancelled, every runner is killed and its directory
    removed, and only then does the new holder's call proceed. A device server without a tracker (direct
    use) authorizes calls by token alone.

Packages
    An uploaded archive enters the cache (:mod:`kiln.rpc.cache`, which checks its size and sha256) only if
    :func:`kiln.package.kpkg.unpack` accepts it, streaming under hard limits: every member's sha256, only
    plain regular files (no links, devices or sparse members), no path traversal, no file that is also a
    directory, a manifest with a target name and a valid ``flops`` (:class:`InvalidPackage`,
    ``INVALID_ARGUMENT`` otherwise). A package built for another target than the device's is refused
    (:class:`WrongTarget`, ``FAILED_PRECONDITION``). A package is visible only to the identities that
    uploaded it. At most :data:`MAX_UPLOADS` uploads run at once (more: ``RESOURCE_EXHAUSTED``); an upload
    that sends nothing for :data:`UPLOAD_IDLE_S`, or takes longer than :data:`UPLOAD_BASE_S` plus its size at
    :data:`UPLOAD_MIN_BYTES_PER_S`, is cancelled.

Runners
    ``Load`` extracts a cached package (again streaming, into a fresh directory that exists only complete)
    and starts its runner through the launcher, confined by :class:`kiln.device.launchers.Isolation`: clean
    environment, its own directory as working directory, rlimits, no_new_privs, and when the server runs as
    root a dedicated uid per runner slot, private /tmp and no network (docs/how-to/device-farm.md, "What a
    runner can reach"). The runner stays alive, so repeated ``Run`` calls do not respawn it; at most
    ``max_runners`` live at once. Loading one more closes the least recently used runner that is *idle*; a
    runner with a call in flight is never closed for room (if all are busy the load fails with
    :class:`DeviceBusy`, ``RESOURCE_EXHAUSTED``). The server never executes anything but the runner named by
    the manifest of a package that passed the checks above, and the cache never evicts a package whose runner
    is alive.

Threads
    A session may ask for the size of its runner's thread pool (``threads`` in ``Load``, ``Run``, ``Time``,
    ``Profile``): absent, the package's default (``kiln compile --threads``); 0, one per core of the device;
    else 1 to the device's core count (``Capabilities.cores``: the CPUs this server may use, or ``kiln serve
    --cores``). The server starts the runner with ``--threads N``; one package loaded with two thread counts
    has two runners. A count over the device's cores, a count above 1 on a bare-metal device (its firmware
    runs on one thread) and a count on a device whose launcher cannot pass one to the runner (``ssh``,
    ``serial``) fail with :class:`BadThreads` (``INVALID_ARGUMENT``) saying what to ask for instead.

Timeouts, cancellation and crashes
    Every call to a runner has a timeout: the request's ``timeout_ms`` if given, else the model's budget
    (:func:`kiln.package.kpkg.run_timeout`), and never more than the server's ``call_timeout`` (``kiln serve
    --call-timeout``), which bounds TIME and PROFILE too. A runner that exceeds it is killed and the call fails
    with :class:`RunnerTimeout` (``DEADLINE_EXCEEDED``). A call whose client goes away (cancelled, deadline
    passed, disconnected) kills its runner at once: no device keeps computing for nobody, and the device is
    busy until the runner is gone. A runner that crashes or exits fails the call with :class:`RunnerFailed`
    (``INTERNAL``) naming the model and how it died. Either way the runner is discarded and the next call
    starts a fresh one: the server keeps serving. Inputs the model refuses, and TIME arguments out of range,
    fail with :class:`~kiln.rpc.cache.BadRequest` (``INVALID_ARGUMENT``) and leave the runner alone.

Crash recovery
    The work root holds a record (pid and start time) of every live runner. A server that starts over a work
    root left by a killed server kills the runners recorded there (and, as root, every process of the runner
    uids) and empties it before serving.

The errors here and in :mod:`kiln.rpc.cache` are :class:`~kiln.rpc.cache.DeviceServerError` subclasses;
the servicer (:class:`kiln.rpc.servicers.DeviceServicer`) maps them to the status codes named above.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import itertools
import json
import logging
import math
import os
import secrets
import shutil
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kiln import runtime_c
from kiln.device import DeviceError, DeviceLost, DeviceTimeout, InputError, Launcher, Session
from kiln.device.launchers import Isolation, ProcessLauncher
from kiln.package.kpkg import PackageError, run_timeout, unpack
from kiln.rpc import device_pb2
from kiln.rpc.cache import BadRequest, DeviceServerError, PackageCache, check_sha
from kiln.rpc.common import Capabilities
from kiln.runtime_c import abi
from kiln.targets import get_target

log = logging.getLogger("kiln.rpc.device_service")

MAX_RUNNERS = 4
CALL_TIMEOUT_S = 120.0
LEASE_RECHECK_S = 30.0
MAX_UPLOADS = 2
UPLOAD_IDLE_S = 30.0
UPLOAD_BASE_S = 60.0
UPLOAD_MIN_BYTES_PER_S = 1 << 20
RUNNER_UID_BASE = 3_000_000_000
UID_BLOCK = 64  # runner uids per device server: slot i of the server holding block b runs as base + 64 b + i
UID_BLOCKS = 4096

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


class NotLeased(DeviceServerError):
    """The call carries no lease, or one that is not this device's live lease, or another identity's:
    ``PERMISSION_DENIED``."""


class TrackerUnreachable(DeviceServerError):
    """The lease cannot be checked because the tracker does not answer: ``UNAVAILABLE``."""


class BadThreads(DeviceServerError):
    """A thread count this device cannot give a session: ``INVALID_ARGUMENT``."""


class DeviceBusy(DeviceServerError):
    """Every runner slot, upload slot or worker is taken by calls in flight: ``RESOURCE_EXHAUSTED``."""


class Cancelled(DeviceServerError):
    """The call was cancelled (its client left, or its lease was revoked): ``CANCELLED``."""


@functools.cache
def runtime_fingerprint() -> str:
    """What a device server reports as its runtime (``Capabilities.runtime_version``):
    ``abi=A protocol=P runtime=H``, the model ABI version, the device-protocol version its sessions speak,
    and the first 12 hex digits of the hash of the C runtime sources of this kiln installation
    (:func:`kiln.runtime_c.runtime_hash`; a package built by the same kiln records the whole hash in its
    manifest as ``runtime.sha256``)."""
    return f"abi={abi.ABI_VERSION} protocol={abi.PROTOCOL_VERSION} runtime={runtime_c.runtime_hash()[:12]}"


def bare_metal_target(target: str) -> bool:
    """Whether ``target`` (a target name; "" or unknown: no) is a bare-metal one."""
    try:
        return bool(target) and get_target(target).is_bare_metal
    except (LookupError, ValueError):
        return False


def device_cores(launcher: Launcher, bare_metal: bool) -> int:
    """The cores a device's runners may use, as a device server reports them (``Capabilities.cores``): 1 for
    bare-metal firmware, the CPUs this process may run on for runners started here (``local``, ``qemu-user``:
    QEMU runs each guest thread on a host thread), 0 (unknown: sessions cannot ask for a thread count) for a
    launcher that starts the runner elsewhere."""
    if bare_metal:
        return 1
    if isinstance(launcher, ProcessLauncher):
        return min(len(os.sched_getaffinity(0)), abi.THREADS_MAX)
    return 0


# ----------------------------------------------------------------------------------------------- helpers


class Watchdog:
    """One thread that runs callbacks at deadlines (kill a runner, cancel a stalled upload). Arming and
    disarming cost a heap operation, not a thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Alarm]] = []
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="device-watchdog", daemon=True)
        self._stopped = False
        self._wake_at = -math.inf
        self._thread.start()

    def arm(self, delay: float, fn: Callable[[], None]) -> Alarm:
        alarm = Alarm(fn)
        at = time.monotonic() + delay
        with self._cond:
            heapq.heappush(self._heap, (at, next(self._seq), alarm))
            if (
                at < self._wake_at
            ):  # wake the thread only if it sleeps past this deadline (rarely: it is a hot path)
                self._cond.notify()
        return alarm

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    while self._heap and self._heap[0][2].disarmed:
                        heapq.heappop(self._heap)
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        alarm = heapq.heappop(self._heap)[2]
                        break
                    self._wake_at = self._heap[0][0] if self._heap else math.inf
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                    self._wake_at = -math.inf  # awake: arm() need not notify
                else:
                    return
            alarm.fire()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()


class Alarm:
    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self.disarmed = False
        self.fired = False

    def fire(self) -> None:
        with self._lock:
            if self.disarmed:
                return
            self.fired = self.disarmed = True
        try:
            self._fn()
        except Exception:  # pragma: no cover - never let the watchdog die
            log.exception("watchdog callback failed")

    def cancel(self) -> None:
        with self._lock:
            self.disarmed = True


class CancelToken:
    """Cancellation of one call: the servicer fires it when the client goes away; the service binds what
    cancelling means while the call runs (kill its runner)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fn: Callable[[], None] | None = None
        self.fired = False

    def bind(self, fn: Callable[[], None] | None) -> None:
        with self._lock:
            self._fn = fn
            fire = self.fired and fn is not None
        if fire:
            assert fn is not None
            fn()

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            fn = self._fn
        if fn is not None:
            fn()


@dataclass
class _Lease:
    lease_id: str
    owner: str
    valid_until: float
    verified_at: float
    inflight: int = 0
    revoked: bool = False
    tokens: set[CancelToken] = field(default_factory=set)


#: verify(lease_id) -> (owner, seconds the lease is valid at least); raises NotLeased / TrackerUnreachable.
LeaseVerifier = Callable[[str], tuple[str, float]]


# ------------------------------------------------------------------------------------------------ runners


@dataclass
class Runner:
    """A live runner process for one loaded package of one owner."""

    key: tuple[str, str, int | None]  # (owner, sha, threads asked for: None = the package's default)
    name: str
    manifest: dict[str, Any]
    session: Session
    workdir: Path
    lock: threading.Lock
    slot: int
    info_json: str = "{}"
    threads: int = 1  # the size of its thread pool (0: the package's default of one per CPU, count unknown)

    @property
    def sha(self) -> str:
        return self.key[1]


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _claim_uid_block(base: int) -> tuple[int, int]:
    """The first uid block no running device server on this host holds: (its first uid, the fd of its lock
    file, held open for the server's lifetime; a server that dies releases it with its fds)."""
    import fcntl
    import tempfile

    d = Path(tempfile.gettempdir()) / "kiln-runner-uids"
    d.mkdir(mode=0o700, exist_ok=True)
    for b in range(UID_BLOCKS):
        fd = os.open(d / f"{b}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return base + b * UID_BLOCK, fd
    raise RuntimeError(f"all {UID_BLOCKS} runner uid blocks are in use on this host")


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a runner uid: only runners and what they started run as it)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if d.stat().st_uid == uid:
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


class DeviceService:
    """The device server's logic: leases, cache, runners, calls. Thread-safe.

    ``workroot`` is a directory this service owns exclusively (runner directories and records); it is
    cleaned of a previous server's leftovers at start. ``isolation`` confines runners started by a
    process launcher (None: no confinement, for tests of the service itself); ``runner_uid_base`` gives runner
    slot i the uid ``base + i`` when the server runs as root (None: keep the server's uid).
    ``verify_lease`` (set when the server is registered with a tracker) turns lease enforcement on."""

    def __init__(
        self,
        caps: Capabilities,
        launcher: Launcher,
        cache: PackageCache,
        *,
        workroot: Path | None = None,
        max_runners: int = MAX_RUNNERS,
        call_timeout: float = CALL_TIMEOUT_S,
        isolation: Isolation | None = None,
        runner_uid_base: int | None = RUNNER_UID_BASE,
        verify_lease: LeaseVerifier | None = None,
        max_uploads: int = MAX_UPLOADS,
        max_calls: int = 12,
    ) -> None:
        if not (math.isfinite(call_timeout) and call_timeout > 0):
            raise ValueError(f"call_timeout must be a positive number of seconds, not {call_timeout!r}")
        self.caps = caps
        self.bare_metal = bare_metal_target(caps.target)
        self.launcher = launcher
        self.cache = cache
        self.max_runners = max_runners
        self.call_timeout = call_timeout
        self.isolation = isolation
        if max_runners > UID_BLOCK:
            raise ValueError(f"at most {UID_BLOCK} runners per device server")
        root = os.geteuid() == 0
        self.runner_uid_base: int | None = None
        self._uid_lock_fd: int | None = None
        if root and isolation is not None and runner_uid_base is not None:
            self.runner_uid_base, self._uid_lock_fd = _claim_uid_block(runner_uid_base)
        self.verify_lease = verify_lease
        self.runs_served = 0
        self.watchdog = Watchdog()
        self._lock = threading.Lock()
        self._runners: OrderedDict[tuple[str, str, int | None], Runner] = OrderedDict()
        self._loading: dict[tuple[str, str, int | None], threading.Lock] = {}
        self._free_slots = list(range(max_runners))
        self._lease_lock = threading.Condition()
        self._lease: _Lease | None = None
        self._uploads = threading.BoundedSemaphore(max_uploads)
        self._calls = threading.BoundedSemaphore(max_calls)
        self.max_calls = max_calls
        self._own_workroot = workroot is None
        if workroot is None:
            import tempfile

            workroot = Path(tempfile.mkdtemp(prefix="kiln-device-"))
        self._workroot = Path(workroot)
        self._workroot.mkdir(parents=True, exist_ok=True)
        self.reap()
        self._workroot.chmod(0o711)  # runners pass through to their own directory; nobody lists it

    # ---- crash recovery

    def reap(self) -> int:
        """Kill the runners a previous server left in the work root and empty it; returns how many runners
        were killed."""
        killed = 0
        for rec in self._workroot.glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid_s, start = rec.read_text().split()
                pid = int(pid_s)
                if _proc_start_time(pid) == start:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                    log.warning("killed runner pid %d left by a previous device server", pid)
        if self.runner_uid_base is not None:
            for slot in range(self.max_runners):
                _kill_uid(self.runner_uid_base + slot)
        for p in self._workroot.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return killed

    # ---- leases

    @contextlib.contextmanager
    def leased(self, caller: str, caller_is_admin: bool, lease_id: str | None) -> Iterator[str]:
        """Authorize one call and hold the device for it; yields the owner (whose packages and runners the
        call may use). See "Leases" in the module docstring."""
        if self.verify_lease is None:
            yield caller
            return
        lease = self._acquire_lease(caller, caller_is_admin, lease_id)
        try:
            yield lease.owner
        finally:
            with self._lease_lock:
                lease.inflight -= 1
                self._lease_lock.notify_all()

    def _acquire_lease(self, caller: str, caller_is_admin: bool, lease_id: str | None) -> _Lease:
        if not lease_id:
            raise NotLeased(
                "this device belongs to a farm: lease it from the tracker first (kiln.rpc.connect(TRACKER)"
                ".request(KEY), or --tracker/--key on the command line)"
            )
        assert self.verify_lease is not None
        now = time.monotonic()
        with self._lease_lock:
            cur = self._lease
            if cur is not None and cur.lease_id == lease_id and not cur.revoked and now < cur.valid_until:
                return self._admit_locked(cur, caller, caller_is_admin)
        owner, valid_s = self.verify_lease(lease_id)  # outside the lock: a tracker round trip
        with self._lease_lock:
            cur = self._lease
            if cur is None or cur.lease_id != lease_id or cur.revoked:
                if cur is not None and not cur.revoked:
                    self._revoke_locked(cur, "the tracker granted the device to another lease")
                cur = self._lease = _Lease(lease_id, owner, 0.0, time.monotonic())
            cur.valid_until = time.monotonic() + max(0.0, min(valid_s, LEASE_RECHECK_S))
            cur.verified_at = time.monotonic()
            return self._admit_locked(cur, caller, caller_is_admin)

    def _admit_locked(self, lease: _Lease, caller: str, caller_is_admin: bool) -> _Lease:
        if not caller_is_admin and caller != lease.owner:
            raise NotLeased(f"the lease belongs to {lease.owner!r}, not to {caller!r}")
        lease.inflight += 1
        return lease

    def _revoke_locked(self, lease: _Lease, why: str) -> None:
        """End ``lease`` on the device: cancel its calls, kill every runner, wait until its calls are out."""
        lease.revoked = True
        log.info("lease held by %r revoked on this device: %s", lease.owner, why)
        for tok in list(lease.tokens):
            tok.fire()
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for r in runners:
            r.session.kill()
        end = time.monotonic() + 30
        while lease.inflight > 0 and time.monotonic() < end:
            self._lease_lock.wait(0.1)
        for r in runners:
            self._close(r)

    def tracker_lease(self, lease_id: str, asked_at: float) -> None:
        """The tracker's heartbeat reply (asked at ``asked_at``, monotonic) names the device's lease: end the
        one served here if it is another and was confirmed before that question."""
        with self._lease_lock:
            cur = self._lease
            if (
                cur is not None
                and not cur.revoked
                and cur.lease_id != lease_id
                and cur.verified_at < asked_at
            ):
                self._revoke_locked(cur, "the tracker says the lease has ended")
                self._lease = None

    def tracker_forgot(self) -> None:
        """The tracker no longer knows this device (it restarted without its state, or dropped it): no lease
        it granted before can be trusted any more."""
        with self._lease_lock:
            if self._lease is not None and not self._lease.revoked:
                self._revoke_locked(self._lease, "the tracker forgot this device")
            self._lease = None

    def current_owner(self) -> str | None:
        with self._lease_lock:
            return self._lease.owner if self._lease is not None and not self._lease.revoked else None

    # ---- packages

    def verify_package(self, path: Path) -> None:
        """Check a received archive (the cache's ``verify``), streaming under hard limits: it must be a valid
        package (:func:`kiln.package.kpkg.unpack`) with a target name, a valid ``flops`` and a runnable, built
        for this device's target."""
        try:
            manifest = unpack(path)
            run_timeout(manifest)
        except PackageError as e:
            raise InvalidPackage(f"package rejected: {e}") from e
        target = manifest.get("target")
        if isinstance(target, dict):
            target = target.get("name")
        if not isinstance(target, str) or not target:
            raise InvalidPackage("package rejected: its manifest names no target (target.name)")
        if self.caps.target and target != self.caps.target:
            raise WrongTarget(
                f"package {manifest.get('name')!r} is built for {target}, this device is {self.caps.target}"
            )

    @contextlib.contextmanager
    def upload_slot(self) -> Iterator[None]:
        if not self._uploads.acquire(blocking=False):
            raise DeviceBusy("this device is receiving as many uploads as it takes at once; retry shortly")
        try:
            yield
        finally:
            self._uploads.release()

    @contextlib.contextmanager
    def call_slot(self) -> Iterator[None]:
        """Bounds the calls that may hold a server thread for long, so that Health and Info always find one."""
        if not self._calls.acquire(blocking=False):
            raise DeviceBusy(f"this device is serving {self.max_calls} calls already; retry shortly")
        try:
            yield
        finally:
            self._calls.release()

    def upload(self, chunks: Iterator[device_pb2.UploadChunk], owner: str | None = None) -> tuple[str, int]:
        return self.cache.receive(chunks, self.verify_package, self.pinned, owner)

    def pinned(self) -> set[str]:
        with self._lock:
            return {sha for _, sha, _ in self._runners}

    def loaded(self, owner: str | None = None) -> set[str]:
        """sha256 of the packages with a live runner (of ``owner``; None: of anyone)."""
        with self._lock:
            return {sha for o, sha, _ in self._runners if owner is None or o == owner}

    # ---- runners

    def runner(self, sha: str, owner: str | None = None) -> Runner | None:
        """The live runner of ``sha`` (of ``owner``; None: of anyone), if there is one."""
        with self._lock:
            return next(
                (r for (o, s, _), r in self._runners.items() if s == sha and owner in (None, o)), None
            )

    def runners(self, owner: str | None = None) -> list[Runner]:
        """The live runners (of ``owner``; None: of anyone), least recently used first."""
        with self._lock:
            return [r for (o, _, _), r in self._runners.items() if owner in (None, o)]

    def check_threads(self, threads: int | None) -> int | None:
        """The thread count a session asked for (None: the package's default), as the runner is started with
        it: 0 becomes the device's core count. :class:`BadThreads` if this device cannot give it (see
        "Threads" in the module docstring)."""
        if threads is None:
            return None
        cores = self.caps.cores
        where = f"this device ({self.caps.key}, {self.caps.target})"
        if self.bare_metal:
            if threads > 1:
                raise BadThreads(
                    f"{where} runs bare-metal firmware on one thread; ask for 1 thread or leave threads unset, "
                    f"not {threads}"
                )
            return None
        if not isinstance(self.launcher, ProcessLauncher) or cores < 1:
            raise BadThreads(
                f"{where} cannot pass a thread count to its runner (the {self.caps.launcher} launcher); leave "
                f"threads unset and compile the package with the count it should use (kiln compile --threads "
                f"{threads})"
            )
        if threads == 0:
            return cores
        if not 1 <= threads <= cores:
            raise BadThreads(
                f"{where} has {cores} core{'s' if cores != 1 else ''}: ask for 1 to {cores} threads (0: one per "
                f"core), not {threads}"
            )
        return threads

    def load(self, sha: str, owner: str = "", threads: int | None = None) -> Runner:
        """The runner of ``sha`` for ``owner`` with a pool of ``threads`` (None: the package's default; 0: one
        per core), started if it is not alive."""
        check_sha(sha)
        key = (owner, sha, self.check_threads(threads))
        with self._lock:
            r = self._runners.get(key)
            if r is not None:
                self._runners.move_to_end(key)
                return r
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                r = self._runners.get(key)
                if r is not None:
                    return r
            slot = self._take_slot()
            try:
                r = self._start(key, slot)
            except BaseException:
                self._free_slot(slot)
                raise
            with self._lock:
                self._runners[key] = r
                self._loading.pop(key, None)
            return r

    def _take_slot(self) -> int:
        """A free runner slot; makes one by closing the least recently used idle runner, never a busy one."""
        while True:
            with self._lock:
                if self._free_slots:
                    return self._free_slots.pop(0)
                victim = None
                for r in self._runners.values():  # least recently used first
                    if r.lock.acquire(blocking=False):
                        victim = r
                        del self._runners[r.key]
                        break
            if victim is None:
                raise DeviceBusy(
                    f"all {self.max_runners} runners of this device are busy with calls in flight; retry when "
                    "one finishes (a busy runner is never closed to make room)"
                )
            try:
                self._close(victim)
            finally:
                victim.lock.release()

    def _free_slot(self, slot: int) -> None:
        if self.runner_uid_base is not None:
            _kill_uid(self.runner_uid_base + slot)
        with self._lock:
            self._free_slots.append(slot)

    def _start(self, key: tuple[str, str, int | None], slot: int) -> Runner:
        owner, sha, threads = key
        path = self.cache.touch(sha, owner if self.verify_lease is not None or owner else None)
        workdir = self._workroot / f"r{slot}-{secrets.token_hex(4)}"
        try:
            manifest = unpack(path, workdir)  # a fresh directory, complete and verified, or none at all
        except PackageError as e:  # the cached file was tampered with after the upload
            raise InvalidPackage(f"cached package {sha[:12]} no longer verifies: {e}") from e
        name = str(manifest.get("name", sha[:12]))
        runnable = manifest.get("runnable")
        if not runnable or runnable not in manifest.get("files", {}):  # only a verified member ever runs
            shutil.rmtree(workdir, ignore_errors=True)
            raise InvalidPackage(f"package {name!r} has no runnable for this device (runnable: {runnable!r})")
        iso = self.isolation
        if iso is not None and self.runner_uid_base is not None:
            uid = self.runner_uid_base + slot
            iso = dataclasses.replace(iso, uid=uid, gid=uid)
            for p in [workdir, *workdir.rglob("*")]:
                os.lchown(p, uid, uid)
        try:
            if isinstance(self.launcher, ProcessLauncher) and (iso is not None or threads is not None):
                args = [] if threads is None else ["--threads", str(threads)]
                session = self.launcher.start(
                    workdir / runnable, timeout=self.call_timeout, isolation=iso, args=args
                )
            else:
                session = self.launcher.start(workdir / runnable, timeout=self.call_timeout)
        except Exception as e:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RunnerFailed(
                f"cannot start the runner of {name!r} with the {self.caps.launcher} launcher: {e}"
            ) from e
        if threads is None:  # the package's default (0: one per CPU)
            default = manifest.get("threads", 1)
            threads = 1 if self.bare_metal or not isinstance(default, int) else default or self.caps.cores
        r = Runner(key, name, manifest, session, workdir, threading.Lock(), slot, threads=threads)
        self._record(r)
        try:
            info = session.info()
            r.info_json = json.dumps(dataclasses.asdict(info), default=str)
        except Exception as e:
            self._close(r, free=False)
            raise RunnerFailed(f"runner of {name!r} did not answer INFO: {e}") from e
        log.info("started runner for %s (%s) in slot %d", name, sha[:12], slot)
        return r

    def _record(self, r: Runner) -> None:
        proc = getattr(getattr(r.session, "peer", None), "proc", None)
        if proc is not None:
            start = _proc_start_time(proc.pid)
            if start is not None:
                (self._workroot / f"r{r.slot}.pid").write_text(f"{proc.pid} {start}\n")

    def unload(self, sha: str, owner: str = "") -> None:
        """Stops the runners of ``sha`` for ``owner`` (of every thread count), after their calls in flight."""
        with self._lock:
            runners = [r for (o, s, _), r in self._runners.items() if (o, s) == (owner, sha)]
        for r in runners:
            with r.lock:  # after the calls in flight on it
                with self._lock:
                    if self._runners.get(r.key) is not r:
                        continue
                    del self._runners[r.key]
                self._close(r)

    def _close(self, r: Runner, *, free: bool = True) -> None:
        with contextlib.suppress(Exception):
            r.session.close()
        (self._workroot / f"r{r.slot}.pid").unlink(missing_ok=True)
        shutil.rmtree(r.workdir, ignore_errors=True)
        if free:
            self._free_slot(r.slot)

    def _discard(self, r: Runner) -> None:
        with self._lock:
            if self._runners.get(r.key) is not r:
                return  # closed already (revoked, evicted)
            del self._runners[r.key]
        self._close(r)

    def timeout_for(self, r: Runner, timeout_ms: int) -> float:
        """The call's timeout: the client's, else the model's budget; never more than ``call_timeout``."""
        if timeout_ms:
            return min(timeout_ms / 1000.0, self.call_timeout)
        try:
            return min(run_timeout(r.manifest, self.call_timeout), self.call_timeout)
        except PackageError:
            return self.call_timeout

    def check_time_args(self, r: Runner, number: int, repeat: int, min_repeat_ms: int) -> None:
        max_repeat = max(1, (json.loads(r.info_json).get("max_payload", abi.MIN_PAYLOAD) - 12) // 12)
        if not 1 <= number <= abi.TIME_MAX_NUMBER:
            raise BadRequest(f"time: number must be in 1..{abi.TIME_MAX_NUMBER}, not {number}")
        if not 1 <= repeat <= max_repeat:
            raise BadRequest(f"time: repeat must be in 1..{max_repeat} on this device, not {repeat}")
        limit_ms = min(abi.TIME_MAX_MIN_REPEAT_MS, int(self.call_timeout * 1000) // max(1, repeat))
        if not 0 <= min_repeat_ms <= limit_ms:
            raise BadRequest(
                f"time: min_repeat_ms must be in 0..{limit_ms} ({repeat} repeats within this device's call "
                f"limit of {self.call_timeout:g} s), not {min_repeat_ms}"
            )

    def call(
        self,
        sha: str,
        fn: Callable[[Session], T],
        timeout_ms: int = 0,
        what: str = "run",
        *,
        owner: str = "",
        cancel: CancelToken | None = None,
        check: Callable[[Runner], None] | None = None,
        threads: int | None = None,
    ) -> tuple[T, float]:
        """Call ``fn(session)`` on the package's runner (with a pool of ``threads``, as :meth:`load`) under its
        lock, with a timeout (enforced by the session and by the watchdog, which also bounds TIME and
        PROFILE), cancellation and crash isolation. Returns ``(result, seconds spent)``."""
        r = self.load(sha, owner, threads)
        timeout = self.timeout_for(r, timeout_ms)
        if check is not None:
            check(r)
        with r.lock:
            if self._runners.get(r.key) is not r:  # discarded (crashed, evicted) while we waited for the lock
                if cancel is not None and cancel.fired:
                    raise Cancelled(f"{what} of {r.name!r} was cancelled")
                return self.call(
                    sha, fn, timeout_ms, what, owner=owner, cancel=cancel, check=check, threads=threads
                )
            lease = self._lease if self.verify_lease is not None else None
            if cancel is not None:
                if lease is not None:
                    with self._lease_lock:
                        lease.tokens.add(cancel)
                cancel.bind(r.session.kill)
            alarm = self.watchdog.arm(timeout, r.session.kill)
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
                if alarm.fired:
                    raise RunnerTimeout(
                        f"{what} of {r.name!r} did not finish within {timeout:g} s (this device's limit for a "
                        "call); the runner was killed and the next call starts a new one"
                    ) from e
                if cancel is not None and cancel.fired:
                    raise Cancelled(f"{what} of {r.name!r} was cancelled; its runner was stopped") from e
                raise RunnerFailed(f"runner of {r.name!r} died during {what}: {e}") from e
            except InputError as e:
                raise BadRequest(f"{what} of {r.name!r}: {e}") from e
            except DeviceError as e:
                if not r.session.alive:  # protocol error: the session cannot be trusted any more
                    self._discard(r)
                raise RunnerFailed(f"{what} of {r.name!r} failed on the device: {e}") from e
            except ValueError as e:
                raise BadRequest(f"{what} of {r.name!r}: {e}") from e
            finally:
                alarm.cancel()
                if cancel is not None:
                    cancel.bind(None)
                    if lease is not None:
                        with self._lease_lock:
                            lease.tokens.discard(cancel)
            with self._lock:
                self.runs_served += 1
            return out, time.perf_counter() - t0

    def close(self) -> None:
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for r in runners:
            r.session.kill()
        for r in runners:
            self._close(r)
        self.watchdog.stop()
        if self._own_workroot:
            shutil.rmtree(self._workroot, ignore_errors=True)
        else:
            self.reap()
        if self._uid_lock_fd is not None:
            os.close(self._uid_lock_fd)
            self._uid_lock_fd = None
