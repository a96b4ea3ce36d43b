"""The one interface every runnable model offers, wherever it runs.

An :class:`Executable` is a compiled model loaded on one device: a runner process on this host (native or
under qemu-user, :class:`kiln.device.protocol.Session`), or a package loaded on a device server of the farm
(:class:`kiln.rpc.client.RemoteModule`). The CLI, the Python API, benchmarks and tests use this interface
only, so a new way to reach a device (a board over SSH, a UART) is one more implementation, not another copy
of run/time/profile.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from kiln.device.profile import Profile


class Executable(ABC):
    """A model loaded on a device. ``label`` names the device in messages. Use it as a context manager, or
    call :meth:`close`; after ``close`` every other call fails."""

    label: str

    @abstractmethod
    def run(self, inputs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Runs the model once on ``inputs`` (every input, by name; None: the inputs the device already
        holds) and returns every output, by name."""

    @abstractmethod
    def time(
        self,
        number: int = 10,
        repeat: int = 3,
        min_repeat_ms: int = 0,
        *,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[float]:
        """Seconds per run, one figure per repeat, measured by the runtime's clock on the device: after one
        warm-up run, each repeat runs ``number`` times back to back (growing ``number`` until a repeat lasts
        at least ``min_repeat_ms``)."""

    @abstractmethod
    def profile(self, inputs: Mapping[str, Any] | None = None) -> Profile:
        """Runs once with the profiler on and returns every kernel call, in order."""

    @abstractmethod
    def close(self) -> None:
        """Releases the device side. Idempotent."""

    def __enter__(self) -> Executable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
