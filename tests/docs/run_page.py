"""Runs the blocks of one docs page in order, in the current directory: ``python run_page.py blocks.json``.

Python blocks run in one namespace (compiled with the page's file name and line numbers, so a traceback points
into the page); shell blocks run with ``bash -e -o pipefail``, each starting with the environment the previous
block left (exported variables carry over, as in a terminal); file blocks are written. Service blocks start
each of their commands in the background (as a reader starts servers in terminals of their own), wait until
each printed its "ready" line, export the pattern's named groups, must still run when the last block is done
(a server that died on its own fails the page), and are stopped (SIGTERM, then SIGKILL) when the page ends,
whether it passed or not. Exits 1 at the first block that fails, naming it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import traceback
from pathlib import Path


def commands(code: str) -> list[str]:
    """The commands of a shell block: one a line, ``\\`` at the end of a line continues it; comments and
    blank lines are not commands."""
    out: list[str] = []
    current = ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            out.append(current.strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


class Service:
    """One server command of a service block, its output in ``log``. It stays in the page's process group, so
    that the test ends it with the page even when the page is killed."""

    def __init__(self, command: str, ready: str, log: Path) -> None:
        self.command = command
        self.log = log
        self.ready = re.compile(ready)
        self.match: re.Match[str] | None = None
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", f"exec {command}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            # a terminal shows a Python server's lines as it prints them; a pipe would hold them back
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as log:
            for line in self.proc.stdout:  # read to the end, so that a chatty server never blocks on its pipe
                log.write(line)
                log.flush()
                if self.match is None and (m := self.ready.search(line)):
                    with self.changed:
                        self.match = m
                        self.changed.notify_all()
        self.proc.wait()
        with self.changed:
            self.changed.notify_all()

    def wait_ready(self) -> re.Match[str] | None:
        """The ready line's match, or None when the server ended without printing one. No wall-clock limit:
        the page's own time limit is the backstop (a server under an emulator starts as fast as it can)."""
        with self.changed:
            while self.match is None and self.proc.poll() is None:
                self.changed.wait(0.5)
            return self.match

    def stop(self) -> None:
        """Ctrl-C's equivalent for a server in the background: SIGTERM, then SIGKILL after 10 s."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_sh(code: str) -> int:
    # A reader's terminal keeps what a block exports (KILN_TARGET_PATH, a token): so do the blocks here,
    # Python blocks included.
    env_file = Path(".docs-env").resolve()
    script = f"trap 'env -0 > {env_file}' EXIT\n" + code
    rc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script]).returncode
    if env_file.exists():
        new = dict(kv.split("=", 1) for kv in env_file.read_text().split("\0") if "=" in kv)
        for k in set(os.environ) - set(new):
            del os.environ[k]
        os.environ.update(new)
    return rc


def start_services(b: dict, where: str, services: list[Service]) -> bool:
    for cmd in commands(b["code"]):
        svc = Service(cmd, b["reason"], Path(f".service-{len(services)}.log").resolve())
        services.append(svc)
        m = svc.wait_ready()
        if m is None:
            tail = svc.log.read_text()[-4000:] if svc.log.exists() else ""
            print(
                f"{tail}\nFAILED: the service at {where} ended (status {svc.proc.returncode}) before it "
                f"printed a line matching {b['reason']!r}: {cmd}",
                flush=True,
            )
            return False
        print(f"started: {cmd}\n  ready: {m.group(0)}", flush=True)
        os.environ.update({k: v for k, v in m.groupdict().items() if v is not None})
    return True


def main() -> int:
    blocks = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, ".")  # modules a page writes (file blocks) import like a reader's
    ns: dict = {"__name__": "__main__"}
    services: list[Service] = []
    try:
        for b in blocks:
            where = f"docs/{b['page']}:{b['line']}"
            print(f"--- {where} ({b['kind']})", flush=True)
            if b["kind"] == "file":
                out = Path(b["reason"])
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(b["code"])
            elif b["kind"] == "python":
                src = "\n" * (b["line"] - 1) + b["code"]
                try:
                    exec(compile(src, where.split(":")[0], "exec"), ns)
                except BaseException:
                    traceback.print_exc()
                    print(f"FAILED: the Python block at {where}", flush=True)
                    return 1
                sys.stdout.flush()
            elif b["kind"] == "sh":
                rc = run_sh(b["code"])
                if rc != 0:
                    print(f"FAILED: the shell block at {where} exited with status {rc}", flush=True)
                    return 1
            elif b["kind"] == "service" and not start_services(b, where, services):
                return 1
        for svc in services:
            if svc.proc.poll() is not None:
                tail = svc.log.read_text()[-4000:] if svc.log.exists() else ""
                print(
                    f"{tail}\nFAILED: the service `{svc.command}` ended on its own (status "
                    f"{svc.proc.returncode}) before the page did",
                    flush=True,
                )
                return 1
        return 0
    finally:
        for svc in reversed(services):
            svc.stop()


if __name__ == "__main__":
    sys.exit(main())
