"""Issue 9: the farm as an adversary with a valid token and an operator under faults see it. One test (or a few)
per numbered defect; items 1 and 9 are in test_auth_hardening.py, the streaming unpack of item 4 also in
tests/package."""

from __future__ import annotations

import hashlib
import io
import math
import os
import resource
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import kiln.rpc
import tinypkg
from farmproc import FarmProcess
from kiln.package.kpkg import Package
from kiln.rpc import device_pb2, device_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from kiln.rpc.auth import open_channel, server_security, token_digest
from kiln.rpc.client import RemoteError
from kiln.rpc.common import Capabilities, tensor_to_proto
from kiln.rpc.servers import DeviceServer, TrackerServer
from kiln.rpc.state import SqliteTrackerState
from kiln.rpc.tracker import Tracker

pytestmark = pytest.mark.qemu

TOKENS = {"alice": "alice-token-0001", "bob": "bob-token-0002", "ci": "ci-token-0003"}
ADMIN = "admin-token-0004"


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def tokens_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("KILN_RPC_TOKEN", raising=False)
    monkeypatch.delenv("KILN_RPC_TOKEN_FILE", raising=False)
    f = tmp_path / "tokens.toml"
    caps = {"alice": 0, "bob": 0, "ci": 5}
    f.write_text(
        "".join(
            f'[tokens.{n}]\nsha256 = "{token_digest(t)}"\nmax_priority = {caps[n]}\n\n'
            for n, t in TOKENS.items()
        )
    )
    return f


