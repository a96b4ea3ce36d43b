"""Running compiled packages in tests, with timeouts that a slow machine cannot trip.

A target the host cannot run natively runs under qemu-user, whose speed depends on everything else the machine
is doing (a model that takes 20 s alone took over 175 s with another test suite beside it). Sessions for
emulated targets therefore have no per-call wall-clock limit (``open_session(timeout=None)``); a real hang is
caught by the suite's global per-test timeout instead (pytest-timeout, ``[tool.pytest.ini_options]`` in
pyproject.toml). Native runs keep the package's default timeout, which is part of what they test.

Tests about timeouts themselves (a runner that hangs) set their own short timeouts and do not use this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kiln.device import Session
from kiln.package import Package


def open_session(pkg: Package) -> Session:
    """A session on ``pkg``'s default launcher: natively with the default timeout, emulated without one."""
    return pkg.open_session() if pkg.target.runs_natively() else pkg.open_session(timeout=None)


def run(pkg: Package, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``pkg.run(inputs)``, with :func:`open_session`'s timeouts."""
    with open_session(pkg) as s:
        return s.run(inputs)
