"""The device protocol end to end against the native runner: messages, malformed frames, crash isolation."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.device import protocol
from kiln.device.launchers import LocalLauncher
from kiln.device.protocol import DeviceError, DeviceLost, DeviceTimeout, InputError, Session, encode_frame
from kiln.package import ModelInfo, Package
from kiln.runtime_c import abi
from kiln.targets import get_target
from tinymodel import (
    COPY_N,
    TINY_INFO,
    TINY_PROBE_BYTE,
    copy_package,
    link_tiny,
    tiny_expected,
    tiny_inputs,
    tiny_package,
)

NATIVE = "x86_64-linux"

# Status codes (runtime_c/include/kiln/status.h).
ERR_ARG_RANGE = 0x0102
ERR_MODEL_ENTRY = 0x0203
ERR_PROTO_MAGIC = 0x0301
ERR_PROTO_VERSION = 0x0302
ERR_PROTO_CRC = 0x0303
ERR_PROTO_OVERSIZE = 0x0304
ERR_PROTO_TYPE = 0x0305
ERR_PROTO_PAYLOAD = 0x0306
ERR_PROTO_INDEX = 0x0307
ERR_PROTO_SIZE = 0x0308


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_package(NATIVE).extract(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def session(tiny_dir: Path) -> Iterator[Session]:
    with LocalLauncher(NATIVE).start(tiny_dir / "bin" / "runner", timeout=20.0) as s:
        yield s


def raw_call(s: Session, data: bytes) -> tuple[int, bytes]:
    s.send_bytes(data)
    return s.receive()


def expect_error(s: Session, data: bytes, status: int, model: str = "tiny") -> str:
    """Sends raw bytes, expects one ERROR reply with ``status``, then checks that the runner still serves."""
    msg_type, payload = raw_call(s, data)
    assert msg_type == protocol.MSG_ERROR
    err = protocol.error_from_reply(payload, 0)
    assert err.status == status, str(err)
    s._info = None  # noqa: SLF001 - ask the device again, not the cache
    assert s.info().name == model
    return str(err)


# ---- messages


def test_info_describes_the_linked_model(session: Session) -> None:
    info = session.info()
    assert info.name == "tiny" and info.abi_version == abi.ABI_VERSION
    assert [tuple(t) for t in info.inputs] == [tuple(t) for t in TINY_INFO.inputs]
    assert [tuple(t) for t in info.outputs] == [tuple(t) for t in TINY_INFO.outputs]
    assert info.kernel_names == ("scale", "add_weights")
    assert info.workspace_bytes == 32 and info.weights_bytes == 33
    assert info.ticks_per_second == 10**9 and info.max_payload == protocol.MAX_PAYLOAD
    assert info.inputs[0].nbytes == 32


def test_run_matches_numpy(session: Session) -> None:
    for seed in range(3):
        inputs = tiny_inputs(seed)
        out = session.run(inputs)
        np.testing.assert_allclose(out["y"], tiny_expected(inputs), rtol=1e-6)
        assert out["probe"].tolist() == [TINY_PROBE_BYTE]
        assert out["y"].dtype == np.float32 and out["probe"].dtype == np.int64


def test_weights_are_64_byte_aligned(session: Session) -> None:
    assert session.run(tiny_inputs(mode=4))["probe"].tolist() == [0]


def test_set_input_by_index_then_run_and_get_outputs(session: Session) -> None:
    inputs = tiny_inputs(5)
    session.set_input(0, inputs["x"])
    session.set_input("mode", inputs["mode"])
    session.run(fetch_outputs=False)
    np.testing.assert_allclose(session.get_output("y"), tiny_expected(inputs), rtol=1e-6)
    assert session.get_output(1).tolist() == [TINY_PROBE_BYTE]


def test_large_tensors_travel_in_several_frames(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal(COPY_N).astype(np.float32)
    assert x.nbytes > protocol.MAX_PAYLOAD
    with copy_package().open_session() as s:
        info = s.info()
        assert info.kernel_names == () and info.weights_bytes == 0 and info.workspace_bytes == 0
        np.testing.assert_array_equal(s.run({"x": x})["y"], x + 1)


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ({"x": np.zeros((4, 2), np.float32), "mode": np.zeros(1, np.int32)}, ["'x'", "(2, 4)", "(4, 2)"]),
        ({"x": np.zeros((2, 4), np.float64), "mode": np.zeros(1, np.int32)}, ["'x'", "float32", "float64"]),
        ({"x": np.zeros((2, 4), np.float32)}, ["missing", "'mode'", "int32"]),
        ({"x": np.zeros((2, 4), np.float32), "mode": np.zeros(1, np.int32), "z": 1}, ["unknown", "'z'"]),
    ],
)
def test_run_inputs_rejects_mismatches_by_name(session: Session, inputs: dict, fragments: list[str]) -> None:
    with pytest.raises(InputError) as e:
        session.run(inputs)
    for f in fragments:
        assert f in str(e.value)
    assert session.alive


def test_time_returns_seconds_per_run_for_each_repeat(session: Session) -> None:
    session.set_inputs(tiny_inputs())
    times = session.time(number=5, repeat=4)
    assert len(times) == 4 and all(0 < t < 0.01 for t in times)
    t0 = time.monotonic()
    times = session.time(number=1, repeat=2, min_repeat_ms=30)
    assert time.monotonic() - t0 >= 0.06  # each repeat grew `number` until it lasted 30 ms
    assert len(times) == 2 and all(0 < t < 0.01 for t in times)


def test_time_arguments_are_checked(session: Session) -> None:
    with pytest.raises(ValueError, match="number >= 1"):
        session.time(number=0)
    with pytest.raises(DeviceError) as e:
        session.call(protocol.MSG_TIME, struct.pack("<III", 1, 10**6, 0))
    assert e.value.status == ERR_ARG_RANGE and "repeat" in str(e.value)


def test_profile_records_every_kernel_call_in_order(session: Session) -> None:
    session.set_inputs(tiny_inputs())
    prof = session.profile()
    assert [c.name for c in prof.calls] == ["scale", "scale", "add_weights"]
    assert [c.kernel for c in prof.calls] == [0, 0, 1]
    assert all(c.end >= c.start for c in prof.calls)
    assert all(a.end <= b.start for a, b in zip(prof.calls, prof.calls[1:], strict=False))
    rows = {r.kernel: r for r in prof.rows()}
    assert rows["scale"].calls == 2 and rows["add_weights"].calls == 1
    assert sum(r.percent for r in rows.values()) == pytest.approx(100.0)
    assert rows["scale"].min_s <= rows["scale"].mean_s
    assert "scale" in prof.table() and prof.dropped == 0
    assert session.profile().calls[0].start > prof.calls[-1].end  # a fresh run each time


def test_chrome_trace_is_valid_trace_event_json(session: Session, tmp_path: Path) -> None:
    prof = session.profile()
    path = prof.write_chrome_trace(tmp_path / "trace.json")
    trace = json.loads(path.read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in events] == ["scale", "scale", "add_weights"]
    for e in events:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(e)
        assert e["ts"] >= 0 and e["dur"] >= 0
    assert events[0]["ts"] == 0
    c = prof.calls[1]
    assert events[1]["dur"] == pytest.approx((c.end - c.start) / 1000)  # ns ticks -> us
    again = protocol.Profile.from_dict(json.loads(prof.to_json()))
    assert again.rows() == prof.rows()


# ---- malformed frames: an ERROR reply each, and the runner keeps serving


def test_bad_crc(session: Session) -> None:
    frame = bytearray(encode_frame(protocol.MSG_INFO, struct.pack("<I", 0)))
    frame[-1] ^= 0xFF
    assert "CRC" in expect_error(session, bytes(frame), ERR_PROTO_CRC)


def test_oversize_frame(session: Session) -> None:
    n = protocol.MAX_PAYLOAD + 1
    frame = protocol.HEADER.pack(b"KILN", 1, protocol.MSG_SET_INPUT, 0, n) + bytes(n) + bytes(4)
    assert "exceeds" in expect_error(session, frame, ERR_PROTO_OVERSIZE)


def test_unknown_message_type(session: Session) -> None:
    assert "unknown message type 66" in expect_error(session, encode_frame(0x42), ERR_PROTO_TYPE)


def test_bad_magic_is_skipped(session: Session) -> None:
    expect_error(session, b"hello, runner", ERR_PROTO_MAGIC)


def test_bad_version(session: Session) -> None:
    text = expect_error(session, encode_frame(protocol.MSG_INFO, bytes(4), version=9), ERR_PROTO_VERSION)
    assert f"protocol version 9 is not supported; this device speaks version {abi.PROTOCOL_VERSION}" in text


def test_a_device_speaking_another_protocol_version_is_named_with_the_fix() -> None:
    old_reply = encode_frame(protocol.MSG_INFO | protocol.MSG_REPLY, bytes(4), version=1)
    s = Session(io.BytesIO(old_reply), io.BytesIO(), timeout=5.0, label="board x")
    with pytest.raises(protocol.ProtocolError) as e:
        s.info()
    text = str(e.value)
    assert (
        f"board x speaks device-protocol version 1, this kiln speaks version {abi.PROTOCOL_VERSION}" in text
    )
    assert "rebuild the package" in text


def test_wrong_payload_length(session: Session) -> None:
    text = expect_error(session, encode_frame(protocol.MSG_RUN, b"x"), ERR_PROTO_PAYLOAD)
    assert "payload has 1 bytes, this message needs 0" in text
    text = expect_error(session, encode_frame(protocol.MSG_GET_OUTPUT, b"\0"), ERR_PROTO_PAYLOAD)
    assert "payload has 1 bytes, this message needs 12" in text
    text = expect_error(session, encode_frame(protocol.MSG_SET_INPUT, bytes(19)), ERR_PROTO_PAYLOAD)
    assert "payload has 19 bytes, this message needs 20" in text


def test_bad_indices(session: Session) -> None:
    set_input = struct.pack("<IQQ", 7, 32, 0) + bytes(32)
    assert "input index 7 is out of range: the model has 2" in expect_error(
        session, encode_frame(protocol.MSG_SET_INPUT, set_input), ERR_PROTO_INDEX
    )
    get_output = struct.pack("<IQ", 2, 0)
    expect_error(session, encode_frame(protocol.MSG_GET_OUTPUT, get_output), ERR_PROTO_INDEX)
    expect_error(session, encode_frame(protocol.MSG_PROFILE, struct.pack("<I", 99)), ERR_PROTO_INDEX)


def test_wrong_sizes(session: Session) -> None:
    wrong_total = struct.pack("<IQQ", 0, 16, 0) + bytes(16)
    text = expect_error(session, encode_frame(protocol.MSG_SET_INPUT, wrong_total), ERR_PROTO_SIZE)
    assert "input 0 (x) has 32 bytes" in text
    past_end = struct.pack("<IQQ", 0, 32, 24) + bytes(16)
    text = expect_error(session, encode_frame(protocol.MSG_SET_INPUT, past_end), ERR_PROTO_SIZE)
    assert "bytes [24, 40) fall outside input 0 (x) of 32 bytes" in text
    text = expect_error(
        session, encode_frame(protocol.MSG_GET_OUTPUT, struct.pack("<IQ", 1, 9)), ERR_PROTO_SIZE
    )
    assert "offset 9 is past the end of output 1 (probe) of 8 bytes" in text


def test_error_replies_carry_a_reason_numbers_and_a_name(session: Session) -> None:
    """The ERROR payload on the wire (endpoint.h): the device sends numbers, the host words them."""
    reasons = {name: reason for reason, (name, _) in abi.ERROR_REASONS.items()}
    wrong_total = struct.pack("<IQQ", 1, 16, 0) + bytes(16)
    msg_type, payload = raw_call(session, encode_frame(protocol.MSG_SET_INPUT, wrong_total))
    assert msg_type == protocol.MSG_ERROR
    head = struct.pack(
        "<iBBH4Q", ERR_PROTO_SIZE, protocol.MSG_SET_INPUT, reasons["KILN_REASON_INPUT_SIZE"], 0, 16, 0, 4, 1
    )
    assert payload == head + b"mode"
    msg_type, payload = raw_call(session, encode_frame(0x42))
    assert payload == struct.pack(
        "<iBBH4Q", ERR_PROTO_TYPE, 0x42, reasons["KILN_REASON_TYPE"], 0, 0x42, 0, 0, 0
    )


def test_chunked_set_input(session: Session) -> None:
    inputs = tiny_inputs(3)
    data = inputs["x"].tobytes()
    for offset in (16, 0):  # any order
        session.call(protocol.MSG_SET_INPUT, struct.pack("<IQQ", 0, 32, offset) + data[offset : offset + 16])
    session.set_input("mode", inputs["mode"])
    np.testing.assert_allclose(session.run()["y"], tiny_expected(inputs), rtol=1e-6)


def test_model_failure_is_an_error_reply(session: Session) -> None:
    with pytest.raises(DeviceError) as e:
        session.run(tiny_inputs(mode=3))
    assert e.value.status == ERR_MODEL_ENTRY and "RUN" in str(e.value)
    assert session.alive
    assert session.run(tiny_inputs())["probe"].tolist() == [TINY_PROBE_BYTE]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    msg_type=st.sampled_from(
        [0, protocol.MSG_INFO, protocol.MSG_SET_INPUT, protocol.MSG_GET_OUTPUT, 0x08, 0x80]
    ),
    payload=st.binary(max_size=64),
)
def test_fuzzed_requests_get_one_reply_each(session: Session, msg_type: int, payload: bytes) -> None:
    reply_type, _ = raw_call(session, encode_frame(msg_type, payload))
    assert reply_type in (msg_type | protocol.MSG_REPLY, protocol.MSG_ERROR)
    assert session.alive


# ---- lifetime and crash isolation


def _pid(s: Session) -> int:
    return s.peer.proc.pid  # type: ignore[union-attr]


def test_close_says_quit_and_the_runner_exits_cleanly(tiny_dir: Path) -> None:
    s = LocalLauncher(NATIVE).start(tiny_dir / "bin" / "runner")
    s.info()
    s.close()
    assert s.peer.proc.returncode == 0  # type: ignore[union-attr]
    s.close()  # idempotent
    with pytest.raises(DeviceLost, match="closed"):
        s.run()


def test_end_of_input_ends_the_runner_cleanly(tiny_dir: Path) -> None:
    s = LocalLauncher(NATIVE).start(tiny_dir / "bin" / "runner")
    s.peer.proc.stdin.close()  # type: ignore[union-attr]
    assert s.peer.proc.wait(timeout=10) == 0  # type: ignore[union-attr]


def test_segfault_is_reported_with_the_signal(session: Session) -> None:
    with pytest.raises(DeviceLost) as e:
        session.run(tiny_inputs(mode=2))
    assert "SIGSEGV" in str(e.value) and "RUN" in str(e.value)
    assert not session.alive
    with pytest.raises(DeviceLost, match="unusable"):
        session.run()


def test_hung_runner_times_out_and_is_killed(tiny_dir: Path) -> None:
    with LocalLauncher(NATIVE).start(tiny_dir / "bin" / "runner", timeout=1.0) as s:
        s.set_inputs(tiny_inputs(mode=1))
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout, match=r"did not answer RUN within 1 s"):
            s.run()
        assert time.monotonic() - t0 < 5
        assert s.peer.proc.wait(timeout=5) == -signal.SIGKILL  # type: ignore[union-attr]


def test_runner_killed_mid_call(tiny_dir: Path) -> None:
    with LocalLauncher(NATIVE).start(tiny_dir / "bin" / "runner", timeout=30.0) as s:
        s.set_inputs(tiny_inputs(mode=1))
        threading.Timer(0.3, os.kill, (_pid(s), signal.SIGKILL)).start()
        with pytest.raises(DeviceLost) as e:
            s.run()
        assert "killed by signal SIGKILL" in str(e.value)


def test_kill_from_another_thread_unblocks_a_call(tiny_dir: Path) -> None:
    with LocalLauncher(NATIVE).start(tiny_dir / "bin" / "runner", timeout=30.0) as s:
        s.set_inputs(tiny_inputs(mode=1))
        threading.Timer(0.3, s.kill).start()
        with pytest.raises(DeviceLost, match="SIGKILL"):
            s.run()


# ---- a device with small frames (as a microcontroller would have): everything is paged


def test_a_device_with_small_frames_pages_everything() -> None:
    small = dataclasses.replace(
        get_target(NATIVE),
        name="x86_64-linux-256-byte-frames",
        extra={"runtime_defines": ["KILN_ENDPOINT_MAX_PAYLOAD=256u", "KILN_PROFILE_MAX_RECORDS=150u"]},
    )
    names = ["scale", "add_weights", *(f"an_unused_kernel_with_a_long_name_{i}" for i in range(40))]
    info = ModelInfo("paged", TINY_INFO.inputs, TINY_INFO.outputs, 32, names)
    pkg = Package.create(small, info, link_tiny(small, info=info))
    with pkg.open_session(LocalLauncher(small)) as s:
        assert s.info().max_payload == 256 and s.info().kernel_names == tuple(names)  # INFO in 8 pages
        inputs = tiny_inputs(2)
        np.testing.assert_allclose(s.run(inputs)["y"], tiny_expected(inputs), rtol=1e-6)
        s.set_inputs(tiny_inputs(mode=5))
        prof = s.profile()  # 150 records in 14 pages, the rest counted as dropped
        assert len(prof.calls) == 150 and prof.dropped == 51
        assert {c.name for c in prof.calls} == {"scale"}
        assert "51 calls were not recorded" in prof.table()
        frame = encode_frame(protocol.MSG_SET_INPUT, struct.pack("<IQQ", 0, 32, 0) + bytes(300))
        assert "limit of 256" in expect_error(s, frame, ERR_PROTO_OVERSIZE, "paged")
