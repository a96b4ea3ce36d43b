"""Load: 100 registered device servers, 20 concurrent clients leasing and releasing in a loop."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "rpc_load.py"


def test_load_100_devices_20_clients() -> None:
    spec = importlib.util.spec_from_file_location("rpc_load", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rpc_load"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    res = mod.run(devices=100, clients=20, leases=15)
    print(res.report())
    assert res.double_leases == []
    assert res.errors == []
    assert res.leases == 20 * 15
    assert res.ok
