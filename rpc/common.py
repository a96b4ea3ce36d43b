"""What the tracker, the device servers and the clients share: capabilities, tensors on the wire, size limits.

Message size bounds
===================

Tracker
    Requests are at most 64 KiB (:data:`MAX_TRACKER_REQUEST_BYTES`) and replies at most 4 MiB
    (:data:`MAX_TRACKER_REPLY_BYTES`); gRPC refuses larger messages with ``RESOURCE_EXHAUSTED``. String
    fields the tracker stores are bounded separately (:data:`kiln.rpc.tracker.MAX_FIELD_CHARS`).

Device
    One message of the Device service is at most :data:`MAX_DEVICE_MESSAGE_BYTES`: the tensors of one
    Run/Time/Profile call (at most :data:`MAX_TENSOR_BYTES`, 64 MiB) plus framing. Both the device server and
    the client set this limit on their side of the channel. Packages travel as a stream of chunks of at most
    :data:`UPLOAD_CHUNK_BYTES` each; the whole upload is bounded by the device server
    (:mod:`kiln.rpc.cache`).

Tensors
=======

A ``Tensor`` message is a dense, row-major array: a NumPy dtype name from :data:`kiln.runtime_c.abi.DTYPES`,
the shape, and the raw little-endian bytes. :func:`unpack_tensors` refuses (with :class:`TensorError`) an
unknown dtype, a rank over :data:`MAX_TENSOR_RANK`, a negative extent, a shape over :data:`MAX_TENSOR_BYTES`
(computed without overflow), a byte count that does not match the shape, and a name that appears twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from kiln.rpc import common_pb2
from kiln.runtime_c import abi

MAX_TRACKER_REQUEST_BYTES = 64 * 1024
MAX_TRACKER_REPLY_BYTES = 4 * 1024 * 1024
MAX_TENSOR_BYTES = 64 * 1024 * 1024
MAX_TENSOR_RANK = 32
MAX_DEVICE_MESSAGE_BYTES = MAX_TENSOR_BYTES + 1024 * 1024
UPLOAD_CHUNK_BYTES = 1024 * 1024


# ------------------------------------------------------------------------------------------- capabilities


@dataclass(frozen=True)
class Capabilities:
    """What a device server fronts: a device of pool ``key`` and ``target``, started by ``launcher``, with
    the runtime described by ``runtime_version`` (see :func:`kiln.rpc.device_service.runtime_fingerprint`),
    reachable at ``address`` (``host:port``), whose sessions may ask for 1 to ``cores`` threads (0: they
    cannot ask; see :func:`kiln.rpc.device_service.device_cores`)."""

    key: str
    target: str = ""
    launcher: str = ""
    runtime_version: str = ""
    address: str = ""
    cores: int = 0

    @classmethod
    def from_proto(cls, m: common_pb2.Capabilities) -> Capabilities:
        return cls(m.key, m.target, m.launcher, m.runtime_version, m.address, m.cores)

    def to_proto(self) -> common_pb2.Capabilities:
        return common_pb2.Capabilities(
            key=self.key,
            target=self.target,
            launcher=self.launcher,
            runtime_version=self.runtime_version,
            address=self.address,
            cores=self.cores,
        )


# ------------------------------------------------------------------------------------------------ tensors


class TensorError(ValueError):
    """A tensor message that does not describe a valid array."""


def tensor_to_proto(name: str, value: object) -> common_pb2.Tensor:
    arr = np.ascontiguousarray(value)
    return common_pb2.Tensor(name=name, dtype=arr.dtype.name, shape=arr.shape, data=arr.tobytes())


def tensor_from_proto(t: common_pb2.Tensor) -> np.ndarray:
    if t.dtype not in abi.DTYPES:
        raise TensorError(f"tensor {t.name!r}: unsupported dtype {t.dtype!r}")
    if t.dtype == "bfloat16":
        try:
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        except ImportError as e:  # pragma: no cover - ml_dtypes ships with onnx
            raise TensorError("bfloat16 tensors need the ml_dtypes package") from e
    else:
        dtype = np.dtype(t.dtype)
    shape = tuple(t.shape)
    if len(shape) > MAX_TENSOR_RANK:
        raise TensorError(f"tensor {t.name!r}: rank {len(shape)} is over the limit of {MAX_TENSOR_RANK}")
    if any(d < 0 for d in shape):
        raise TensorError(f"tensor {t.name!r}: negative extent in shape {shape}")
    n = math.prod(shape) * dtype.itemsize  # Python integers: a huge product cannot wrap around
    if n > MAX_TENSOR_BYTES:
        raise TensorError(
            f"tensor {t.name!r}: shape {shape} of {t.dtype} needs {n} bytes, over the limit of {MAX_TENSOR_BYTES}"
        )
    if n != len(t.data):
        raise TensorError(f"tensor {t.name!r}: shape {shape} of {t.dtype} needs {n} bytes, got {len(t.data)}")
    return np.frombuffer(t.data, dtype=dtype).reshape(shape)


def pack_tensors(tensors: Mapping[str, object] | None) -> list[common_pb2.Tensor]:
    """Named arrays -> ``Tensor`` messages."""
    return [tensor_to_proto(k, v) for k, v in (tensors or {}).items()]


def unpack_tensors(tensors: Iterable[common_pb2.Tensor]) -> dict[str, np.ndarray]:
    """``Tensor`` messages -> named arrays (read-only views of the message bytes)."""
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        if t.name in out:
            raise TensorError(f"tensor {t.name!r} appears twice")
        out[t.name] = tensor_from_proto(t)
    return out
