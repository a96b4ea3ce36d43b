"""A board over SSH as a member of the device farm: ``kiln serve --launcher ssh`` registered with a tracker,
used by other clients; it keeps serving after runners hang or crash, the connection drops, the disk fills."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sshboard import Env, FarmCommand, Sshd, needs_namespaces, runners_in, ssh_args, wait_until

import kiln.rpc
import tinypkg
from kiln.device.ssh import SshConnection, SshOptions

TOKEN = "kiln-ssh-test-token"


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FarmCommand]]:
    """``farm("tracker", ...)`` / ``farm("serve", ...)``: farm commands as processes, stopped afterwards."""
    monkeypatch.setenv("KILN_RPC_TOKEN", TOKEN)
    monkeypatch.delenv("KILN_RPC_TOKEN_FILE", raising=False)
    procs: list[FarmCommand] = []

    def start(*args: str) -> FarmCommand:
        p = FarmCommand(*args, env={"KILN_RPC_TOKEN": TOKEN}, log=tmp_path / f"farm-{len(procs)}.log")
        procs.append(p)
        return p

    yield start
    for p in reversed(procs):
        p.stop()


def serve(
    farm: Callable[..., FarmCommand], tracker: str | None, key: str, target: str, env: dict[str, Any]
) -> Any:
    where = ["--tracker", tracker] if tracker else []
    return farm(
        "serve", *where, "--key", key, "--target", target, "--launcher", "ssh", "--port", "0", *ssh_args(env)
    )


@pytest.mark.qemu
def test_boards_serve_the_farm_run_bench_profile_from_other_clients(
    sshd: Sshd, ssh_env: Env, farm: Callable[..., FarmCommand], packages: dict[str, Any], tmp_path: Path
) -> None:
    tracker = farm("tracker", "--port", "0", "--heartbeat-interval", "0.2", "--liveness", "3")
    serve(farm, tracker.address, "board-x86", "x86_64-linux", ssh_env(sshd, remote_dir=str(tmp_path / "b1")))
    arm = ssh_env(sshd, remote_dir=str(tmp_path / "b2"), exec_prefix=("qemu-aarch64", "-cpu", "cortex-a72"))
    serve(farm, tracker.address, "board-arm", "aarch64-linux", arm)
    client = kiln.rpc.connect(tracker.address)
    wait_until(lambda: len(client.devices()) == 2, what="both boards to register")
    assert {d.launcher for d in client.devices()} == {"ssh"}
    feeds = tinypkg.inputs()
    for key, target in (("board-x86", "x86_64-linux"), ("board-arm", "aarch64-linux")):
        with client.request(key, timeout=30) as dev:
            m = dev.load(packages[target])
            np.testing.assert_array_equal(m.run(feeds)["y"], tinypkg.reference(feeds)["y"])
            assert len(m.time(number=3, repeat=2)) == 2
            assert [c.name for c in m.profile().calls] == ["scale", "scale", "add_weights"]
    client.close()
    # another client: the CLI through the tracker
    pkg = packages["aarch64-linux"].save(tmp_path / "tiny.kpkg")
    np.save(tmp_path / "x.npy", feeds["x"])
    np.save(tmp_path / "mode.npy", feeds["mode"])  # not --random-inputs: a random mode may be "hang"
    remote = ["--tracker", tracker.address, "--key", "board-arm", "-i", f"x={tmp_path / 'x.npy'}"]
    remote += ["-i", f"mode={tmp_path / 'mode.npy'}"]
    cli = [sys.executable, "-m", "kiln.cli"]
    r = subprocess.run([*cli, "bench", str(pkg), *remote, "--number", "5"], capture_output=True, text=True)
    assert r.returncode == 0 and "tiny on aarch64-linux: median" in r.stdout, r.stderr
    r = subprocess.run([*cli, "profile", str(pkg), *remote], capture_output=True, text=True)
    assert r.returncode == 0 and "add_weights" in r.stdout, r.stderr


def test_serve_refuses_a_board_that_cannot_run_the_target(sshd: Sshd, ssh_env: Env, tmp_path: Path) -> None:
    env = ssh_env(sshd)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln.rpc.cli",
            "serve",
            "--key",
            "k",
            "--target",
            "aarch64-linux",
            "--insecure",
        ]
        + ["--launcher", "ssh", *ssh_args(env)],
        capture_output=True,
        text=True,
        timeout=60,
        # --insecure with a token is refused on its own: no token may leak in from another test's environment
        env={k: v for k, v in os.environ.items() if not k.startswith("KILN_RPC_TOKEN")},
    )
    assert (
        r.returncode == 2 and "kiln serve: " in r.stderr and "cannot run aarch64-linux packages" in r.stderr
    )


def test_the_board_keeps_serving_after_hangs_crashes_and_a_dropped_connection(
    make_sshd: Callable[..., Sshd], ssh_env: Env, farm: Callable[..., FarmCommand], packages: dict[str, Any]
) -> None:
    board = make_sshd()
    env = ssh_env(board)
    dev_proc = serve(farm, None, "board", "x86_64-linux", env)
    dev = kiln.rpc.connect_device(dev_proc.address)
    m = dev.load(packages["x86_64-linux"], timeout=1.0)
    feeds = tinypkg.inputs()
    ref = tinypkg.reference(feeds)["y"]
    np.testing.assert_array_equal(m.run(feeds)["y"], ref)

    with pytest.raises(
        kiln.rpc.RemoteError, match=r"run of 'tiny' did not finish within 1 s.*the runner was killed"
    ) as e:
        m.run(tinypkg.inputs(mode="hang"))
    assert e.value.code is not None and e.value.code.name == "DEADLINE_EXCEEDED"
    wait_until(lambda: not runners_in(env["remote_dir"]), what="the hung runner to be killed on the board")
    np.testing.assert_array_equal(m.run(feeds)["y"], ref)

    with pytest.raises(kiln.rpc.RemoteError, match=r"died during run: .*killed by signal SIGSEGV"):
        m.run(tinypkg.inputs(mode="segfault"))
    np.testing.assert_array_equal(m.run(feeds)["y"], ref)

    board.kill_all()  # the board's sshd dies with a runner loaded: the runner goes with the connection
    wait_until(lambda: not runners_in(env["remote_dir"]), what="the orphaned runner to be killed")
    with pytest.raises(kiln.rpc.RemoteError, match="lost the SSH connection"):
        m.run(feeds)
    board.start(board.port)
    np.testing.assert_array_equal(m.run(feeds)["y"], ref)  # a new connection, a new runner
    dev.close()


@needs_namespaces
def test_disk_full_on_a_served_board_then_freed(
    make_sshd: Callable[..., Sshd],
    ssh_env: Env,
    farm: Callable[..., FarmCommand],
    packages: dict[str, Any],
    tmp_path: Path,
) -> None:
    remote = tmp_path / "board"
    remote.mkdir()
    board = make_sshd(prelude=f"mount -t tmpfs -o size=1m kiln-test {remote}")
    env = ssh_env(board)
    dev_proc = serve(farm, None, "board", "x86_64-linux", env)
    with SshConnection(SshOptions(**env)) as conn:  # fill the board's disk, as a log file would
        status, _, err = conn.run(
            'dd if=/dev/zero of="$1/junk" bs=1024 count=960 2>/dev/null; sync', str(remote)
        )
        assert status == 0, err
        dev = kiln.rpc.connect_device(dev_proc.address)
        with pytest.raises(
            kiln.rpc.RemoteError, match=r"no space left on \S+: .* KiB free and the runner needs"
        ):
            dev.load(packages["x86_64-linux"])
        conn.run('rm -f "$1/junk"', str(remote))
    feeds = tinypkg.inputs()
    out = dev.load(packages["x86_64-linux"]).run(feeds)
    np.testing.assert_array_equal(out["y"], tinypkg.reference(feeds)["y"])
    dev.close()
