"""An emulated board in the device farm: a device server with the qemu-system launcher registers with the
tracker and serves run, bench and profile to a client elsewhere; a board that faults does not stop it."""

from __future__ import annotations

import numpy as np
import pytest
from boards import needs_emulator

import kiln.rpc
from kiln.device.launchers import make_launcher
from kiln.package import Package
from kiln.rpc.auth import server_security
from kiln.rpc.servers import DeviceServer, TrackerServer
from kiln.rpc.tracker import Tracker
from tinymodel import TINY_INFO, link_tiny, tiny_expected, tiny_inputs

pytestmark = [pytest.mark.qemu, needs_emulator("mps2-an386")]
TOKEN = "kiln-test-token"


def test_a_board_serves_the_farm(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("KILN_RPC_TOKEN", TOKEN)
    monkeypatch.delenv("KILN_RPC_TOKEN_FILE", raising=False)
    tracker = TrackerServer(
        Tracker(heartbeat_interval=0.2, liveness=3.0, lease_ttl=2.0), server_security(TOKEN), port=0
    ).start()
    device = DeviceServer(
        key="m4",
        target="mps2-an386",
        launcher=make_launcher("qemu-system", "mps2-an386"),
        security=server_security(TOKEN),
        tracker=tracker.address,
        tracker_token=TOKEN,
        call_timeout=60.0,
        retry_interval=0.1,
        cache_dir=tmp_path_factory.mktemp("cache"),
    ).start()
    try:
        pkg = Package.create("mps2-an386", TINY_INFO, link_tiny("mps2-an386"))
        with kiln.rpc.connect(tracker.address, client="c0").request("m4", timeout=60) as dev:
            m = dev.load(pkg)
            inputs = tiny_inputs(3)
            np.testing.assert_allclose(m.run(inputs)["y"], tiny_expected(inputs), rtol=1e-6)
            times = m.time(number=2, repeat=2)
            assert len(times) == 2 and times[0] == times[1] > 0  # the board's virtual time: repeatable
            assert [c.name for c in m.profile(inputs).calls] == ["scale", "scale", "add_weights"]
    finally:
        device.stop(grace=None)
        tracker.stop(grace=None)
