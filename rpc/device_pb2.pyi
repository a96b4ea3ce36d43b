from kiln.rpc import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("caps", "runs_served", "packages_cached", "cache_bytes", "cache_limit_bytes", "max_upload_bytes", "loaded")
    CAPS_FIELD_NUMBER: _ClassVar[int]
    RUNS_SERVED_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_CACHED_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    caps: _common_pb2.Capabilities
    runs_served: int
    packages_cached: int
    cache_bytes: int
    cache_limit_bytes: int
    max_upload_bytes: int
    loaded: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, caps: _Optional[_Union[_common_pb2.Capabilities, _Mapping]] = ..., runs_served: _Optional[int] = ..., packages_cached: _Optional[int] = ..., cache_bytes: _Optional[int] = ..., cache_limit_bytes: _Optional[int] = ..., max_upload_bytes: _Optional[int] = ..., loaded: _Optional[_Iterable[str]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("serving",)
    SERVING_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    def __init__(self, serving: _Optional[bool] = ...) -> None: ...

class PackageRef(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class HasPackageReply(_message.Message):
    __slots__ = ("cached",)
    CACHED_FIELD_NUMBER: _ClassVar[int]
    cached: bool
    def __init__(self, cached: _Optional[bool] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("sha256", "size", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("sha256", "threads")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    threads: int
    def __init__(self, sha256: _Optional[str] = ..., threads: _Optional[int] = ...) -> None: ...

class LoadReply(_message.Message):
    __slots__ = ("sha256", "manifest_json", "info_json", "threads")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    manifest_json: str
    info_json: str
    threads: int
    def __init__(self, sha256: _Optional[str] = ..., manifest_json: _Optional[str] = ..., info_json: _Optional[str] = ..., threads: _Optional[int] = ...) -> None: ...

class UnloadReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("sha256", "inputs", "timeout_ms", "threads")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    timeout_ms: int
    threads: int
    def __init__(self, sha256: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., timeout_ms: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("outputs", "device_s")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_S_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    device_s: float
    def __init__(self, outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., device_s: _Optional[float] = ...) -> None: ...

class TimeRequest(_message.Message):
    __slots__ = ("sha256", "inputs", "number", "repeat", "min_repeat_ms", "timeout_ms", "threads")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    MIN_REPEAT_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    number: int
    repeat: int
    min_repeat_ms: int
    timeout_ms: int
    threads: int
    def __init__(self, sha256: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., number: _Optional[int] = ..., repeat: _Optional[int] = ..., min_repeat_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class TimeReply(_message.Message):
    __slots__ = ("seconds",)
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    seconds: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, seconds: _Optional[_Iterable[float]] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("sha256", "inputs", "timeout_ms", "threads")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    timeout_ms: int
    threads: int
    def __init__(self, sha256: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., timeout_ms: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class ProfileReply(_message.Message):
    __slots__ = ("profile_json",)
    PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    profile_json: str
    def __init__(self, profile_json: _Optional[str] = ...) -> None: ...
