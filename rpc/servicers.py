"""The gRPC servicers of the tracker and the device server: thin translators, no logic.

Each method parses its request into plain values, calls one method of the plain class behind it
(:class:`kiln.rpc.tracker.Tracker`, :class:`kiln.rpc.device_service.DeviceService`), and turns the result
into the reply message. A domain error becomes a gRPC status through the tables below; nothing else here
decides anything. The rules these codes express are written down with the logic that raises them
(:mod:`kiln.rpc.tracker`, :mod:`kiln.rpc.cache`, :mod:`kiln.rpc.device_service`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np

from kiln.device import Session
from kiln.rpc import common_pb2, device_pb2, device_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from kiln.rpc.auth import LEASE_METADATA_KEY, Identity, ServerSecurity
from kiln.rpc.cache import BadRequest, CorruptUpload, DeviceServerError, NotCached, TooLarge
from kiln.rpc.common import Capabilities, TensorError, pack_tensors, unpack_tensors
from kiln.rpc.device_service import (
    UPLOAD_BASE_S,
    UPLOAD_IDLE_S,
    UPLOAD_MIN_BYTES_PER_S,
    Alarm,
    BadThreads,
    Cancelled,
    CancelToken,
    DeviceBusy,
    DeviceService,
    InvalidPackage,
    NotLeased,
    Runner,
    RunnerFailed,
    RunnerTimeout,
    TrackerUnreachable,
    WrongTarget,
)
from kiln.rpc.state import DeviceRecord, LeaseRecord
from kiln.rpc.tracker import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QueueFull,
    QueueTimeout,
    Tracker,
    TrackerError,
)

T = TypeVar("T")

_STATUS: dict[type[Exception], grpc.StatusCode] = {
    # tracker
    NotFound: grpc.StatusCode.NOT_FOUND,
    QueueTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    # device server
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    BadThreads: grpc.StatusCode.INVALID_ARGUMENT,
    NotCached: grpc.StatusCode.NOT_FOUND,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CorruptUpload: grpc.StatusCode.DATA_LOSS,
    InvalidPackage: grpc.StatusCode.INVALID_ARGUMENT,
    WrongTarget: grpc.StatusCode.FAILED_PRECONDITION,
    RunnerTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    RunnerFailed: grpc.StatusCode.INTERNAL,
    NotLeased: grpc.StatusCode.PERMISSION_DENIED,
    TrackerUnreachable: grpc.StatusCode.UNAVAILABLE,
    DeviceBusy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Cancelled: grpc.StatusCode.CANCELLED,
}


def _abort(context: grpc.ServicerContext, e: TrackerError | DeviceServerError) -> NoReturn:
    context.abort(_STATUS.get(type(e), grpc.StatusCode.UNKNOWN), str(e))
    raise AssertionError("unreachable: context.abort raises")


# ------------------------------------------------------------------------------------------------- tracker


def _peer_host(context: grpc.ServicerContext) -> str:
    """The caller's host as the tracker sees it ("" for a peer that is not IP, e.g. a Unix socket)."""
    peer = context.peer()  # "ipv4:127.0.0.1:5555" | "ipv6:[::1]:5555"
    kind, _, rest = peer.partition(":")
    return rest.rpartition(":")[0] if kind in ("ipv4", "ipv6") else ""


def _lease_proto(lease: LeaseRecord, dev: DeviceRecord, ttl: float) -> tracker_pb2.Lease:
    return tracker_pb2.Lease(
        lease_id=lease.lease_id,
        device_id=dev.device_id,
        device=dev.caps.to_proto(),
        ttl_ms=int(ttl * 1000),
        queued_s=lease.queued_s,
        owner=lease.owner,
    )


