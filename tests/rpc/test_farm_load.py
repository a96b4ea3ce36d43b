"""Load: tracker, device servers and clients as separate processes, a contended key; no double use, no error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "rpc_load.py"

pytestmark = pytest.mark.qemu


def test_load_processes_no_double_use() -> None:
    spec = importlib.util.spec_from_file_location("rpc_load", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rpc_load"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    res = mod.run(devices=3, clients=5, cycles=4, timeout=120)
    print(res.report())
    assert res.double_uses == []
    assert res.errors == []
    assert res.cycles == 5 * 4
