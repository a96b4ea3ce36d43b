"""Faults with real processes: a device server killed mid-run, a tracker restarted; and the kiln CLI
(run/bench/profile) against a farm of `kiln tracker` and `kiln serve` processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import kiln.rpc
import tinypkg
from farmproc import FarmProcess
from kiln.rpc.client import RemoteError
from kiln.rpc.servers import TrackerServer

pytestmark = pytest.mark.qemu


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def serve(
    tracker: str, key: str = "x86", target: str = "x86_64-linux", launcher: str = "local"
) -> FarmProcess:
    return FarmProcess(
        "serve",
        "--tracker",
        tracker,
        "--key",
        key,
        "--target",
        target,
        "--launcher",
        launcher,
        "--port",
        "0",
        new_session=True,
    )


def test_device_server_killed_mid_run(
    make_tracker: Callable[..., TrackerServer], tiny_packages: dict[str, Any]
) -> None:
    tracker = make_tracker(heartbeat_interval=0.2, liveness=0.6)
    dev_proc = serve(tracker.address)
    try:
        wait_until(lambda: len(tracker.tracker.devices()) == 1, what="device registered")
        dev = kiln.rpc.connect(tracker.address).request("x86", timeout=10)
        m = dev.load(tiny_packages["x86_64-linux"], timeout=60)
        failure: list[BaseException] = []

        def hang() -> None:
            try:
                m.run(tinypkg.inputs(mode="hang"))
            except BaseException as e:
                failure.append(e)

        t = threading.Thread(target=hang)
        t.start()
        time.sleep(0.5)  # the run is in progress on the device
        dev_proc.kill_group()  # the server and its runner die at once, like a board losing power
        t.join(20)
        assert failure and isinstance(failure[0], RemoteError)
        assert failure[0].code == grpc.StatusCode.UNAVAILABLE
        assert f"device 'x86' at {dev.address}" in str(failure[0])
        t0 = time.monotonic()
        wait_until(lambda: not tracker.tracker.devices(), timeout=5, what="the tracker to drop the device")
        assert time.monotonic() - t0 < 0.6 + 0.1 + 3.0  # liveness + sweep period + slack
        assert tracker.tracker.state.leases() == []  # the lease is freed
        wait_until(dev.lost.is_set, timeout=5, what="the client to learn its lease is gone")
        dev.release()
    finally:
        dev_proc.kill_group()


def test_tracker_restart_devices_come_back(tiny_packages: dict[str, Any], token: str) -> None:
    tr = FarmProcess("tracker", "--port", "0", "--heartbeat-interval", "0.2", "--liveness", "3")
    port = tr.address
    devices = [serve(tr.address), serve(tr.address, "qemu-aarch64", "aarch64-linux", "qemu-user")]
    try:
        client = kiln.rpc.connect(tr.address)
        wait_until(lambda: len(client.devices()) == 2, what="devices registered")
        tr.kill()
        time.sleep(0.5)
        tr = FarmProcess(
            "tracker", "--port", port.rpartition(":")[2], "--heartbeat-interval", "0.2", "--liveness", "3"
        )
        wait_until(
            lambda: len(client.devices()) == 2, timeout=15, what="devices to re-register by themselves"
        )
        with client.request("qemu-aarch64", timeout=10) as dev:
            feeds = tinypkg.inputs()
            out = dev.load(tiny_packages["aarch64-linux"]).run(feeds)
            np.testing.assert_array_equal(out["y"], tinypkg.reference(feeds)["y"])
    finally:
        for d in devices:
            d.kill_group()
        tr.kill()


def _kiln(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from kiln.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_cli_run_bench_profile_remote(
    make_tracker: Callable[..., TrackerServer], tiny_packages: dict[str, Any], tmp_path: Path
) -> None:
    tracker = make_tracker()
    dev_proc = serve(tracker.address, "qemu-aarch64", "aarch64-linux", "qemu-user")
    try:
        wait_until(lambda: len(tracker.tracker.devices()) == 1, what="device registered")
        pkg = tiny_packages["aarch64-linux"].save(tmp_path / "model.kpkg")
        feeds = tinypkg.inputs()
        np.save(tmp_path / "x.npy", feeds["x"])
        np.save(tmp_path / "mode.npy", feeds["mode"])
        remote = ["--tracker", tracker.address, "--key", "qemu-aarch64"]
        inputs = ["--input", f"x={tmp_path / 'x.npy'}", "--input", f"mode={tmp_path / 'mode.npy'}"]
        r = _kiln("run", str(pkg), *remote, *inputs, "--output", str(tmp_path / "out"))
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "y.npy"), tinypkg.reference(feeds)["y"])
        r = _kiln("bench", str(pkg), *remote, *inputs, "--number", "20", "--repeat", "5")
        assert r.returncode == 0, r.stderr
        assert "median" in r.stdout and "5 repeats of 20 runs" in r.stdout
        r = _kiln("profile", str(pkg), *remote, *inputs, "--trace", str(tmp_path / "t.json"))
        assert r.returncode == 0, r.stderr
        assert "scale" in r.stdout and "add_weights" in r.stdout
        assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
        r = _kiln("run", str(pkg), "--tracker", tracker.address, *inputs)
        assert r.returncode != 0 and "--key" in r.stderr
        # a farm device serves lease holders only: --device straight to it is refused, with what to do
        r = _kiln("run", str(pkg), "--device", dev_proc.address, *inputs)
        assert r.returncode == 1 and "lease it from the tracker" in r.stderr
        assert "Traceback" not in r.stderr
        assert all(d.state == "free" for d in tracker.tracker.devices())  # every command released its lease
    finally:
        dev_proc.kill_group()