class TrackerServicer(tracker_pb2_grpc.TrackerServicer):
    """Translates Tracker RPCs to :class:`Tracker` calls; ``security`` names the caller of each."""

    def __init__(self, tracker: Tracker, security: ServerSecurity) -> None:
        self.tracker = tracker
        self.security = security

    def _admin(self, context: grpc.ServicerContext, what: str) -> Identity:
        ident = self.security.identify(context)
        if not ident.is_admin:
            _abort(
                context,
                PermissionDenied(
                    f"{what} needs an admin token; identity {ident.name!r} is a client "
                    "(device servers register with the farm's admin token)"
                ),
            )
        return ident

    def _owner(self, context: grpc.ServicerContext) -> str | None:
        """The identity that must own a lease the caller names (None for admins: any lease)."""
        ident = self.security.identify(context)
        return None if ident.is_admin else ident.name

    @contextlib.contextmanager
    def _mapped(self, context: grpc.ServicerContext, admin_for: str = "") -> Iterator[None]:
        """Tracker errors in the body abort the call with their gRPC status; ``admin_for``: what the call
        does, which needs an admin token (checked first)."""
        if admin_for:
            self._admin(context, admin_for)
        try:
            yield
        except TrackerError as e:
            _abort(context, e)

    def Register(self, request, context):
        with self._mapped(context, admin_for="registering a device"):
            rec = self.tracker.register(Capabilities.from_proto(request.caps), _peer_host(context))
        return tracker_pb2.RegisterReply(
            device_id=rec.device_id,
            heartbeat_interval_ms=int(self.tracker.heartbeat_interval * 1000),
            liveness_ms=int(self.tracker.liveness * 1000),
        )

    def Heartbeat(self, request, context):
        with self._mapped(context, admin_for="a heartbeat"):
            lease_id = self.tracker.heartbeat(request.device_id, request.runs_served)
        return tracker_pb2.HeartbeatReply(lease_id=lease_id)

    def VerifyLease(self, request, context):
        with self._mapped(context, admin_for="verifying a lease"):
            lease = self.tracker.verify(request.device_id, request.lease_id)
        return tracker_pb2.LeaseGrant(
            owner=lease.owner, expires_in_ms=int(self.tracker.expires_in(lease) * 1000)
        )

    def Unregister(self, request, context):
        with self._mapped(context, admin_for="unregistering a device"):
            self.tracker.unregister(request.device_id)
        return tracker_pb2.UnregisterReply()

    def RequestDevice(self, request, context):
        t = self.tracker
        ident = self.security.identify(context)
        try:
            ticket = t.enqueue(request.key, request.priority, request.client, ident.name, ident.max_priority)
            if not context.add_callback(lambda: t.cancel(ticket)):
                t.cancel(ticket)
            timeout = request.timeout_ms / 1000.0 if request.timeout_ms else None
            for item in t.wait_updates(ticket, timeout):
                if isinstance(item, LeaseRecord):
                    lease = item
                    break
                position, waiting, devices, waited = item
                yield tracker_pb2.QueueUpdate(
                    position=tracker_pb2.QueuePosition(
                        position=position, waiting=waiting, devices=devices, waited_s=waited
                    )
                )
            if not context.is_active():  # the caller left as the lease was granted
                t.release(lease.lease_id)
                context.abort(grpc.StatusCode.CANCELLED, "request cancelled by the client")
            dev = t.device_for(lease)
        except TrackerError as e:
            _abort(context, e)
        yield tracker_pb2.QueueUpdate(lease=_lease_proto(lease, dev, t.lease_ttl))

    def RenewLease(self, request, context):
        with self._mapped(context):
            lease = self.tracker.renew(request.lease_id, self._owner(context))
            dev = self.tracker.device_for(lease)
        return _lease_proto(lease, dev, self.tracker.lease_ttl)

    def ReleaseLease(self, request, context):
        with self._mapped(context):
            held = self.tracker.release(request.lease_id, self._owner(context))
        return tracker_pb2.ReleaseReply(held_s=held)

    def ListDevices(self, request, context):
        devs = [
            tracker_pb2.DeviceStatus(
                device_id=v.device_id,
                caps=v.caps.to_proto(),
                state=v.state,
                lease_holder=v.lease_holder,
                last_seen_s=v.last_seen_s,
                runs_served=v.runs_served,
            )
            for v in self.tracker.devices()
        ]
        queues = [
            tracker_pb2.KeyQueue(key=k, waiting=n) for k, n in sorted(self.tracker.queue_lengths().items())
        ]
        return tracker_pb2.DeviceList(devices=devs, queues=queues)

    def GetStats(self, request, context):
        st = self.tracker.stats()
        return tracker_pb2.Stats(
            keys=[tracker_pb2.KeyStats(**dataclasses.asdict(k)) for k in st.keys],
            uptime_s=st.uptime_s,
            devices_dropped=st.devices_dropped,
        )


# -------------------------------------------------------------------------------------------------- device


