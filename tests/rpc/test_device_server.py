"""Device servers with real runners (native and qemu-user): run/time/profile, crash isolation, security."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import kiln.rpc
import tinypkg
from kiln.rpc import device_pb2, device_pb2_grpc
from kiln.rpc.auth import open_channel
from kiln.rpc.client import RemoteError
from kiln.rpc.servers import DeviceServer, TrackerServer

pytestmark = pytest.mark.qemu

FARM = [
    ("x86_64-linux", "local", "x86"),
    ("aarch64-linux", "qemu-user", "qemu-aarch64"),
    ("riscv64-linux", "qemu-user", "qemu-riscv64"),
]


def assert_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_farm_serves_concurrent_clients(
    make_tracker: Callable[..., TrackerServer],
    make_device: Callable[..., DeviceServer],
    tiny_packages: dict[str, Any],
) -> None:
    tracker = make_tracker()
    for target, launcher, key in FARM:
        make_device(target, launcher, key=key, tracker=tracker.address)
    errors: list[str] = []
    runs = [0]
    lock = threading.Lock()

    def client(i: int, target: str, key: str) -> None:
        rng = np.random.default_rng(i)
        pkg = tiny_packages[target]
        try:
            with kiln.rpc.connect(tracker.address, client=f"c{i}").request(key, timeout=60) as dev:
                m = dev.load(pkg)
                for _ in range(5):
                    feeds = tinypkg.inputs(rng.standard_normal((2, 4)).astype(np.float32))
                    got = m.run(feeds)
                    assert_outputs(got, tinypkg.reference(feeds))
                    with lock:
                        runs[0] += 1
                if i < len(FARM):  # the local reference: the same package run here (natively or qemu-user)
                    assert_outputs(got, pkg.run(feeds))
        except Exception as e:
            errors.append(f"client {i} ({key}): {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i, *FARM[i % 3][::2])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert runs[0] == 30
    stats = {k.key: k for k in kiln.rpc.connect(tracker.address).stats().keys}
    assert {k: stats[k].leases_granted for _, _, k in FARM} == {
        "x86": 2,
        "qemu-aarch64": 2,
        "qemu-riscv64": 2,
    }


def test_runner_is_persistent_time_and_profile(
    make_device: Callable[..., DeviceServer], tiny_packages: dict[str, Any], tmp_path: Path
) -> None:
    srv = make_device("aarch64-linux", "qemu-user")
    with kiln.rpc.connect_device(srv.address) as dev:
        m = dev.load(tiny_packages["aarch64-linux"])
        pid = srv.service.runner(m.sha256).session.peer.proc.pid
        for _ in range(10):
            m.run(tinypkg.inputs())
        assert srv.service.runner(m.sha256).session.peer.proc.pid == pid  # no respawn per run
        assert dev.info()["loaded"] == [m.sha256]
        times = m.time(number=5, repeat=3)
        assert len(times) == 3 and all(t > 0 for t in times)
        prof = m.profile(tinypkg.inputs())
        rows = {r.kernel: r for r in prof.rows()}
        assert (rows["scale"].calls, rows["add_weights"].calls) == (2, 1)
        assert abs(sum(r.percent for r in rows.values()) - 100) < 1e-6
        trace = json.loads(prof.write_chrome_trace(tmp_path / "t.json").read_text())
        assert [e["name"] for e in trace["traceEvents"] if e["ph"] == "X"] == [
            "scale",
            "scale",
            "add_weights",
        ]
        # loading the same package again reuses the upload and the runner
        assert dev.load(tiny_packages["aarch64-linux"]).sha256 == m.sha256
        assert srv.service.runner(m.sha256).session.peer.proc.pid == pid


@pytest.mark.parametrize("target, launcher", [("x86_64-linux", "local"), ("riscv64-linux", "qemu-user")])
def test_crash_hang_and_model_error_are_isolated(
    make_device: Callable[..., DeviceServer], tiny_packages: dict[str, Any], target: str, launcher: str
) -> None:
    srv = make_device(target, launcher)
    dev = kiln.rpc.connect_device(srv.address)
    m = dev.load(tiny_packages[target])
    good = tinypkg.inputs()
    m.run(good)

    with pytest.raises(RemoteError, match="died during run.*SIGSEGV") as ei:
        m.run(tinypkg.inputs(mode="segfault"))
    assert ei.value.code == grpc.StatusCode.INTERNAL
    assert_outputs(m.run(good), tinypkg.reference(good))  # a fresh runner serves the next call

    with pytest.raises(RemoteError, match="did not finish within 0.5 s") as ei:
        m.timeout = 0.5
        m.run(tinypkg.inputs(mode="hang"))
    m.timeout = None
    assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_outputs(m.run(good), tinypkg.reference(good))

    pid = srv.service.runner(m.sha256).session.peer.proc.pid
    with pytest.raises(RemoteError, match="device rejected RUN") as ei:
        m.run(tinypkg.inputs(mode="error"))
    assert ei.value.code == grpc.StatusCode.INTERNAL
    assert srv.service.runner(m.sha256).session.peer.proc.pid == pid  # an error reply keeps the runner

    with pytest.raises(RemoteError, match="expects float32 \\(2, 4\\)") as ei:
        m.run({"x": np.zeros((3, 4), np.float32), "mode": np.zeros(1, np.int32)})
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert_outputs(m.run(good), tinypkg.reference(good))
    assert dev.health()


def test_wrong_or_missing_token_runs_nothing(
    make_device: Callable[..., DeviceServer], tiny_packages: dict[str, Any]
) -> None:
    srv = make_device()
    pkg = tiny_packages["x86_64-linux"]
    for bad in ("wrong", None):
        dev = kiln.rpc.connect_device(srv.address, token=bad or "") if bad else None
        stub = device_pb2_grpc.DeviceStub(open_channel(srv.address, token=bad))
        with pytest.raises(grpc.RpcError) as ei:
            stub.Upload(iter([device_pb2.UploadChunk(sha256=pkg.sha256, size=3, data=b"abc")]), timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as ei:
            stub.Run(device_pb2.RunRequest(sha256=pkg.sha256), timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        if dev is not None:
            with pytest.raises(RemoteError) as ei2:
                dev.load(pkg)
            assert ei2.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert srv.service.runs_served == 0 and len(srv.cache) == 0 and not srv.service.loaded()


def _upload(srv: DeviceServer, data: bytes, sha: str, token: str) -> grpc.RpcError:
    stub = device_pb2_grpc.DeviceStub(open_channel(srv.address, token=token))
    with pytest.raises(grpc.RpcError) as ei:
        stub.Upload(iter([device_pb2.UploadChunk(sha256=sha, size=len(data), data=data)]), timeout=30)
    return ei.value


def test_corrupted_upload_is_rejected_cache_untouched(
    make_device: Callable[..., DeviceServer], tiny_packages: dict[str, Any], token: str
) -> None:
    srv = make_device()
    dev = kiln.rpc.connect_device(srv.address)
    other = tiny_packages["x86_64-linux"]
    dev.upload(other)
    before = sorted(p.name for p in srv.cache.root.iterdir())
    data = bytearray(tinypkg.build("x86_64-linux", name="tiny2").to_bytes())
    sha = hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0xFF  # one flipped bit in transit
    err = _upload(srv, bytes(data), sha, token)
    assert err.code() == grpc.StatusCode.DATA_LOSS and "does not match its sha256" in (err.details() or "")
    assert sorted(p.name for p in srv.cache.root.iterdir()) == before
    assert not dev._call("HasPackage", device_pb2.PackageRef(sha256=sha)).cached


def test_malicious_and_foreign_packages_are_rejected(
    make_device: Callable[..., DeviceServer], tiny_packages: dict[str, Any], token: str, tmp_path: Path
) -> None:
    srv = make_device(max_upload_bytes=1 << 20)
    # an archive whose member escapes the extraction directory
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in [("manifest.json", b"{}"), ("../../evil.sh", b"#!/bin/sh\ntouch pwned\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    evil = buf.getvalue()
    err = _upload(srv, evil, hashlib.sha256(evil).hexdigest(), token)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "package rejected" in (err.details() or "")
    assert len(srv.cache) == 0 and not list(srv.cache.root.parent.glob("**/evil.sh"))
    # a package for another target
    with pytest.raises(RemoteError, match="built for aarch64-linux, this device is x86_64-linux") as ei:
        kiln.rpc.connect_device(srv.address).load(tiny_packages["aarch64-linux"])
    assert ei.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # an upload over the size limit
    big = b"\0" * ((1 << 20) + 1)
    err = _upload(srv, big, hashlib.sha256(big).hexdigest(), token)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(srv.cache) == 0


def test_a_dynamic_shape_package_runs_remotely_at_several_sizes(
    make_tracker: Callable[..., TrackerServer], make_device: Callable[..., DeviceServer]
) -> None:
    """A package with run-time dimensions (dynamic shapes) behind the farm: each remote run sends its own
    sequence length, gets outputs of that length, and a length past the bound comes back as a clear error."""
    from models import DYNAMIC_SEQ_MAX, dynamic_onnx_path, onnxruntime_outputs

    path = dynamic_onnx_path("bert_dyn")
    seq = f"seq:{DYNAMIC_SEQ_MAX}"
    pkg = kiln.compile(path, target="x86_64-linux", shapes={"ids": (1, seq), "mask": (1, seq)})
    tracker = make_tracker()
    make_device("x86_64-linux", "local", key="x86", tracker=tracker.address)
    rng = np.random.default_rng(0)
    with kiln.rpc.connect(tracker.address, client="dyn").request("x86", timeout=60) as dev:
        m = dev.load(pkg)
        for n in (3, 40, 9):
            feeds = {
                "ids": rng.integers(0, 100, (1, n)).astype(np.int64),
                "mask": np.ones((1, n), np.float32),
            }
            got = m.run(feeds)["y"]
            assert got.shape == (1, n, 64)
            np.testing.assert_allclose(got, onnxruntime_outputs(path, feeds)["y"], rtol=2e-5, atol=2e-5)
        too_long = {"ids": np.zeros((1, 600), np.int64), "mask": np.ones((1, 600), np.float32)}
        with pytest.raises(RemoteError, match="the model was compiled for 1..512"):
            m.run(too_long)
