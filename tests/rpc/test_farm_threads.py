"""Per-session thread counts on farm devices: the count a client asks for reaches the runner (its threads in
/proc, the size the device reports), gives the outputs of one thread and of the NumPy reference, and counts a
device cannot give are refused with what to ask for instead."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

import kiln
import kiln.rpc
from kiln.driver import compile_module
from kiln.frontend.nn import GraphBuilder
from kiln.ir import Module
from kiln.ir import tensor as T
from kiln.ops.interpreter import interpret
from kiln.rpc import device_pb2, device_pb2_grpc
from kiln.rpc.auth import METADATA_KEY, open_channel
from kiln.rpc.client import RemoteError
from kiln.rpc.servers import DeviceServer, TrackerServer

RNG = np.random.default_rng(11)


def dense() -> Module:
    """A tall product (row tiles in parallel) and a matrix-vector product (column blocks in parallel)."""
    g = GraphBuilder()
    a = g.input("a", (100, 96))
    v = g.input("v", (1, 1024))
    g.output(g.matmul(a, g.const((RNG.standard_normal((96, 20)) * 0.1).astype("f4"))), "tall")
    g.output(g.matmul(v, g.const((RNG.standard_normal((1024, 600)) * 0.1).astype("f4"))), "wide")
    return g.build()


@pytest.fixture(scope="module")
def model() -> tuple[Module, dict[str, np.ndarray], dict[str, np.ndarray]]:
    mod = dense()
    lowered = compile_module(mod, "x86_64-linux")
    assert any(
        isinstance(s, T.For) and s.kind == "parallel"
        for f in lowered.tensor_functions().values()
        for s in T.walk_stmts(f.body)
    ), "the schedules marked no loop parallel: thread counts would change nothing"
    feed = {p.name: RNG.standard_normal(p.type.static_shape).astype("f4") for p in mod.main.params}
    return mod, feed, interpret(mod, feed)


def _tasks(srv: DeviceServer, threads: int) -> int:
    """The threads of the device's live runner whose pool it reports as ``threads``, read from /proc."""
    (runner,) = [r for r in srv.service.runners() if r.threads == threads]
    pid = runner.session.peer.proc.pid  # type: ignore[attr-defined]
    return len(os.listdir(f"/proc/{pid}/task"))


def _check(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_session_thread_counts_reach_the_runner(
    make_tracker: Callable[..., TrackerServer], make_device: Callable[..., DeviceServer], model: Any
) -> None:
    mod, feed, want = model
    tracker = make_tracker()
    srv = make_device(tracker=tracker.address, cores=3)  # more than this machine may have: the admin's call
    assert srv.caps.cores == 3
    pkg = kiln.compile(mod, "x86_64-linux", threads=2)  # the package's default: 2
    with kiln.rpc.connect(tracker.address).request("x86", timeout=60) as dev:
        assert dev.caps.cores == 3  # the tracker hands out what the device server registered
        one = dev.load(pkg, threads=1)
        three = dev.load(pkg, threads=3)
        default = dev.load(pkg)
        every = dev.load(pkg, threads=0)  # one per core of the device
        assert (one.pool_threads, three.pool_threads, default.pool_threads, every.pool_threads) == (
            1,
            3,
            2,
            3,
        )
        out1 = one.run(feed)
        out3 = three.run(feed)
        _check(out1, want)
        _check(out3, want)
        _check(default.run(feed), want)
        _check(every.run(feed), want)
        for name in want:  # the pool splits the work, never the arithmetic of an element
            np.testing.assert_array_equal(out1[name], out3[name], err_msg=name)
        assert _tasks(srv, 1) == 1 and _tasks(srv, 3) == 3 and _tasks(srv, 2) == 2
        assert len(srv.service.runners()) == 3  # threads=0 and threads=3 share a runner
        assert len(three.time(number=2, repeat=2)) == 2
        assert {c.name for c in three.profile(feed).calls} == set(pkg.manifest["kernels"])
        assert _tasks(srv, 3) == 3  # TIME and PROFILE went to the same runner
        with pytest.raises(RemoteError) as e:
            dev.load(pkg, threads=4)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "has 3 cores: ask for 1 to 3 threads" in str(e.value) and "not 4" in str(e.value)
        with pytest.raises(ValueError, match="threads must be a whole number"):
            dev.load(pkg, threads=-1)
        one.unload()  # every runner of the package
        assert srv.service.runners() == []
        _check(three.run(feed), want)  # a call after the unload starts its runner again, with its count
        assert _tasks(srv, 3) == 3


def test_the_default_core_count_is_the_cpus_the_server_may_use(
    make_device: Callable[..., DeviceServer],
) -> None:
    srv = make_device()
    assert srv.caps.cores == len(os.sched_getaffinity(0))
    info = kiln.rpc.connect_device(srv.address).info()
    assert info["caps"].cores == srv.caps.cores
    with pytest.raises(ValueError, match="cores must be a whole number from 1"):
        make_device(cores=0)


@pytest.mark.qemu
def test_threads_under_qemu_user_give_the_outputs_of_one_thread(
    make_device: Callable[..., DeviceServer], model: Any
) -> None:
    mod, feed, want = model
    srv = make_device("aarch64-linux", "qemu-user", cores=2)
    pkg = kiln.compile(mod, "aarch64-linux")
    with kiln.rpc.connect_device(srv.address) as dev:
        one, two = dev.load(pkg, threads=1), dev.load(pkg, threads=2)
        assert (one.pool_threads, two.pool_threads) == (1, 2)
        out1, out2 = one.run(feed), two.run(feed)
    _check(out2, want)
    for name in want:
        np.testing.assert_array_equal(out1[name], out2[name], err_msg=name)


def test_bare_metal_devices_refuse_more_than_one_thread(
    make_device: Callable[..., DeviceServer], token: str
) -> None:
    srv = make_device("mps2-an386", "qemu-system", key="an386")
    assert srv.caps.cores == 1
    stub = device_pb2_grpc.DeviceStub(open_channel(srv.address))
    md = ((METADATA_KEY, f"Bearer {token}"),)
    with pytest.raises(grpc.RpcError) as e:
        stub.Load(device_pb2.LoadRequest(sha256="ab" * 32, threads=2), metadata=md, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "runs bare-metal firmware on one thread" in (e.value.details() or "")
    # one thread is what the firmware has: the request passes the thread check and fails on the package
    with pytest.raises(grpc.RpcError) as e:
        stub.Load(device_pb2.LoadRequest(sha256="ab" * 32, threads=1), metadata=md, timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ValueError, match="bare metal: its firmware runs on one core"):
        make_device("mps2-an386", "qemu-system", key="an386", cores=2)


def test_cli_threads_on_a_farm_device(
    make_device: Callable[..., DeviceServer], token: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from kiln.cli import main

    mod = dense()
    srv = make_device(cores=2)
    path = tmp_path / "dense.kpkg"
    kiln.compile(mod, "x86_64-linux").save(path)
    remote = ["--device", srv.address, "--random-inputs"]
    assert main(["bench", str(path), *remote, "--threads", "2", "--number", "2", "--repeat", "2"]) == 0
    assert "median" in capsys.readouterr().out
    assert [r.threads for r in srv.service.runners()] == [2]
    assert main(["run", str(path), *remote, "--threads", "3"]) == 1
    err = capsys.readouterr().err
    assert "has 2 cores: ask for 1 to 2 threads (0: one per core), not 3" in err and "Traceback" not in err
