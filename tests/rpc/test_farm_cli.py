"""The farm commands as processes: `kiln tracker`, `kiln devices`, and their refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from farmproc import FarmProcess
from kiln import cli
from kiln.rpc.agent import TrackerAgent
from kiln.rpc.common import Capabilities


def kiln_rpc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.rpc.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_tracker_refuses_to_start_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_RPC_TOKEN", raising=False)
    monkeypatch.delenv("KILN_RPC_TOKEN_FILE", raising=False)
    r = kiln_rpc("tracker", "--port", "0")
    assert r.returncode == 2
    assert "KILN_RPC_TOKEN" in r.stderr and "--insecure" in r.stderr


def test_tracker_and_devices_table(token: str) -> None:
    tr = FarmProcess("tracker", "--port", "0", "--heartbeat-interval", "0.2", "--liveness", "3")
    try:
        agents = [
            TrackerAgent(
                tr.address, Capabilities(k, t, l, "1", f"127.0.0.1:{p}"), token=token, retry_interval=0.1
            ).start()
            for k, t, l, p in [
                ("qemu-aarch64", "aarch64-linux", "qemu-user", 7001),
                ("x86", "x86_64-linux", "local", 7002),
            ]
        ]
        for a in agents:
            assert a.registered.wait(5)
        r = kiln_rpc("devices", "--tracker", tr.address, "--stats")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == [
            "key",
            "target",
            "launcher",
            "cores",
            "state",
            "lease",
            "holder",
            "queue",
            "address",
            "runs",
        ]
        # these agents report no core count (a device server always does: see test_farm_threads.py)
        assert lines[2].split()[:5] == ["qemu-aarch64", "aarch64-linux", "qemu-user", "-", "free"]
        assert lines[3].split()[:5] == ["x86", "x86_64-linux", "local", "-", "free"]
        assert "devices dropped 0" in r.stdout
        r = kiln_rpc("devices", "--tracker", tr.address, "--token-file", "/nonexistent")
        assert r.returncode == 1 and "cannot read the RPC token file" in r.stderr
        for a in agents:
            a.stop()
    finally:
        assert tr.terminate() == 0  # SIGTERM stops it cleanly


def test_devices_wrong_token(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tr = FarmProcess("tracker", "--port", "0")
    try:
        monkeypatch.setenv("KILN_RPC_TOKEN", "wrong")
        r = kiln_rpc("devices", "--tracker", tr.address)
        assert r.returncode == 1
        assert "rejected the call (wrong RPC token)" in r.stderr
    finally:
        tr.kill()


def test_kiln_cli_has_the_farm_commands(token: str) -> None:
    """Through the top-level `kiln` CLI (kiln.cli), not just `python -m kiln.rpc.cli`."""
    tr = FarmProcess("tracker", "--port", "0")
    try:
        code = "import sys; from kiln.cli import main; sys.exit(main(sys.argv[1:]))"
        r = subprocess.run(
            [sys.executable, "-c", code, "devices", "--tracker", tr.address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[:3] == ["key", "target", "launcher"]
        assert cli is not None
    finally:
        tr.kill()
