"""kiln tune through the farm: a tracker and a device server on 127.0.0.1, ``kiln tune --device TRACKER/KEY``
measures every variant on the leased device and writes a schedule file that a later compile uses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from test_tune import tiny_cnn  # tests/ is on sys.path (tests/conftest.py)

import kiln
from kiln.ops.schedule import ScheduleFile
from kiln.rpc.servers import TrackerServer


@pytest.mark.slow
def test_tune_through_a_tracker_and_device_server(
    make_tracker: Callable[..., TrackerServer],
    make_device: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kiln.cli import main

    tracker = make_tracker()
    device = make_device("x86_64-linux", "local", key="x86-tune", tracker=tracker.address)
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    out = tmp_path / "tiny.schedule.json"
    argv = ["tune", str(model), "-t", "x86_64-linux", "--device", f"{tracker.address}/x86-tune"]
    assert main([*argv, "--trials", "2", "--rounds", "3", "--queue-timeout", "60", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    sf = ScheduleFile.load(out)
    assert sf.target == "x86_64-linux" and sf.tuning["trials"] == 2
    pkg = kiln.compile(str(model), "x86_64-linux", schedule=out)
    assert pkg.manifest["schedule"]["applied"] == len(sf.instances)
    assert device.address  # the server stayed up for the whole search
