"""The gRPC servicers of the tracker and the device server: thin translators, no logic.

Each method parses its request into plain values, calls one method of the plain class behind it
(:class:`kiln.rpc.tracker.Tracker`, :class:`kiln.rpc.device_service.DeviceService`), and turns the result
into the reply message. A domain error becomes a gRPC status through the tables below; nothing else here
decides anything. The rules these codes express are written down with the logic that raises them
(:mod:`kiln.rpc.tracker`, :mod:`kiln.rpc.cache`, :mod:`kiln.rpc.device_service`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import NoReturn

import grpc
import numpy as np

from kiln.device import Profile, Session
from kiln.rpc import common_pb2, device_pb2, device_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from kiln.rpc.cache import BadRequest, CorruptUpload, DeviceServerError, NotCached, TooLarge
from kiln.rpc.common import Capabilities, TensorError, pack_tensors, unpack_tensors
from kiln.rpc.device_service import DeviceService, InvalidPackage, RunnerFailed, RunnerTimeout, WrongTarget
from kiln.rpc.state import DeviceRecord, LeaseRecord
from kiln.rpc.tracker import InvalidRequest, NotFound, QueueFull, QueueTimeout, Tracker, TrackerError

_STATUS: dict[type[Exception], grpc.StatusCode] = {
    # tracker
    NotFound: grpc.StatusCode.NOT_FOUND,
    QueueTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    # device server
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotCached: grpc.StatusCode.NOT_FOUND,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CorruptUpload: grpc.StatusCode.DATA_LOSS,
    InvalidPackage: grpc.StatusCode.INVALID_ARGUMENT,
    WrongTarget: grpc.StatusCode.FAILED_PRECONDITION,
    RunnerTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    RunnerFailed: grpc.StatusCode.INTERNAL,
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
    )


class TrackerServicer(tracker_pb2_grpc.TrackerServicer):
    """Translates Tracker RPCs to :class:`Tracker` calls."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def Register(self, request, context):
        try:
            rec = self.tracker.register(Capabilities.from_proto(request.caps), _peer_host(context))
        except TrackerError as e:
            _abort(context, e)
        return tracker_pb2.RegisterReply(
            device_id=rec.device_id,
            heartbeat_interval_ms=int(self.tracker.heartbeat_interval * 1000),
            liveness_ms=int(self.tracker.liveness * 1000),
        )

    def Heartbeat(self, request, context):
        try:
            self.tracker.heartbeat(request.device_id, request.runs_served)
        except TrackerError as e:
            _abort(context, e)
        return tracker_pb2.HeartbeatReply()

    def Unregister(self, request, context):
        try:
            self.tracker.unregister(request.device_id)
        except TrackerError as e:
            _abort(context, e)
        return tracker_pb2.UnregisterReply()

    def RequestDevice(self, request, context):
        t = self.tracker
        try:
            ticket = t.enqueue(request.key, request.priority, request.client or context.peer())
            if not context.add_callback(lambda: t.cancel(ticket)):
                t.cancel(ticket)
            lease = t.wait(ticket, request.timeout_ms / 1000.0 if request.timeout_ms else None)
            if not context.is_active():  # the caller left as the lease was granted
                t.release(lease.lease_id)
                context.abort(grpc.StatusCode.CANCELLED, "request cancelled by the client")
            dev = t.device_for(lease)
        except TrackerError as e:
            _abort(context, e)
        return _lease_proto(lease, dev, t.lease_ttl)

    def RenewLease(self, request, context):
        try:
            lease = self.tracker.renew(request.lease_id)
            dev = self.tracker.device_for(lease)
        except TrackerError as e:
            _abort(context, e)
        return _lease_proto(lease, dev, self.tracker.lease_ttl)

    def ReleaseLease(self, request, context):
        try:
            held = self.tracker.release(request.lease_id)
        except TrackerError as e:
            _abort(context, e)
        return tracker_pb2.ReleaseReply(held_s=held)

    def ListDevices(self, request, context):
        devs = [
            tracker_pb2.DeviceStatus(
                device_id=v.device_id,
                caps=v.caps.to_proto(),
                state=v.state,
                lease_holder=v.lease_holder,
                lease_id=v.lease_id,
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
        return device_pb2.RunReply(outputs=pack_tensors(outputs), device_s=dt)

    def Time(self, request, context):
        def fn(sess: Session) -> list[float]:
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
        def fn(sess: Session) -> Profile:
            if inputs:
                sess.set_inputs(inputs)
            return sess.profile()

        try:
            inputs = _inputs(request.inputs)
            prof, _ = self.s.call(request.sha256, fn, request.timeout_ms, what="profile")
        except DeviceServerError as e:
            _abort(context, e)
        return device_pb2.ProfileReply(profile_json=prof.to_json())


def _inputs(tensors: Iterable[common_pb2.Tensor]) -> dict[str, np.ndarray]:
    try:
        return unpack_tensors(tensors)
    except TensorError as e:
        raise BadRequest(str(e)) from e
