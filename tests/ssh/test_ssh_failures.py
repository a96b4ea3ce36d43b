"""Every way reaching or using a board can fail, each with its message: login, host keys, the port, the
board's architecture, CPU and disk, the emulator of the exec prefix. Plus what ssh users expect to work: config
aliases with ProxyJump, the ssh-agent, accepting a new host key once."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sshboard import Env, Sshd, free_port, keygen, needs_namespaces

import tinypkg
from kiln.device.ssh import (
    BoardError,
    HostKeyError,
    SshError,
    SshLauncher,
    SshOptions,
    parse_destination,
    resolve,
)


def launcher(target: str, **fields: Any) -> SshLauncher:
    return SshLauncher(target, SshOptions(**fields))


def run_tiny(ssh: SshLauncher, pkg: Any) -> None:
    feeds = tinypkg.inputs()
    with pkg.open_session(ssh) as s:
        np.testing.assert_array_equal(s.run(feeds)["y"], tinypkg.reference(feeds)["y"])


# ---- reaching the board


def test_wrong_key_is_refused(sshd: Sshd, ssh_env: Env, ssh_keys: dict[str, Path]) -> None:
    env = ssh_env(sshd, identity_files=(str(ssh_keys["other"]),))
    with pytest.raises(
        SshError, match=r"refused the login \(Authentication failed.*\); tried the key .*id_other"
    ) as e:
        launcher("x86_64-linux", **env).connection()
    assert "--ssh-identity KEY" in str(e.value) and f"ssh-copy-id -p {sshd.port}" in str(e.value)


def test_missing_identity_file(sshd: Sshd, ssh_env: Env, tmp_path: Path) -> None:
    env = ssh_env(sshd, identity_files=(str(tmp_path / "nope"),))
    with pytest.raises(SshError, match=r"identity file .*nope does not exist"):
        launcher("x86_64-linux", **env).connection()


def test_unknown_host_key_is_refused_then_accepted_once(
    sshd: Sshd, ssh_env: Env, packages: dict[str, Any], tmp_path: Path
) -> None:
    known = tmp_path / "empty_known_hosts"
    env = ssh_env(sshd, known_hosts=str(known))
    with pytest.raises(
        HostKeyError, match=r"host key of \[127\.0\.0\.1\]:\d+ \(ssh-ed25519 SHA256:\S+\) is not in"
    ) as e:
        launcher("x86_64-linux", **env).connection()
    assert not e.value.changed and "--accept-new-host-key" in str(e.value) and not known.exists()
    with launcher("x86_64-linux", **env, accept_new_host_key=True) as ssh:
        run_tiny(ssh, packages["x86_64-linux"])
    assert known.read_text() == sshd.known_hosts_line()  # recorded, as OpenSSH writes it
    with launcher("x86_64-linux", **env) as ssh:  # known from now on
        ssh.connection()


def test_changed_host_key_is_refused_even_with_accept_new(
    make_sshd: Callable[..., Sshd], ssh_env: Env, tmp_path: Path
) -> None:
    board = make_sshd()
    env = ssh_env(board)  # known_hosts has the board's key
    board.stop()
    for f in (board.host_key, Path(f"{board.host_key}.pub")):
        f.unlink()
    keygen(board.host_key)  # the board was reinstalled, or someone is in the middle
    board.start(board.port)
    for accept_new in (False, True):
        with pytest.raises(
            HostKeyError, match=r"HOST KEY CHANGED for \[127\.0\.0\.1\]:\d+: .* has ssh-ed25519 SHA256:"
        ) as e:
            launcher("x86_64-linux", **env, accept_new_host_key=accept_new).connection()
        assert e.value.changed and "ssh-keygen -f" in str(e.value) and "-R '[127.0.0.1]:" in str(e.value)


def test_refused_port(ssh_env: Env, sshd: Sshd) -> None:
    port = free_port()  # nothing listens there
    env = ssh_env(sshd, destination=f"{sshd.user}@127.0.0.1:{port}")
    with pytest.raises(
        SshError, match=rf"cannot connect to \S+@127\.0\.0\.1:{port}: connection refused; is sshd running"
    ):
        launcher("x86_64-linux", **env).connection()


def test_destinations_and_config_aliases(tmp_path: Path) -> None:
    assert parse_destination("pi@board.local:2222") == ("pi", "board.local", 2222)
    assert parse_destination("board") == (None, "board", None)
    assert parse_destination("ssh://me@[::1]:22") == ("me", "::1", 22)
    for bad, what in (("pi@board:x", "invalid port"), ("pi@", "names no host"), ("[::1", "cannot read")):
        with pytest.raises(SshError, match=what):
            parse_destination(bad)
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host rpi\n  HostName 10.0.0.7\n  User pi\n  Port 2200\n  IdentityFile ~/.ssh/rpi\n"
        "  ProxyJump gw,bastion:2022\n"
        "Host gw\n  HostName gw.example\n  User ops\n"
    )
    hops = resolve(SshOptions("rpi", config_file=str(cfg)))
    assert [h.label for h in hops] == [
        "ops@gw.example:22",
        f"{getpass.getuser()}@bastion:2022",
        "pi@10.0.0.7:2200",
    ]
    assert hops[-1].identity_files == (os.path.expanduser("~/.ssh/rpi"),)
    assert resolve(SshOptions("me@rpi:2300", config_file=str(cfg)))[-1].label == "me@10.0.0.7:2300"
    assert resolve(SshOptions("rpi", port=2400, config_file=str(cfg)))[-1].port == 2400
    with pytest.raises(SshError, match="says port 2300 and --ssh-port says 2400"):
        resolve(SshOptions("rpi:2300", port=2400, config_file=str(cfg)))


def test_config_alias_through_a_proxy_jump(
    sshd: Sshd, ssh_env: Env, ssh_keys: dict[str, Path], packages: dict[str, Any], tmp_path: Path
) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host board\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {ssh_keys['user']}\n  ProxyJump gateway\n"
        f"Host gateway\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {ssh_keys['user']}\n"
    )
    env = ssh_env(sshd, destination="board", identity_files=(), config_file=str(cfg))
    with launcher("x86_64-linux", **env) as ssh:
        conn = ssh.connection()
        assert len(conn.hops) == 2 and conn.label == f"{sshd.user}@127.0.0.1:{sshd.port}"
        run_tiny(ssh, packages["x86_64-linux"])


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_config_proxy_command(
    sshd: Sshd, ssh_env: Env, ssh_keys: dict[str, Path], packages: dict[str, Any], tmp_path: Path
) -> None:
    known = ssh_env(sshd)["known_hosts"]
    hop = f"ssh -F none -i {ssh_keys['user']} -o UserKnownHostsFile={known} -o BatchMode=yes -p {sshd.port}"
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host via-command\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n")
    cfg.write_text(cfg.read_text() + f"  ProxyCommand {hop} -W %h:%p {sshd.user}@127.0.0.1\n")
    env = ssh_env(sshd, destination="via-command", config_file=str(cfg))
    with launcher("x86_64-linux", **env) as ssh:
        run_tiny(ssh, packages["x86_64-linux"])


@pytest.mark.skipif(shutil.which("ssh-agent") is None, reason="needs ssh-agent")
def test_key_from_the_ssh_agent(
    sshd: Sshd, ssh_env: Env, ssh_keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.02"])
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
        subprocess.run(["ssh-add", "-q", str(ssh_keys["user"])], check=True, capture_output=True)
        env = ssh_env(sshd, identity_files=(), use_agent=True)
        with launcher("x86_64-linux", **env) as ssh:
            assert ssh.connection().alive
        with pytest.raises(SshError, match=r"no key to log in to \S+ with .*pass one with --ssh-identity"):
            launcher("x86_64-linux", **{**env, "use_agent": False}).connection()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait()


# ---- what the board can run


def test_wrong_architecture_is_refused_before_upload(
    sshd: Sshd, ssh_env: Env, packages: dict[str, Any]
) -> None:
    env = ssh_env(sshd)
    with launcher("aarch64-linux", **env) as ssh:
        with pytest.raises(BoardError) as e:
            packages["aarch64-linux"].open_session(ssh)
    msg = str(e.value)
    assert re.search(
        r"\S+@127\.0\.0\.1:\d+ cannot run aarch64-linux packages: it is x86_64 \(uname -m\)", msg
    )
    assert "--ssh-exec-prefix 'qemu-aarch64 -cpu cortex-a72'" in msg and "kiln probe --ssh" in msg
    assert not any(Path(env["remote_dir"]).iterdir())  # nothing was uploaded


def test_exec_prefix_missing_on_the_board(sshd: Sshd, ssh_env: Env, packages: dict[str, Any]) -> None:
    env = ssh_env(sshd, exec_prefix=("qemu-nonexistent-arch", "-cpu", "max"))
    with (
        launcher("aarch64-linux", **env) as ssh,
        pytest.raises(
            BoardError,
            match=r"the exec prefix's 'qemu-nonexistent-arch' is not installed on it; install it there",
        ),
    ):
        ssh.deploy(packages["aarch64-linux"].files["bin/runner"])


def _cpuinfo_without(flags: set[str], dest: Path) -> Path:
    first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    lines = [
        " ".join(w for w in line.split() if w not in flags) if line.startswith("flags") else line
        for line in first.splitlines()
    ]
    dest.write_text("\n".join(lines) + "\n\n")
    return dest


@needs_namespaces
def test_missing_cpu_feature_is_refused_instead_of_sigill(
    make_sshd: Callable[..., Sshd], ssh_env: Env, packages: dict[str, Any], tmp_path: Path
) -> None:
    fake = _cpuinfo_without({"avx2", "fma"}, tmp_path / "cpuinfo")  # a pre-Haswell board
    board = make_sshd(prelude=f"mount --bind {fake} /proc/cpuinfo")
    with launcher("x86_64-linux", **ssh_env(board)) as ssh:
        lacks = (
            r"cannot run x86_64-linux packages: its CPU lacks avx2, fma \(per /proc/cpuinfo\), which "
            r"x86_64-linux \(x86-64-v3\) needs; compile for a target it runs"
        )
        with pytest.raises(BoardError, match=lacks):
            packages["x86_64-linux"].open_session(ssh)
        assert ssh.probe().cpu_features >= {"sse2"} and "avx2" not in ssh.probe().cpu_features


@needs_namespaces
def test_disk_full_on_the_board(
    make_sshd: Callable[..., Sshd], ssh_env: Env, packages: dict[str, Any], tmp_path: Path
) -> None:
    remote = tmp_path / "board"
    remote.mkdir()
    board = make_sshd(prelude=f"mount -t tmpfs -o size=96k kiln-test {remote}")  # < runner + margin
    env = ssh_env(board)
    pkg = packages["x86_64-linux"]
    with launcher("x86_64-linux", **env) as ssh:
        full = (
            r"no space left on \S+: .*/board has \d+\.\d KiB free and the runner needs \d+\.\d KiB .*"
            r"free space on the board, or point --remote-dir"
        )
        with pytest.raises(BoardError, match=full):
            pkg.open_session(ssh)
        # the same when the disk fills during the upload itself (skip the check before it)
        ssh._make_room = lambda *a, **k: None  # type: ignore[method-assign]
        big = tinypkg.build("x86_64-linux", weights=bytes(200_000) + b"\x01" * 40, name="big").files[
            "bin/runner"
        ]
        with pytest.raises(BoardError, match=r"no space left on .* the runner needs 2\d\d\.\d KiB"):
            ssh.deploy(big)
        status, out, _ = ssh.connection().run('ls -A "$1"', str(remote))
        assert status == 0 and out == ""  # the partial upload was removed


def test_remote_dir_that_cannot_be_created(sshd: Sshd, ssh_env: Env) -> None:
    env = ssh_env(sshd, remote_dir="/proc/kiln-cannot-be-here")
    with (
        launcher("x86_64-linux", **env) as ssh,
        pytest.raises(BoardError, match="cannot create or enter /proc/kiln-cannot-be-here"),
    ):
        ssh.check()
