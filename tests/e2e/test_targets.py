"""The shared conformance suite: every Linux target compiles the same models, runs them (natively or under
qemu-user) and matches the NumPy interpreter. Adding a target adds a TOML file, not tests."""

from __future__ import annotations

import numpy as np
import pytest
import running

import kiln
from graphs import conv_bn_relu, mlp, residual_block
from kiln.ops.interpreter import interpret
from kiln.targets import get_target, list_targets

LINUX_TARGETS = [t.name for t in list_targets() if t.os == "linux"]
MODELS = {"conv_bn_relu": conv_bn_relu, "residual": residual_block, "mlp": mlp}


def _inputs(mod, seed: int = 0) -> dict[str, np.ndarray]:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    return {p.name: rng.standard_normal(p.type.static_shape).astype("f4") for p in mod.main.params}


@pytest.mark.parametrize(
    "target",
    [t if get_target(t).runs_natively() else pytest.param(t, marks=pytest.mark.qemu) for t in LINUX_TARGETS],
)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_model_runs_on_target(target: str, model: str) -> None:
    mod = MODELS[model]()
    pkg = kiln.compile(mod, target)
    x = _inputs(mod)
    got = running.run(pkg, x)
    want = interpret(mod, x)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=f"{model} on {target}: {k}")


@pytest.mark.qemu
def test_compiling_twice_gives_identical_packages(tmp_path) -> None:  # noqa: ANN001
    mod = residual_block()
    a = kiln.compile(mod, "aarch64-linux").save(tmp_path / "a.kpkg")
    b = kiln.compile(residual_block(), "aarch64-linux").save(tmp_path / "b.kpkg")
    assert a.read_bytes() == b.read_bytes()
    x = _inputs(mod, seed=4)  # and the package runs
    got, want = running.run(kiln.load(a), x), interpret(mod, x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.qemu
def test_package_round_trips_through_a_file(tmp_path) -> None:  # noqa: ANN001
    mod = mlp()
    path = kiln.compile(mod, "riscv64-linux").save(tmp_path / "mlp.kpkg")
    pkg = kiln.load(path)
    m = pkg.manifest
    assert [t["name"] for t in m["inputs"]] == ["x"] and m["outputs"][0]["shape"] == [3, 5]
    assert m["target"]["name"] == "riscv64-linux" and m["arena_bytes"] > 0 and m["weight_bytes"] > 0
    x = _inputs(mod, seed=3)
    np.testing.assert_allclose(running.run(pkg, x)["y"], interpret(mod, x)["y"], rtol=1e-4, atol=1e-6)


def test_wrong_input_shape_is_a_clear_error() -> None:
    pkg = kiln.compile(mlp(), "x86_64-linux")
    with pytest.raises(ValueError, match=r"x.*\(3, 20\).*\(2, 20\)|x.*\(2, 20\).*\(3, 20\)"):
        pkg.run({"x": np.zeros((2, 20), "f4")})


@pytest.mark.qemu
def test_user_target_with_a_hook_compiles_and_runs(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """docs/how-to/add-a-target.md as a test: a TOML file in a KILN_TARGET_PATH directory, a hook pass named
    in it, `kiln targets` listing it, and a model compiled for it running under its emulator."""
    import subprocess
    import sys

    from kiln.driver import compile_module
    from kiln.transform import default_pipeline

    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "rpi3.toml").write_text(
        'name = "rpi3"\ndescription = "Raspberry Pi 3 (Cortex-A53, NEON), static musl runner"\n'
        'triple = "aarch64-unknown-linux-musl"\ncpu = "cortex-a53"\nfeatures = "+neon"\nvector_bits = 128\n'
        'os = "linux"\nzig_target = "aarch64-linux-musl"\nzig_cpu = "cortex_a53"\n'
        'emulator = ["qemu-aarch64", "-cpu", "cortex-a53"]\nemulator_package = "qemu-user"\n'
        'hooks = { graph_opt = ["kiln_test_board_passes:tag_board"] }\n'
    )
    (tmp_path / "kiln_test_board_passes.py").write_text(
        "def tag_board(mod):\n    return mod.with_attrs(board_revision='1.4')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KILN_TARGET_PATH", str(tmp_path / "targets"))

    names = default_pipeline("rpi3").names()
    assert names.index("fuse-ops") < names.index("tag_board") < names.index("legalize")
    mod = mlp()
    assert compile_module(mod, "rpi3").attrs["board_revision"] == "1.4"
    pkg = kiln.compile(mod, "rpi3")
    assert pkg.manifest["target"]["cpu"] == "cortex-a53"
    x = _inputs(mod, seed=5)
    np.testing.assert_allclose(running.run(pkg, x)["y"], interpret(mod, x)["y"], rtol=1e-4, atol=1e-6)
    listed = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "targets"], capture_output=True, text=True, check=True
    ).stdout
    assert "rpi3" in listed and "cortex-a53" in listed
