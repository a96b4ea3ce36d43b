"""Conversions between NumPy arrays and the ``Tensor`` message, shared by the device server and the client."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from kiln.rpc import common_pb2
from kiln.runtime_c import abi

# Largest tensor payload one Run/Time/Profile message may carry, and the gRPC message limit of the Device
# service that follows from it (inputs plus framing).
MAX_TENSOR_BYTES = 64 * 1024 * 1024
MAX_DEVICE_MESSAGE_BYTES = MAX_TENSOR_BYTES + 1024 * 1024


class TensorError(ValueError):
    """A tensor message that does not describe a valid array."""


def to_proto(name: str, value: object) -> common_pb2.Tensor:
    arr = np.ascontiguousarray(value)
    return common_pb2.Tensor(name=name, dtype=arr.dtype.name, shape=arr.shape, data=arr.tobytes())


def from_proto(t: common_pb2.Tensor) -> np.ndarray:
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
    if any(d < 0 for d in shape):
        raise TensorError(f"tensor {t.name!r}: negative extent in shape {shape}")
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n != len(t.data):
        raise TensorError(f"tensor {t.name!r}: shape {shape} of {t.dtype} needs {n} bytes, got {len(t.data)}")
    return np.frombuffer(t.data, dtype=dtype).reshape(shape)


def pack(tensors: Mapping[str, object] | None) -> list[common_pb2.Tensor]:
    return [to_proto(k, v) for k, v in (tensors or {}).items()]


def unpack(tensors: Iterable[common_pb2.Tensor]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        if t.name in out:
            raise TensorError(f"tensor {t.name!r} appears twice")
        out[t.name] = from_proto(t)
    return out