@pytest.fixture
def farm(tokens_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """make(state=None, **device_kw) -> (tracker server, device server): per-client tokens, an admin token."""
    from kiln.device.launchers import make_launcher

    started: list[Any] = []

    def make(state: Any = None, tracker_port: int = 0, **kw: Any) -> tuple[TrackerServer, DeviceServer]:
        security = server_security(ADMIN, tokens_file=tokens_file)
        tracker = TrackerServer(
            Tracker(state, heartbeat_interval=0.2, liveness=3.0, lease_ttl=3.0), security, port=tracker_port
        ).start()
        started.append(tracker)
        kw.setdefault("cache_dir", tmp_path_factory.mktemp("cache"))
        dev = DeviceServer(
            key="x86",
            target="x86_64-linux",
            launcher=make_launcher("local", "x86_64-linux"),
            security=security,
            tracker=tracker.address,
            tracker_token=ADMIN,
            retry_interval=0.05,
            call_timeout=30.0,
            **kw,
        ).start()
        started.append(dev)
        assert dev.agent is not None and dev.agent.registered.wait(10)
        return tracker, dev

    yield make
    for s in reversed(started):
        s.stop(grace=None)


def client(tracker: TrackerServer, who: str) -> kiln.rpc.client.TrackerClient:
    return kiln.rpc.connect(tracker.address, token=TOKENS[who], client=f"{who}-laptop")


def device_stub(address: str, token: str, lease_id: str | None) -> tuple[Any, tuple[tuple[str, str], ...]]:
    md: list[tuple[str, str]] = [("authorization", f"Bearer {token}")]
    if lease_id:
        md.append(("kiln-lease", lease_id))
    return device_pb2_grpc.DeviceStub(grpc.insecure_channel(address)), tuple(md)


def code_of(fn: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    return ei.value.code()


# ---------------------------------------------------------------------------------- 3. identity and leases


def test_lease_ids_are_secrets_and_bound_to_their_owner(
    farm: Callable[..., Any], tiny_packages: dict
) -> None:
    tracker, dev = farm()
    pkg = tiny_packages["x86_64-linux"]
    alice, bob = client(tracker, "alice"), client(tracker, "bob")
    with alice.request("x86", timeout=5) as d:
        lease_id = d.lease_id
        m = d.load(pkg)
        m.run(tinypkg.inputs())
        # nobody learns the lease id from the tracker
        stub = tracker_pb2_grpc.TrackerStub(open_channel(tracker.address, token=TOKENS["bob"]))
        listing = stub.ListDevices(tracker_pb2.ListDevicesRequest(), timeout=5)
        assert [x.lease_id for x in listing.devices] == [""]
        assert listing.devices[0].lease_holder == "alice (alice-laptop)"
        assert lease_id not in str(listing) and lease_id not in repr(d)
        # bob knowing the id still cannot renew, release or use alice's lease
        for rpc in (stub.RenewLease, stub.ReleaseLease):
            assert code_of(lambda: rpc(tracker_pb2.LeaseRef(lease_id=lease_id), timeout=5)) == (
                grpc.StatusCode.NOT_FOUND
            )
        dstub, md = device_stub(dev.address, TOKENS["bob"], lease_id)
        req = device_pb2.RunRequest(
            sha256=m.sha256, inputs=[tensor_to_proto(k, v) for k, v in tinypkg.inputs().items()]
        )
        assert code_of(lambda: dstub.Run(req, timeout=10, metadata=md)) == grpc.StatusCode.PERMISSION_DENIED
        # and bob without a lease is refused everything but Health and Info
        dstub, md = device_stub(dev.address, TOKENS["bob"], None)
        assert code_of(lambda: dstub.Run(req, timeout=10, metadata=md)) == grpc.StatusCode.PERMISSION_DENIED
        assert (
            code_of(lambda: dstub.HasPackage(device_pb2.PackageRef(sha256=m.sha256), timeout=10, metadata=md))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert dstub.Health(device_pb2.HealthRequest(), timeout=5, metadata=md).serving
        assert list(dstub.Info(device_pb2.InfoRequest(), timeout=5, metadata=md).loaded) == []  # not alice's
        m.run(tinypkg.inputs())  # alice was not disturbed
    # after release the old lease id opens nothing, and its runner is gone
    dstub, md = device_stub(dev.address, TOKENS["alice"], lease_id)
    wait_until(lambda: not dev.service.loaded(), timeout=5, what="the released lease's runner to stop")
    assert code_of(lambda: dstub.Run(req, timeout=10, metadata=md)) == grpc.StatusCode.PERMISSION_DENIED
    # bob's own lease: alice's package is not visible to him, and not loadable by its sha256
    with bob.request("x86", timeout=5) as d:
        assert not d._call("HasPackage", device_pb2.PackageRef(sha256=m.sha256)).cached
        with pytest.raises(RemoteError) as ei:
            d._call("Load", device_pb2.PackageRef(sha256=m.sha256))
        assert ei.value.code == grpc.StatusCode.NOT_FOUND
        d.load(pkg).run(tinypkg.inputs())  # uploading it himself works (bytes stored once)
    assert len(dev.cache) == 1


def test_clients_cannot_register_or_unregister_and_priorities_are_capped(farm: Callable[..., Any]) -> None:
    tracker, dev = farm()
    stub = tracker_pb2_grpc.TrackerStub(open_channel(tracker.address, token=TOKENS["bob"]))
    rogue = Capabilities("x86", "x86_64-linux", "local", "1", dev.caps.address)
    assert code_of(lambda: stub.Register(tracker_pb2.RegisterRequest(caps=rogue.to_proto()), timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    dev_id = tracker.tracker.devices()[0].device_id
    assert code_of(lambda: stub.Unregister(tracker_pb2.DeviceRef(device_id=dev_id), timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code_of(lambda: stub.Heartbeat(tracker_pb2.HeartbeatRequest(device_id=dev_id), timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert [d.device_id for d in tracker.tracker.devices()] == [dev_id]
    with pytest.raises(RemoteError, match="over the cap of 0") as ei:
        client(tracker, "bob").request("x86", timeout=5, priority=1)
    assert ei.value.code == grpc.StatusCode.PERMISSION_DENIED
    with client(tracker, "ci").request("x86", timeout=5, priority=5):
        pass
    with pytest.raises(RemoteError, match="over the cap of 5"):
        client(tracker, "ci").request("x86", timeout=5, priority=6)


def test_leases_survive_a_tracker_restart_with_sqlite_state(
    farm: Callable[..., Any], tiny_packages: dict, tmp_path: Path
) -> None:
    tracker, dev = farm(state=SqliteTrackerState(tmp_path / "tracker.db"))
    port = tracker.port
    alice = client(tracker, "alice")
    d = alice.request("x86", timeout=5)
    m = d.load(tiny_packages["x86_64-linux"])
    m.run(tinypkg.inputs())
    tracker.stop(grace=None)
    tracker.tracker.state.close()  # type: ignore[attr-defined]
    tr2 = TrackerServer(
        Tracker(
            SqliteTrackerState(tmp_path / "tracker.db"), heartbeat_interval=0.2, liveness=3.0, lease_ttl=3.0
        ),
        server_security(ADMIN, tokens_file=tmp_path / "tokens.toml"),
        port=port,
    ).start()
    try:
        assert [v.lease_holder for v in tr2.tracker.devices()] == ["alice (alice-laptop)"]
        # nobody else gets the device while alice holds it; alice keeps running on it
        with pytest.raises(RemoteError, match="all leased"):
            client(tr2, "bob").request("x86", timeout=0.5)
        time.sleep(1.0)  # a few heartbeats and renewals against the new tracker
        assert dev.agent is not None and dev.agent.registrations == 1  # no re-registration needed
        m.run(tinypkg.inputs())
        assert not d.lost.is_set()
        d.release()
        with client(tr2, "bob").request("x86", timeout=5):
            pass
    finally:
        tr2.stop(grace=None)


def test_a_tracker_that_forgets_revokes_the_lease_on_the_device(
    farm: Callable[..., Any], tiny_packages: dict, tokens_file: Path
) -> None:
    tracker, dev = farm()
    port = tracker.port
    d = client(tracker, "alice").request("x86", timeout=5)
    m = d.load(tiny_packages["x86_64-linux"])
    m.run(tinypkg.inputs())
    tracker.stop(grace=None)
    tr2 = TrackerServer(
        Tracker(heartbeat_interval=0.2, liveness=3.0, lease_ttl=3.0),
        server_security(ADMIN, tokens_file=tokens_file),
        port=port,
    ).start()
    try:
        wait_until(lambda: dev.agent is not None and dev.agent.registrations == 2, what="re-registration")
        wait_until(lambda: not dev.service.loaded(), timeout=5, what="the forgotten lease's runner to stop")
        with pytest.raises(RemoteError) as ei:  # the old holder cannot keep using the device
            m.run(tinypkg.inputs())
        assert ei.value.code == grpc.StatusCode.PERMISSION_DENIED
        with client(tr2, "bob").request("x86", timeout=5) as d2:  # the new holder has it alone
            d2.load(tiny_packages["x86_64-linux"]).run(tinypkg.inputs())
    finally:
        d.release()
        tr2.stop(grace=None)


def test_sqlite_state_persists_devices_leases_and_counters(tmp_path: Path) -> None:
    from kiln.rpc.state import DeviceRecord, LeaseRecord

    db = tmp_path / "t.db"
    s = SqliteTrackerState(db)
    s.put_device(DeviceRecord("a", Capabilities("k", address="h:1"), 0, 0, 0, lease_id="L"))
    s.put_lease(LeaseRecord("L", "a", "k", "me", 0, 10, 0, owner="alice"))
    st = s.key_stats("k")
    st.leases_granted = 3
    s.put_key_stats(st)
    s.close()
    s2 = SqliteTrackerState(db)
    assert s2.get_device("a").lease_id == "L"  # type: ignore[union-attr]
    assert s2.get_lease("L").owner == "alice"  # type: ignore[union-attr]
    assert s2.key_stats("k").leases_granted == 3
    assert s2.device_at("h:1").device_id == "a"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ 2. runner isolation


def _probe_package(target: str, script: str) -> Package:
    runner = script.encode()
    files = {"bin/runner": runner}
    manifest = {
        "format_version": 1,
        "name": "probe",
        "target": {"name": target},
        "inputs": [],
        "outputs": [],
        "runnable": "bin/runner",
        "files": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in files.items()},
    }
    return Package(manifest, files)


def test_runner_is_confined(
    make_device: Callable[..., DeviceServer], tiny_packages: dict, tmp_path: Path
) -> None:
    srv = make_device()
    marker = Path("/tmp") / f"kiln-probe-marker-{os.getpid()}"
    marker.write_text("host tmp")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        dev = kiln.rpc.connect_device(srv.address)
        dev.load(tiny_packages["x86_64-linux"])  # a sibling runner with its own directory
        work = srv.service._workroot
        script = f"""#!/bin/sh
echo "ENV=$(env | cut -d= -f1 | sort | tr '\\n' ,)" >&2
echo "UID=$(id -u) CWD=$(pwd)" >&2
ls {work} >/dev/null 2>&1 && echo "WORKROOT=listed" >&2 || echo "WORKROOT=denied" >&2
cat {work}/*/manifest.json >/dev/null 2>&1 && echo "SIBLING=read" >&2 || echo "SIBLING=denied" >&2
cat {srv.cache.root}/*.kpkg >/dev/null 2>&1 && echo "CACHE=read" >&2 || echo "CACHE=denied" >&2
test -e {marker} && echo "TMP=shared" >&2 || echo "TMP=private" >&2
(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo "NET=open" >&2 || echo "NET=closed" >&2
touch {srv.cache.root}/pwned 2>/dev/null && echo "WRITE=cache" >&2 || echo "WRITE=denied" >&2
echo "LIMITS=$(ulimit -v) $(ulimit -c)" >&2
exit 3
"""
        if Path("/bin/bash").exists():
            script = script.replace("#!/bin/sh", "#!/bin/bash")
        with pytest.raises(RemoteError) as ei:
            dev.load(_probe_package("x86_64-linux", script))
    marker.unlink()
    out = str(ei.value)
    assert "ENV=LANG,PATH,PWD,SHLVL,TMPDIR,_," in out or "ENV=LANG,PATH,PWD,TMPDIR," in out, out
    assert "KILN_RPC_TOKEN" not in out
    assert "WORKROOT=denied" in out and "SIBLING=denied" in out and "CACHE=denied" in out, out
    assert "WRITE=denied" in out and "LIMITS=" in out and " 0" in out.split("LIMITS=")[1][:30], out
    assert f"CWD={work}" in out
    if os.geteuid() == 0:
        assert "UID=0" not in out and "TMP=private" in out and "NET=closed" in out, out
    assert not (srv.cache.root / "pwned").exists()


# ---------------------------------------------------------------------------------- 4. unpacking limits


def _sparse_archive(tmp: Path, real_size: int) -> bytes:
    """A small GNU tar archive whose member ``bin/runner`` is a sparse file of ``real_size`` bytes."""
    (tmp / "bin").mkdir()
    (tmp / "manifest.json").write_text("{}")
    with (tmp / "bin" / "runner").open("wb") as f:
        f.truncate(real_size)
        f.seek(real_size - 4096)
        f.write(b"x" * 4096)
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-cf", "sparse.tar", "manifest.json", "bin/runner"],
        cwd=tmp,
        check=True,
    )
    return (tmp / "sparse.tar").read_bytes()


def test_sparse_member_is_refused_without_allocating(
    make_device: Callable[..., DeviceServer], token: str, tmp_path: Path
) -> None:
    if "GNU" not in subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("needs GNU tar to make a sparse archive")
    srv = make_device()
    data = _sparse_archive(tmp_path, 4 << 30)
    assert len(data) < 64 * 1024
    info = tarfile.open(fileobj=io.BytesIO(data)).getmembers()[-1]
    assert info.issparse() and info.size == 4 << 30  # what the old loader expanded in memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stub = device_pb2_grpc.DeviceStub(open_channel(srv.address, token=token))
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Upload(
            iter(
                [device_pb2.UploadChunk(sha256=hashlib.sha256(data).hexdigest(), size=len(data), data=data)]
            ),
            timeout=60,
        )
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    assert "sparse" in (ei.value.details() or "")
    assert time.monotonic() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: < 100 MiB more
    assert len(srv.cache) == 0


# ------------------------------------------------------------------------------ 5. uploads and health


def test_stalled_uploads_cannot_starve_health(
    make_device: Callable[..., DeviceServer], token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiln.rpc.servicers as servicers

    monkeypatch.setattr(servicers, "UPLOAD_IDLE_S", 1.0)
    srv = make_device(max_workers=8)
    stub = device_pb2_grpc.DeviceStub(open_channel(srv.address, token=token))
    release = threading.Event()

    def stalled() -> Iterator[device_pb2.UploadChunk]:
        yield device_pb2.UploadChunk(sha256="ab" * 32, size=10 << 20, data=b"x" * 1024)
        release.wait(30)

    calls = [stub.Upload.future(stalled(), timeout=30) for _ in range(16)]
    try:
        t0 = time.monotonic()
        for _ in range(5):
            assert stub.Health(device_pb2.HealthRequest(), timeout=2).serving
            stub.Info(device_pb2.InfoRequest(), timeout=2)
        assert time.monotonic() - t0 < 5
        codes = [c.exception().code() for c in calls]  # type: ignore[union-attr]
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 14  # only 2 uploads at a time
        assert all(
            c in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.DATA_LOSS)
            for c in codes
        ), codes  # the stalled ones were cancelled by the idle deadline
    finally:
        release.set()


# ---------------------------------------------------------------------------------- 6. eviction when busy


def test_eviction_never_kills_a_busy_runner(
    make_device: Callable[..., DeviceServer], tiny_packages: dict
) -> None:
    srv = make_device(max_runners=1)
    dev = kiln.rpc.connect_device(srv.address)
    a = dev.load(tiny_packages["x86_64-linux"])
    a.timeout = 20
    b_pkg = tinypkg.build("x86_64-linux", name="tiny-b")
    failure: list[BaseException] = []

    def hang() -> None:
        try:
            a.run(tinypkg.inputs(mode="hang"))
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=hang)
    t.start()
    wait_until(
        lambda: srv.service.runner(a.sha256) is not None and srv.service.runner(a.sha256).lock.locked()
    )  # type: ignore[union-attr]
    pid = srv.service.runner(a.sha256).session.peer.proc.pid  # type: ignore[union-attr]
    with pytest.raises(RemoteError, match="busy") as ei:
        dev.load(b_pkg)
    assert ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert srv.service.runner(a.sha256).session.peer.proc.poll() is None  # type: ignore[union-attr]
    assert t.is_alive() and not failure  # the other client's call goes on
    os.kill(pid, 9)
    t.join(10)
    dev.load(b_pkg).run(tinypkg.inputs())  # now there is room


# --------------------------------------------------------------------------------------- 7. cancellation


def test_abandoned_call_stops_its_runner(
    make_device: Callable[..., DeviceServer], tiny_packages: dict, token: str
) -> None:
    srv = make_device()
    dev = kiln.rpc.connect_device(srv.address)
    m = dev.load(tiny_packages["x86_64-linux"])
    r = srv.service.runner(m.sha256)
    assert r is not None
    proc = r.session.peer.proc  # type: ignore[attr-defined]
    stub = device_pb2_grpc.DeviceStub(open_channel(srv.address, token=token))
    req = device_pb2.RunRequest(
        sha256=m.sha256, inputs=[tensor_to_proto(k, v) for k, v in tinypkg.inputs(mode="hang").items()]
    )
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Run(req, timeout=0.5)  # the client's deadline passes; the server's timeout is 30 s
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    proc.wait(5)  # killed at once, not after the server's 30 s
    assert time.monotonic() - t0 < 5
    wait_until(lambda: not r.lock.locked(), timeout=5, what="the device to be idle again")
    # Ctrl-C of a client process: the same
    code = (
        "import sys, kiln.rpc; sys.path.insert(0, 'tests'); import tinypkg; "
        f"m = kiln.rpc.connect_device({srv.address!r}).load(tinypkg.build('x86_64-linux')); "
        "print('loaded', flush=True); m.run(tinypkg.inputs(mode='hang'))"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "loaded"
    wait_until(
        lambda: (x := srv.service.runner(m.sha256)) is not None and x.lock.locked(), what="run started"
    )
    proc = srv.service.runner(m.sha256).session.peer.proc  # type: ignore[union-attr]
    p.kill()
    p.wait()
    proc.wait(5)
    assert m.run(tinypkg.inputs())["y"].shape == (2, 4)


# ----------------------------------------------------------------------------------- 8. timeout validation


@pytest.mark.parametrize("bad", [math.nan, -1.0, 0.0, 1e300, math.inf])
def test_client_timeouts_are_validated(
    bad: float, make_device: Callable[..., DeviceServer], tiny_packages: dict
) -> None:
    srv = make_device()
    m = kiln.rpc.connect_device(srv.address).load(tiny_packages["x86_64-linux"])
    m.timeout = bad
    with pytest.raises(ValueError, match="finite number of seconds"):
        m.run(tinypkg.inputs())


def test_server_caps_every_call_and_refuses_bad_flops(
    make_device: Callable[..., DeviceServer], tiny_packages: dict, token: str
) -> None:
    srv = make_device(call_timeout=1.0)
    m = kiln.rpc.connect_device(srv.address).load(tiny_packages["x86_64-linux"])
    stub = device_pb2_grpc.DeviceStub(open_channel(srv.address, token=token))
    req = device_pb2.RunRequest(
        sha256=m.sha256,
        inputs=[tensor_to_proto(k, v) for k, v in tinypkg.inputs(mode="hang").items()],
        timeout_ms=2**32 - 1,  # 50 days: capped by --call-timeout
    )
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Run(req, timeout=30)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5
    for flops in (math.inf, math.nan, -5.0, 1e300, "many", True):
        pkg = tiny_packages["x86_64-linux"]
        manifest = pkg.manifest
        manifest["flops"] = flops
        bad = Package(manifest, dict(pkg.files))
        if flops == 1e300:
            m2 = kiln.rpc.connect_device(srv.address).load(bad)  # huge but finite: allowed, capped at 1 s
            with pytest.raises(RemoteError, match="within 1 s") as ei2:
                m2.run(tinypkg.inputs(mode="hang"))
            assert ei2.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            continue
        with pytest.raises(RemoteError, match="flops") as ei2:
            kiln.rpc.connect_device(srv.address).load(bad)
        assert ei2.value.code == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------------------------------ 10. the CLI


def _kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from kiln.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_errors_are_one_line_with_hints(
    make_tracker: Callable[..., TrackerServer],
    make_device: Callable[..., DeviceServer],
    tiny_packages: dict,
    tmp_path: Path,
) -> None:
    tracker = make_tracker()
    srv = make_device(key="x86", tracker=tracker.address)
    wait_until(lambda: len(tracker.tracker.devices()) == 1, what="device registered")
    pkg = tiny_packages["x86_64-linux"].save(tmp_path / "m.kpkg")
    feeds = tinypkg.inputs()
    np.save(tmp_path / "x.npy", feeds["x"])
    np.save(tmp_path / "mode.npy", feeds["mode"])
    inputs = ["--input", f"x={tmp_path / 'x.npy'}", "--input", f"mode={tmp_path / 'mode.npy'}"]
    # a device server's address where a tracker's is expected
    r = _kiln("run", str(pkg), "--tracker", srv.address, "--key", "x86", *inputs)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "not a kiln tracker" in r.stderr and "device server" in r.stderr, r.stderr
    # a tracker's address where a device server's is expected
    r = _kiln("run", str(pkg), "--device", tracker.address, *inputs)
    assert r.returncode == 1 and "not a kiln device server" in r.stderr, r.stderr
    # queued behind another client: position and wait are shown
    with kiln.rpc.connect(tracker.address).request("x86", timeout=5) as held:
        done: list[subprocess.CompletedProcess[str]] = []
        t = threading.Thread(
            target=lambda: done.append(
                _kiln("run", str(pkg), "--tracker", tracker.address, "--key", "x86", *inputs)
            )
        )
        t.start()
        wait_until(lambda: tracker.tracker.queue_lengths().get("x86") == 1, what="the CLI to queue")
        time.sleep(0.3)
    t.join(60)
    assert done[0].returncode == 0, done[0].stderr
    assert "waiting for a 'x86' device: position 1 of 1" in done[0].stderr
    assert held is not None


# ---------------------------------------------------------------------------------------- 11. the smaller


def test_file_and_directory_clash_is_refused_and_leaves_nothing(
    make_device: Callable[..., DeviceServer], tiny_packages: dict, token: str
) -> None:
    srv = make_device()
    pkg = tiny_packages["x86_64-linux"]
    files = dict(pkg.files)
    files["bin"] = b"i am a file"
    manifest = pkg.manifest
    manifest["files"]["bin"] = {"sha256": hashlib.sha256(b"i am a file").hexdigest(), "size": 11}
    bad = Package(manifest, files)
    with pytest.raises(RemoteError, match="both a file and a directory") as ei:
        kiln.rpc.connect_device(srv.address).load(bad)
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(srv.service._workroot.iterdir()) == []


def test_target_without_name_is_refused(
    make_device: Callable[..., DeviceServer], tiny_packages: dict
) -> None:
    srv = make_device()
    pkg = tiny_packages["aarch64-linux"]
    manifest = pkg.manifest
    manifest["target"] = {"triple": "aarch64-linux-gnu"}
    with pytest.raises(RemoteError, match="names no target") as ei:
        kiln.rpc.connect_device(srv.address).load(Package(manifest, dict(pkg.files)))
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_huge_shapes_and_time_arguments_are_invalid_arguments(
    make_device: Callable[..., DeviceServer], tiny_packages: dict, token: str
) -> None:
    srv = make_device()
    m = kiln.rpc.connect_device(srv.address).load(tiny_packages["x86_64-linux"])
    stub = device_pb2_grpc.DeviceStub(open_channel(srv.address, token=token))
    from kiln.rpc import common_pb2

    huge = common_pb2.Tensor(name="x", dtype="float32", shape=[2**32, 2**32], data=b"")
    with pytest.raises(grpc.RpcError) as ei:
        stub.Run(device_pb2.RunRequest(sha256=m.sha256, inputs=[huge]), timeout=10)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the limit" in (
        ei.value.details() or ""
    )
    for number, repeat, min_ms in [(0, 1, 0), (2**31, 1, 0), (1, 0, 0), (1, 10**6, 0), (1, 1, 2**31)]:
        with pytest.raises(grpc.RpcError) as ei:
            stub.Time(
                device_pb2.TimeRequest(sha256=m.sha256, number=number, repeat=repeat, min_repeat_ms=min_ms),
                timeout=10,
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (number, repeat, ei.value.details())
    assert len(m.time(number=1, repeat=1)) == 1


def test_killed_device_server_leaves_nothing_behind(token: str) -> None:
    cache = Path(os.environ.get("TMPDIR", "/tmp"))
    proc = FarmProcess(
        "serve", "--key", "x86", "--target", "x86_64-linux", "--launcher", "local", "--port", "0"
    )
    try:
        m = kiln.rpc.connect_device(proc.address).load(tinypkg.build("x86_64-linux"))
        m.run(tinypkg.inputs())
        state = cache / f"kiln-serve-{proc.proc.pid}"
        assert state.is_dir()
        pids = [int(p.read_text().split()[0]) for p in (state / "work").glob("*.pid")]
        assert len(pids) == 1
        proc.proc.kill()  # SIGKILL: no cleanup of its own
        proc.proc.wait()
        wait_until(
            lambda: (
                not Path(f"/proc/{pids[0]}").exists()
                or "Z" in Path(f"/proc/{pids[0]}/stat").read_text().split()[2]
            ),
            timeout=5,
            what="the orphan runner to die with its server",
        )
        assert state.is_dir()  # left behind ...
        nxt = FarmProcess(
            "serve", "--key", "x86", "--target", "x86_64-linux", "--launcher", "local", "--port", "0"
        )
        try:
            assert not state.exists()  # ... and removed by the next server that starts
        finally:
            nxt.kill()
    finally:
        proc.kill()
