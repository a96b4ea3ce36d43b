"""The ssh launcher against a real sshd: runs, uploads and the cache, runners that crash or hang, clients and
connections that die; no runner is left on the board."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sshboard import Env, Sshd, python_client, runners_in

import tinypkg
from kiln.device import DeviceLost, DeviceTimeout, make_launcher
from kiln.device.ssh import SshLauncher, SshOptions
from kiln.targets import get_target


def launcher(target: str, **fields: Any) -> SshLauncher:
    return SshLauncher(target, SshOptions(**fields))


@pytest.mark.parametrize(
    "target",
    [
        "x86_64-linux",
        pytest.param("aarch64-linux", marks=pytest.mark.qemu),
        pytest.param("riscv64-linux", marks=pytest.mark.qemu),
    ],
)
def test_outputs_match_the_reference_natively_and_under_the_boards_emulator(
    target: str, sshd: Sshd, ssh_env: Env, packages: dict[str, Any]
) -> None:
    t = get_target(target)
    prefix = () if t.arch == "x86_64" else t.emulator  # the board is x86-64: qemu-user runs the others
    feeds = tinypkg.inputs(np.arange(8, dtype=np.float32).reshape(2, 4))
    with launcher(target, **ssh_env(sshd, exec_prefix=prefix)) as ssh:
        with packages[target].open_session(ssh) as s:
            assert "(ssh" in s.label and sshd.destination.split("@")[1] in s.label
            out = s.run(feeds)
            ref = tinypkg.reference(feeds)
            np.testing.assert_array_equal(out["y"], ref["y"])
            np.testing.assert_array_equal(out["probe"], ref["probe"])
            times = s.time(number=3, repeat=2)
            assert len(times) == 2 and all(x > 0 for x in times)
            prof = s.profile()
            assert [c.name for c in prof.calls] == ["scale", "scale", "add_weights"]


def test_make_launcher_registers_ssh(sshd: Sshd, ssh_env: Env, packages: dict[str, Any]) -> None:
    ssh = make_launcher("ssh", "x86_64-linux", **ssh_env(sshd))
    assert ssh.name == "ssh"
    with ssh, packages["x86_64-linux"].open_session(ssh) as s:
        assert s.run(tinypkg.inputs())["probe"][0] == tinypkg.tinymodel.TINY_PROBE_BYTE
    with pytest.raises(ValueError, match="needs a board"):
        make_launcher("ssh", "x86_64-linux")


def test_upload_is_content_addressed_cached_and_verified(
    sshd: Sshd, ssh_env: Env, packages: dict[str, Any], tmp_path: Path
) -> None:
    runner = packages["x86_64-linux"].files["bin/runner"]
    sha = hashlib.sha256(runner).hexdigest()
    env = ssh_env(sshd)
    with launcher("x86_64-linux", **env) as ssh:
        first = ssh.deploy(runner)
        assert first.uploaded and first.path == f"{env['remote_dir']}/{sha}" and first.sha256 == sha
        assert hashlib.sha256(Path(first.path).read_bytes()).hexdigest() == sha
        assert os.access(first.path, os.X_OK)
        assert not ssh.deploy(runner).uploaded
    with launcher("x86_64-linux", **env) as ssh:  # a new launcher checks the cached copy with sha256sum
        assert not ssh.deploy(runner).uploaded
    Path(first.path).write_bytes(runner[:1000])  # damaged on the board: uploaded again
    with launcher("x86_64-linux", **env) as ssh:
        again = ssh.deploy(runner)
        assert again.uploaded and Path(again.path).read_bytes() == runner
        with packages["x86_64-linux"].open_session(ssh) as s:
            s.run(tinypkg.inputs())
    assert sorted(p.name for p in Path(env["remote_dir"]).iterdir()) == [sha]  # no temporary files left


def test_a_runner_deleted_behind_the_launchers_back_is_uploaded_again(
    sshd: Sshd, ssh_env: Env, packages: dict[str, Any]
) -> None:
    env = ssh_env(sshd)
    with launcher("x86_64-linux", **env) as ssh:
        path = ssh.deploy(packages["x86_64-linux"].files["bin/runner"]).path
        Path(path).unlink()  # another launcher sharing the remote dir evicted it
        with packages["x86_64-linux"].open_session(ssh) as s:
            s.run(tinypkg.inputs())
        assert Path(path).exists()


def test_concurrent_uploads_of_the_same_runner_do_not_corrupt_it(
    sshd: Sshd, ssh_env: Env, packages: dict[str, Any]
) -> None:
    runner = tinypkg.build("x86_64-linux", name="concurrent").files["bin/runner"]
    env = ssh_env(sshd)
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def upload() -> None:
        with launcher("x86_64-linux", **env) as ssh:
            ssh.connection()
            barrier.wait()
            results.append(ssh.deploy(runner))

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and len({r.path for r in results}) == 1
    assert any(r.uploaded for r in results)
    assert Path(results[0].path).read_bytes() == runner
    assert [p.name for p in Path(env["remote_dir"]).iterdir()] == [results[0].sha256]


def test_old_runners_are_evicted_by_size(sshd: Sshd, ssh_env: Env) -> None:
    runners = [tinypkg.build("x86_64-linux", name=f"evict{i}").files["bin/runner"] for i in range(3)]
    env = ssh_env(sshd, cache_bytes=2 * max(map(len, runners)) + 1000)  # room for two
    with launcher("x86_64-linux", **env) as ssh:
        paths = []
        for i, r in enumerate(runners):
            paths.append(ssh.deploy(r).path)
            old = time.time() - 3600 * (10 - i)  # the first is the least recently used
            os.utime(paths[-1], (old, old))
    assert [Path(p).exists() for p in paths] == [False, True, True]


def test_crashing_runner_reports_signal_and_stderr(
    sshd: Sshd, ssh_env: Env, packages: dict[str, Any]
) -> None:
    env = ssh_env(sshd)
    with launcher("x86_64-linux", **env) as ssh, packages["x86_64-linux"].open_session(ssh) as s:
        with pytest.raises(DeviceLost, match=r"during RUN: was killed by signal SIGSEGV.*stderr"):
            s.run(tinypkg.inputs(mode="segfault"))
        assert not s.alive


def test_hung_runner_times_out_and_is_killed_on_the_board(
    sshd: Sshd, ssh_env: Env, packages: dict[str, Any], no_runner_left: Callable[[str], None]
) -> None:
    env = ssh_env(sshd)
    with launcher("x86_64-linux", **env) as ssh:
        with packages["x86_64-linux"].open_session(ssh, timeout=1.0) as s:
            s.info()
            assert runners_in(env["remote_dir"])  # the runner is there...
            t0 = time.monotonic()
            with pytest.raises(DeviceTimeout, match=r"\(ssh\) did not answer RUN within 1 s and was stopped"):
                s.run(tinypkg.inputs(mode="hang"))
            assert time.monotonic() - t0 < 5
        no_runner_left(env["remote_dir"])  # ...and gone, although it never read its input again
        with packages["x86_64-linux"].open_session(ssh) as s:  # the launcher keeps working
            s.run(tinypkg.inputs())


_CLIENT = """
import sys, tinypkg
from kiln.device.ssh import SshLauncher, SshOptions
ssh = SshLauncher("x86_64-linux", SshOptions(**{env!r}))
s = tinypkg.build("x86_64-linux").open_session(ssh)
s.info()
print("ready", flush=True)
s.run(tinypkg.inputs(mode="hang"))
"""


def test_a_killed_client_leaves_no_runner_on_the_board(
    sshd: Sshd, ssh_env: Env, no_runner_left: Callable[[str], None]
) -> None:
    env = ssh_env(sshd)
    client = python_client(
        f"import sys; sys.path[:0] = {[str(Path(tinypkg.__file__).parent)]!r}\n" + _CLIENT.format(env=env)
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready", client.stderr.read() if client.stderr else ""
        time.sleep(0.3)  # the runner now spins in RUN and reads nothing
        assert runners_in(env["remote_dir"])
        client.kill()
        client.wait()
    finally:
        client.kill()
        client.wait()
    no_runner_left(env["remote_dir"])


def test_connection_dropped_mid_run_then_reconnects(
    make_sshd: Callable[..., Sshd],
    ssh_env: Env,
    packages: dict[str, Any],
    no_runner_left: Callable[[str], None],
) -> None:
    board = make_sshd()
    env = ssh_env(board)
    with launcher("x86_64-linux", **env) as ssh:
        s = packages["x86_64-linux"].open_session(ssh, timeout=60.0)
        s.info()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                s.run(tinypkg.inputs(mode="hang"))
            except BaseException as e:
                failure.append(e)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        board.kill_all()  # sshd dies (a board rebooting its sshd, a network cut)
        t.join(20)
        assert time.monotonic() - t0 < 10  # noticed at once, not at the 60 s timeout
        assert len(failure) == 1 and isinstance(failure[0], DeviceLost)
        assert "stopped during RUN: is unreachable: lost the SSH connection to" in str(failure[0])
        s.close()
        no_runner_left(env["remote_dir"])
        board.start(board.port)  # sshd is back: the same launcher connects again
        with packages["x86_64-linux"].open_session(ssh) as s2:
            feeds = tinypkg.inputs()
            np.testing.assert_array_equal(s2.run(feeds)["y"], tinypkg.reference(feeds)["y"])


def test_closing_the_launcher_ends_its_sessions(
    sshd: Sshd, ssh_env: Env, packages: dict[str, Any], no_runner_left: Callable[[str], None]
) -> None:
    env = ssh_env(sshd)
    ssh = launcher("x86_64-linux", **env)
    s = packages["x86_64-linux"].open_session(ssh)
    s.info()
    ssh.close()
    with pytest.raises(DeviceLost):
        s.run(tinypkg.inputs())
    s.close()
    no_runner_left(env["remote_dir"])
