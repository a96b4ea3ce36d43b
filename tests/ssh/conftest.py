"""Fixtures of the SSH tests: a real OpenSSH server on 127.0.0.1 plays the board (see sshboard.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sshboard import SSHD, Env, Sshd, keygen, runners_in, wait_until


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not Path(SSHD).exists():
        skip = pytest.mark.skip(reason="needs openssh-server (scripts/setup)")
        for item in items:
            if {"sshd", "make_sshd"} & set(getattr(item, "fixturenames", ())):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ssh-keys")
    return {"user": keygen(d / "id_user"), "other": keygen(d / "id_other")}


@pytest.fixture(scope="session")
def sshd(ssh_keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """The shared board (this machine, unchanged)."""
    server = Sshd(tmp_path_factory.mktemp("sshd"), ssh_keys["user"]).start()
    yield server
    server.stop()


@pytest.fixture
def make_sshd(
    ssh_keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Sshd]]:
    """A board of the test's own: make_sshd(prelude="mount ...") runs it in a private mount namespace."""
    servers: list[Sshd] = []

    def make(prelude: str | None = None) -> Sshd:
        server = Sshd(tmp_path_factory.mktemp("sshd"), ssh_keys["user"], prelude=prelude).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def ssh_env(tmp_path: Path, ssh_keys: dict[str, Path]) -> Env:
    """``ssh_env(board, **overrides)``: the SshOptions fields for ``board`` in this test: its key, a
    known_hosts file that knows it, an empty ssh config, no agent, a remote dir of the test's own."""
    (tmp_path / "ssh_config").write_text("")

    def env(board: Sshd, **kw: Any) -> dict[str, Any]:
        known = tmp_path / "known_hosts"
        if not known.exists() or board.known_hosts_line() not in known.read_text():
            with known.open("a") as f:
                f.write(board.known_hosts_line())
        out: dict[str, Any] = {
            "destination": board.destination,
            "identity_files": (str(ssh_keys["user"]),),
            "use_agent": False,
            "config_file": str(tmp_path / "ssh_config"),
            "known_hosts": str(known),
            "remote_dir": str(tmp_path / "board"),
            "connect_timeout": 10.0,
        }
        out.update(kw)
        return out

    return env


@pytest.fixture(scope="session")
def packages() -> dict[str, Any]:
    """The tiny test model for the three board architectures (target -> Package)."""
    import tinypkg

    return {t: tinypkg.build(t) for t in ("x86_64-linux", "aarch64-linux", "riscv64-linux")}


@pytest.fixture
def no_runner_left() -> Callable[[str], None]:
    """``no_runner_left(remote_dir)``: waits until no process on the board mentions the remote dir."""

    def check(remote_dir: str, timeout: float = 10.0) -> None:
        wait_until(lambda: not runners_in(remote_dir), timeout, f"the runners in {remote_dir} to end")

    return check