class DeviceServicer(device_pb2_grpc.DeviceServicer):
    """Translates Device RPCs to :class:`DeviceService` calls; ``security`` names the caller, whose lease (if
    the device is in a farm) the service checks before anything else."""

    def __init__(self, service: DeviceService, security: ServerSecurity) -> None:
        self.s = service
        self.security = security

    @contextlib.contextmanager
    def _leased(self, context: grpc.ServicerContext, *, heavy: bool = True) -> Iterator[str]:
        """Authorize the call (lease) and take a call slot; yields the owner. Domain errors abort the call."""
        ident = self.security.identify(context)
        lease_id = None
        for k, v in context.invocation_metadata() or ():
            if k == LEASE_METADATA_KEY:
                lease_id = v if isinstance(v, str) else v.decode(errors="replace")
        try:
            with contextlib.ExitStack() as stack:
                if heavy:
                    stack.enter_context(self.s.call_slot())
                owner = stack.enter_context(self.s.leased(ident.name, ident.is_admin, lease_id))
                yield owner
        except DeviceServerError as e:
            _abort(context, e)

    def _cancel_token(self, context: grpc.ServicerContext) -> CancelToken:
        tok = CancelToken()
        if not context.add_callback(tok.fire):  # the RPC has ended already
            tok.fire()
        return tok

    def Info(self, request, context):
        s = self.s
        ident = self.security.identify(context)
        return device_pb2.DeviceInfo(
            caps=s.caps.to_proto(),
            runs_served=s.runs_served,
            packages_cached=len(s.cache),
            cache_bytes=s.cache.total_bytes,
            cache_limit_bytes=s.cache.limit_bytes,
            max_upload_bytes=s.cache.max_upload_bytes,
            loaded=sorted(s.loaded(None if ident.is_admin else ident.name)),
        )

    def Health(self, request, context):
        return device_pb2.HealthReply(serving=True)

    def HasPackage(self, request, context):
        with self._leased(context, heavy=False) as owner:
            return device_pb2.HasPackageReply(cached=self.s.cache.has(request.sha256, owner))

    def Upload(self, request_iterator, context):
        with self._leased(context) as owner, self.s.upload_slot():
            sha, size = self.s.upload(_watched(request_iterator, self.s, context), owner)
        return device_pb2.UploadReply(sha256=sha, size=size)

    def Load(self, request, context):
        with self._leased(context) as owner:
            r = self.s.load(request.sha256, owner, _threads(request))
        return device_pb2.LoadReply(
            sha256=r.sha, manifest_json=json.dumps(r.manifest), info_json=r.info_json, threads=r.threads
        )

    def Unload(self, request, context):
        with self._leased(context) as owner:
            self.s.unload(request.sha256, owner)
        return device_pb2.UnloadReply()

    def _on_runner(
        self,
        request: Any,
        context: grpc.ServicerContext,
        fn: Callable[[Session, dict[str, np.ndarray]], T],
        what: str = "run",
        check: Callable[[Runner], None] | None = None,
    ) -> tuple[T, float]:
        """``fn(session, inputs)`` on the runner of the request's package (``sha256``, ``inputs``,
        ``timeout_ms``, ``threads``), for the caller's lease, cancelled with the RPC; returns its result and
        duration."""
        with self._leased(context) as owner:
            inputs = _inputs(request.inputs)
            return self.s.call(
                request.sha256,
                lambda sess: fn(sess, inputs),
                request.timeout_ms,
                what,
                owner=owner,
                cancel=self._cancel_token(context),
                check=check,
                threads=_threads(request),
            )

    def Run(self, request, context):
        outputs, dt = self._on_runner(request, context, lambda sess, inputs: sess.run(inputs))
        return device_pb2.RunReply(outputs=pack_tensors(outputs), device_s=dt)

    def Time(self, request, context):
        number, repeat, min_ms = request.number, request.repeat, request.min_repeat_ms
        secs, _ = self._on_runner(
            request,
            context,
            lambda sess, inputs: _given(sess, inputs).time(number, repeat, min_ms),
            "time",
            check=lambda runner: self.s.check_time_args(runner, number, repeat, min_ms),
        )
        return device_pb2.TimeReply(seconds=list(secs))

    def Profile(self, request, context):
        prof, _ = self._on_runner(
            request, context, lambda sess, inputs: _given(sess, inputs).profile(), "profile"
        )
        return device_pb2.ProfileReply(profile_json=prof.to_json())


def _threads(request: Any) -> int | None:
    """The request's thread count (``optional uint32 threads``), None if it asks for none."""
    return int(request.threads) if request.HasField("threads") else None


def _given(sess: Session, inputs: dict[str, np.ndarray]) -> Session:
    """``sess`` with ``inputs`` set (none given: the ones it has, or its zero default)."""
    if inputs:
        sess.set_inputs(inputs)
    return sess


def _watched(
    chunks: Iterator[device_pb2.UploadChunk], service: DeviceService, context: grpc.ServicerContext
) -> Iterator[device_pb2.UploadChunk]:
    """The upload's chunks, cancelling the RPC when the client stalls: no chunk for UPLOAD_IDLE_S, or the
    whole upload slower than UPLOAD_BASE_S plus its size at UPLOAD_MIN_BYTES_PER_S."""
    stalled: list[str] = []

    def stop(why: str) -> Callable[[], None]:
        def fire() -> None:
            stalled.append(why)
            context.cancel()

        return fire

    idle = service.watchdog.arm(UPLOAD_IDLE_S, stop(f"no data for {UPLOAD_IDLE_S:g} s"))
    total: Alarm | None = None
    try:
        for chunk in chunks:
            idle.cancel()
            if stalled:
                break
            if total is None:
                limit = UPLOAD_BASE_S + chunk.size / UPLOAD_MIN_BYTES_PER_S
                total = service.watchdog.arm(limit, stop(f"the upload took longer than {limit:.0f} s"))
            yield chunk
            idle = service.watchdog.arm(UPLOAD_IDLE_S, stop(f"no data for {UPLOAD_IDLE_S:g} s"))
    finally:
        idle.cancel()
        if total is not None:
            total.cancel()
    if stalled:
        raise CorruptUpload(f"upload cancelled: {stalled[0]}")


def _inputs(tensors: Iterable[common_pb2.Tensor]) -> dict[str, np.ndarray]:
    try:
        return unpack_tensors(tensors)
    except TensorError as e:
        raise BadRequest(str(e)) from e
