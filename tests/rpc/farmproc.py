"""Start farm commands (`python -m kiln.rpc.cli ...`) as real processes and read the address they print."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on (\S+)")


class FarmProcess:
    """A `kiln tracker` or `kiln serve` process; ``address`` is where it listens."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 20.0, new_session: bool = False
    ) -> None:
        self.log = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"kiln-farm-{os.getpid()}-{time.monotonic_ns()}.log"
        )
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiln.rpc.cli", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=new_session,  # kill_group() then ends the server and its runners together
        )
        self._group = new_session
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        line = ""
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = _LISTENING.search(line)
            if m:
                self.address = m.group(1)
                self.port = int(self.address.rpartition(":")[2])
                return
        self.kill()
        raise RuntimeError(f"{' '.join(args)} did not start: {line!r}\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (its runners), like a board losing power."""
        if self._group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.kill()

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        rc = self.proc.wait(10)
        self._log.close()
        return rc
