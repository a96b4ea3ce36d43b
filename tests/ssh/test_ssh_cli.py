"""``kiln deploy|run|bench|profile|probe --ssh`` as a user runs them, against a real sshd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sshboard import Env, Sshd, ssh_args

import tinypkg


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def files(tmp_path: Path, packages: dict[str, Any]) -> dict[str, Path]:
    feeds = tinypkg.inputs()
    np.save(tmp_path / "x.npy", feeds["x"])
    np.save(tmp_path / "mode.npy", feeds["mode"])
    return {
        "x86": packages["x86_64-linux"].save(tmp_path / "tiny-x86.kpkg"),
        "arm": packages["aarch64-linux"].save(tmp_path / "tiny-arm.kpkg"),
        "x": tmp_path / "x.npy",
        "mode": tmp_path / "mode.npy",
    }


def test_deploy_prints_the_remote_path_and_uploads_once(
    sshd: Sshd, ssh_env: Env, files: dict[str, Path], packages: dict[str, Any]
) -> None:
    env = ssh_env(sshd)
    r = kiln("deploy", str(files["x86"]), *ssh_args(env))
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    assert Path(path).read_bytes() == packages["x86_64-linux"].files["bin/runner"]
    assert path.startswith(env["remote_dir"] + "/") and "uploaded" in r.stderr
    r = kiln("deploy", str(files["x86"]), *ssh_args(env))
    assert r.returncode == 0 and r.stdout.strip() == path and "already there" in r.stderr


@pytest.mark.qemu
def test_run_bench_profile_on_the_board(
    sshd: Sshd, ssh_env: Env, files: dict[str, Path], tmp_path: Path
) -> None:
    t_emulated = ssh_env(sshd, exec_prefix=("qemu-aarch64", "-cpu", "cortex-a72"))
    inputs = ["--input", f"x={files['x']}", "--input", f"mode={files['mode']}"]
    r = kiln("run", str(files["arm"]), *ssh_args(t_emulated), *inputs, "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    feeds = {"x": np.load(files["x"]), "mode": np.load(files["mode"])}
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "y.npy"), tinypkg.reference(feeds)["y"])
    native = ssh_args(ssh_env(sshd))
    r = kiln("bench", str(files["x86"]), *native, *inputs, "--number", "5", "--repeat", "3")
    assert r.returncode == 0, r.stderr
    assert "tiny on x86_64-linux: median" in r.stdout and "3 repeats of 5 runs" in r.stdout
    r = kiln("profile", str(files["x86"]), *native, *inputs, "--trace", str(tmp_path / "t.json"))
    assert r.returncode == 0, r.stderr
    assert "scale" in r.stdout and "add_weights" in r.stdout
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]


def test_probe_lists_what_runs_on_the_board(sshd: Sshd, ssh_env: Env) -> None:
    r = kiln("probe", *ssh_args(ssh_env(sshd)))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"board       {sshd.destination}" in out and "x86_64" in out and "MiB free" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "runs: native" in lines["x86_64-linux"]
    assert "runs: --ssh-exec-prefix 'qemu-aarch64 -cpu cortex-a72'" in lines["aarch64-linux"]
    assert "runs: --ssh-exec-prefix 'qemu-riscv64 -cpu rv64'" in lines["riscv64-linux"]


def test_errors_are_one_line(sshd: Sshd, ssh_env: Env, files: dict[str, Path], tmp_path: Path) -> None:
    env = ssh_env(sshd, known_hosts=str(tmp_path / "nothing_known"))
    r = kiln("run", str(files["x86"]), *ssh_args(env), "--random-inputs")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert (
        r.stderr.startswith("kiln: error: the host key of [127.0.0.1]:")
        and "--accept-new-host-key" in r.stderr
    )
    r = kiln("run", str(files["arm"]), *ssh_args(ssh_env(sshd)), "--random-inputs")
    assert (
        r.returncode == 1 and r.stderr.startswith("kiln: error: ") and "cannot run aarch64-linux" in r.stderr
    )
    r = kiln("run", str(files["x86"]), *ssh_args(ssh_env(sshd)), "--device", "127.0.0.1:1", "--random-inputs")
    assert r.returncode == 1 and "either --ssh or --tracker/--device" in r.stderr
    r = kiln("deploy", str(files["x86"]))
    assert r.returncode == 2 and "--ssh" in r.stderr  # argparse: the option is required
