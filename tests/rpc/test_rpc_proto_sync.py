"""The committed generated gRPC code matches the protos (python scripts/gen_proto.py regenerates it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date() -> None:
    pytest.importorskip("grpc_tools")
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
