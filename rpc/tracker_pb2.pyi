from kiln.rpc import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("caps",)
    CAPS_FIELD_NUMBER: _ClassVar[int]
    caps: _common_pb2.Capabilities
    def __init__(self, caps: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("device_id", "heartbeat_interval_ms", "liveness_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    heartbeat_interval_ms: int
    liveness_ms: int
    def __init__(self, device_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., liveness_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("device_id", "runs_served")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RUNS_SERVED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    runs_served: int
    def __init__(self, device_id: _Optional[str] = ..., runs_served: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class VerifyLeaseRequest(_message.Message):
    __slots__ = ("device_id", "lease_id")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    lease_id: str
    def __init__(self, device_id: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class LeaseGrant(_message.Message):
    __slots__ = ("owner", "expires_in_ms")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    owner: str
    expires_in_ms: int
    def __init__(self, owner: _Optional[str] = ..., expires_in_ms: _Optional[int] = ...) -> None: ...

class DeviceRef(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class UnregisterReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceRequest(_message.Message):
    __slots__ = ("key", "priority", "timeout_ms", "client")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    key: str
    priority: int
    timeout_ms: int
    client: str
    def __init__(self, key: _Optional[str] = ..., priority: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., client: _Optional[str] = ...) -> None: ...

class QueuePosition(_message.Message):
    __slots__ = ("position", "waiting", "devices", "waited_s")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    WAITED_S_FIELD_NUMBER: _ClassVar[int]
    position: int
    waiting: int
    devices: int
    waited_s: float
    def __init__(self, position: _Optional[int] = ..., waiting: _Optional[int] = ..., devices: _Optional[int] = ..., waited_s: _Optional[float] = ...) -> None: ...

class QueueUpdate(_message.Message):
    __slots__ = ("position", "lease")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    position: QueuePosition
    lease: Lease
    def __init__(self, position: _Optional[_Union[QueuePosition, _Mapping]] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "device_id", "device", "ttl_ms", "queued_s", "owner")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    device_id: str
    device: _common_pb2.Capabilities
    ttl_ms: int
    queued_s: float
    owner: str
    def __init__(self, lease_id: _Optional[str] = ..., device_id: _Optional[str] = ..., device: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., ttl_ms: _Optional[int] = ..., queued_s: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...

class LeaseRef(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ("held_s",)
    HELD_S_FIELD_NUMBER: _ClassVar[int]
    held_s: float
    def __init__(self, held_s: _Optional[float] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("device_id", "caps", "state", "lease_holder", "lease_id", "last_seen_s", "runs_served")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LEASE_HOLDER_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_S_FIELD_NUMBER: _ClassVar[int]
    RUNS_SERVED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    caps: _common_pb2.Capabilities
    state: str
    lease_holder: str
    lease_id: str
    last_seen_s: float
    runs_served: int
    def __init__(self, device_id: _Optional[str] = ..., caps: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., state: _Optional[str] = ..., lease_holder: _Optional[str] = ..., lease_id: _Optional[str] = ..., last_seen_s: _Optional[float] = ..., runs_served: _Optional[int] = ...) -> None: ...

class KeyQueue(_message.Message):
    __slots__ = ("key", "waiting")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    key: str
    waiting: int
    def __init__(self, key: _Optional[str] = ..., waiting: _Optional[int] = ...) -> None: ...

class DeviceList(_message.Message):
    __slots__ = ("devices", "queues")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceStatus]
    queues: _containers.RepeatedCompositeFieldContainer[KeyQueue]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceStatus, _Mapping]]] = ..., queues: _Optional[_Iterable[_Union[KeyQueue, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyStats(_message.Message):
    __slots__ = ("key", "devices", "free", "queue_length", "leases_granted", "leases_released", "leases_expired", "requests_timed_out", "lease_seconds_total", "lease_seconds_max", "wait_seconds_total", "runs_served")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LEASES_GRANTED_FIELD_NUMBER: _ClassVar[int]
    LEASES_RELEASED_FIELD_NUMBER: _ClassVar[int]
    LEASES_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_MAX_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RUNS_SERVED_FIELD_NUMBER: _ClassVar[int]
    key: str
    devices: int
    free: int
    queue_length: int
    leases_granted: int
    leases_released: int
    leases_expired: int
    requests_timed_out: int
    lease_seconds_total: float
    lease_seconds_max: float
    wait_seconds_total: float
    runs_served: int
    def __init__(self, key: _Optional[str] = ..., devices: _Optional[int] = ..., free: _Optional[int] = ..., queue_length: _Optional[int] = ..., leases_granted: _Optional[int] = ..., leases_released: _Optional[int] = ..., leases_expired: _Optional[int] = ..., requests_timed_out: _Optional[int] = ..., lease_seconds_total: _Optional[float] = ..., lease_seconds_max: _Optional[float] = ..., wait_seconds_total: _Optional[float] = ..., runs_served: _Optional[int] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("keys", "uptime_s", "devices_dropped")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    DEVICES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyStats]
    uptime_s: float
    devices_dropped: int
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyStats, _Mapping]]] = ..., uptime_s: _Optional[float] = ..., devices_dropped: _Optional[int] = ...) -> None: ...
