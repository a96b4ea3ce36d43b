"""The host side of the device protocol without a runner: plain file objects, garbage replies, fuzzing."""

from __future__ import annotations

import contextlib
import io
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.device import protocol
from kiln.device.protocol import DeviceError, DeviceInfo, DeviceLost, ProtocolError, Session, encode_frame


def _str(s: str) -> bytes:
    return struct.pack("<I", len(s.encode())) + s.encode()


def info_record(kernels: tuple[str, ...] = ("k0", "k1")) -> bytes:
    tensor = _str("x") + struct.pack("<BBHI", 2, 32, 1, 2) + struct.pack("<qq", 2, 3) + struct.pack("<Q", 24)
    out = struct.pack("<IIQQQ", 1, 256, 1000, 64, 0) + _str("m")
    out += struct.pack("<I", 1) + tensor + struct.pack("<I", 0)
    out += struct.pack("<I", len(kernels)) + b"".join(_str(k) for k in kernels)
    return out + struct.pack("<II", 0, 0)  # no run-time dimensions


def reply(request: int, payload: bytes) -> bytes:
    return encode_frame(request | protocol.MSG_REPLY, payload)


def session(replies: bytes) -> tuple[Session, io.BytesIO]:
    sent = io.BytesIO()
    return Session(io.BytesIO(replies), sent, timeout=5.0), sent


def test_session_over_plain_file_objects_pages_info_and_profile() -> None:
    record = info_record(tuple(f"kernel{i}" for i in range(40)))
    pages = [record[:200], record[200:]]
    replies = reply(protocol.MSG_INFO, struct.pack("<I", len(record)) + pages[0])
    replies += reply(protocol.MSG_INFO, struct.pack("<I", len(record)) + pages[1])
    for first, kernels in ((0, [0, 1]), (2, [1])):
        head = struct.pack("<QIIII", 1000, 3, 0, first, len(kernels))
        records = b"".join(struct.pack("<IQQ", k, 10 * i, 10 * i + 5) for i, k in enumerate(kernels, first))
        replies += reply(protocol.MSG_PROFILE, head + records)
    s, sent = session(replies)
    info = s.info()
    assert info.name == "m" and info.inputs[0] == ("x", "float32", (2, 3)) and len(info.kernel_names) == 40
    prof = s.profile()
    assert [c.name for c in prof.calls] == ["kernel0", "kernel1", "kernel1"]
    assert prof.seconds(prof.calls[2]) == pytest.approx(0.005)
    expected = encode_frame(protocol.MSG_INFO, struct.pack("<I", 0)) + encode_frame(
        protocol.MSG_INFO, struct.pack("<I", 200)
    )
    expected += encode_frame(protocol.MSG_PROFILE, struct.pack("<I", 0))
    expected += encode_frame(protocol.MSG_PROFILE, struct.pack("<I", 2))
    assert sent.getvalue() == expected


def test_error_reply_keeps_the_session_usable() -> None:
    err = struct.pack("<iBBH4Q", 0x0307, protocol.MSG_RUN, 8, 0, 7, 2, 0, 0)  # KILN_REASON_INPUT_INDEX
    s, _ = session(encode_frame(protocol.MSG_ERROR, err) + reply(protocol.MSG_RUN, b""))
    with pytest.raises(DeviceError) as e:
        s.call(protocol.MSG_RUN)
    assert e.value.status == 0x0307 and "RUN" in str(e.value)
    assert e.value.detail == "input index 7 is out of range: the model has 2"
    assert s.call(protocol.MSG_RUN) == b""


def test_corrupted_reply_breaks_the_session() -> None:
    frame = bytearray(reply(protocol.MSG_RUN, b"abc"))
    frame[13] ^= 0xFF
    s, _ = session(bytes(frame))
    with pytest.raises(ProtocolError, match="CRC"):
        s.call(protocol.MSG_RUN)
    with pytest.raises(DeviceLost, match="unusable"):
        s.call(protocol.MSG_RUN)


def test_wrong_reply_type_and_end_of_stream() -> None:
    s, _ = session(reply(protocol.MSG_INFO, b""))
    with pytest.raises(ProtocolError, match="expected the reply to RUN"):
        s.call(protocol.MSG_RUN)
    s, _ = session(b"")
    with pytest.raises(DeviceLost, match="stream ended"):
        s.call(protocol.MSG_RUN)


@given(st.binary(max_size=300))
def test_info_decoding_rejects_garbage_cleanly(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        DeviceInfo.decode(data)


RECORD = info_record()


@given(st.integers(0, len(RECORD) - 1), st.integers(0, 255), st.integers(0, len(RECORD)))
def test_info_decoding_rejects_mutated_records_cleanly(pos: int, byte: int, cut: int) -> None:
    data = bytearray(RECORD)
    data[pos] = byte
    with contextlib.suppress(ProtocolError):
        DeviceInfo.decode(bytes(data[:cut]))


@given(st.binary(max_size=40), st.integers(0, 255))
def test_error_replies_always_decode(data: bytes, request: int) -> None:
    assert isinstance(protocol.error_from_reply(data, request), DeviceError)


def test_valid_info_record_roundtrip() -> None:
    info = DeviceInfo.decode(info_record())
    assert info.kernel_names == ("k0", "k1") and info.ticks_per_second == 1000 and info.max_payload == 256
    with pytest.raises(ProtocolError, match="trailing"):
        DeviceInfo.decode(info_record() + b"\0")
