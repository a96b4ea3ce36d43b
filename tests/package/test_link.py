"""Linking: descriptor and header generation, determinism, embedding libmodel.a, large weight blobs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import running

from kiln import runtime_c
from kiln.package import ModelInfo, Package, PackageError, ToolchainError, link_model, toolchain
from kiln.package.link import c_string, descriptor_c, elf_code_size, model_header
from kiln.targets import get_target, parse_target
from tinymodel import (
    DATA,
    TINY_INFO,
    TINY_PROBE_BYTE,
    TINY_WEIGHTS,
    TINY_WEIGHTS_F32,
    link_tiny,
    tiny_expected,
    tiny_inputs,
)

NATIVE = "x86_64-linux"


def test_model_info_validation_names_the_culprit() -> None:
    with pytest.raises(ValueError, match=r"input 'x' has dtype 'float8'"):
        ModelInfo("m", [("x", "float8", (1,))], [], 0)
    with pytest.raises(ValueError, match=r"output 'y' has shape \(-1, 3\)"):
        ModelInfo("m", [], [("y", "float32", (-1, 3))], 0)
    with pytest.raises(ValueError, match=r"duplicate input names \['a'\]"):
        ModelInfo("m", [("a", "int8", ()), ("a", "int8", ())], [], 0)
    info = ModelInfo("m", [["a", "int64", [2, 3]]], [], 0)  # type: ignore[list-item]
    assert info.inputs == (("a", "int64", (2, 3)),)
    assert ModelInfo.nbytes(info.inputs[0]) == 48


def test_c_string_escapes_everything_unusual() -> None:
    assert c_string('a"b\\c?') == '"a\\"b\\\\c\\?"'
    assert c_string("é\n") == '"\\303\\251\\012"'


def test_descriptor_and_header_text() -> None:
    desc = descriptor_c(TINY_INFO, 33)
    assert "const kiln_model_t kiln_model" in desc and ".weights_bytes = 33ull" in desc
    assert '{"x", {2u, 32u, 1u}, 2, k_inputs_shape0, 32ull, NULL}' in desc
    empty = descriptor_c(ModelInfo("e", [], [], 0), 0)
    assert ".inputs = NULL" in empty and ".kernel_names = NULL" in empty
    header = model_header(TINY_INFO, get_target(NATIVE), 33)
    assert '#define KILN_MODEL_NAME "tiny"' in header
    assert "#define KILN_MODEL_OUTPUT_1_NBYTES 8ull" in header
    assert 'input 0 "x": float32 [2, 4], 32 B' in header


def test_odd_tensor_names_reach_the_device_intact() -> None:
    name = 'in"put */ é\\'
    info = ModelInfo("odd", [(name, "float32", (2, 4)), ("mode", "int32", (1,))], TINY_INFO.outputs, 32)
    pkg = Package.create(NATIVE, info, link_tiny(NATIVE, info=info))
    assert "*\\/" in pkg.files["include/model.h"].decode()  # the comment stays closed
    with pkg.open_session() as s:
        assert s.info().inputs[0].name == name
        x = tiny_inputs()
        out = s.run({name: x["x"], "mode": x["mode"]})
        np.testing.assert_allclose(out["y"], tiny_expected(x), rtol=1e-6)


def test_link_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = link_tiny(NATIVE)
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "w.bin"
    weights.write_bytes(TINY_WEIGHTS)
    b = link_tiny(NATIVE, weights=weights)  # a path instead of bytes, from another directory
    assert a.runner == b.runner and a.libmodel == b.libmodel and a.model_h == b.model_h
    assert a.runner is not None
    for path in ("/tmp/", str(toolchain.cache_dir()), str(runtime_c.ROOT), str(Path.home())):
        assert path.encode() not in a.runner and path.encode() not in a.libmodel
    assert a.weight_bytes == len(TINY_WEIGHTS) and a.code_size > 0


def test_runner_is_static_and_has_no_build_id() -> None:
    runner = link_tiny("aarch64-linux").runner
    assert runner is not None and runner[:4] == b"\x7fELF"
    assert b".note.gnu.build-id" not in runner and b"ld-musl" not in runner and b"ld-linux" not in runner


def test_elf_code_size() -> None:
    obj = toolchain.compile_source(get_target("armv7-linux"), DATA / "tiny_model.c")
    assert 0 < elf_code_size(obj) < len(obj)
    assert elf_code_size(b"not an object") == 0


def test_libmodel_and_header_embed_in_another_program(tmp_path: Path) -> None:
    pkg = Package.create(NATIVE, TINY_INFO, link_tiny(NATIVE))
    root = pkg.extract(tmp_path / "pkg")
    exe = tmp_path / "embed"
    toolchain.run_tool(
        [
            *toolchain.zig(),
            "cc",
            *toolchain.target_flags(get_target(NATIVE)),
            "-std=c11",
            "-Wall",
            "-Werror",
            "-static",
            f"-I{root / 'include'}",
            str(Path(__file__).parent / "data" / "embed_main.c"),
            str(root / "lib" / "libmodel.a"),
            "-o",
            str(exe),
        ]
    )
    fields = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert fields[:4] == ["tiny", "0", "0", "1"]
    expected = np.arange(8, dtype=np.float32) * 2 + TINY_WEIGHTS_F32
    np.testing.assert_allclose(np.array(fields[4:12], dtype=np.float32), expected, rtol=1e-6)
    assert int(fields[12]) == TINY_PROBE_BYTE


def test_link_errors_show_the_command() -> None:
    with pytest.raises(ToolchainError) as e:
        link_model(get_target(NATIVE), b"\x7fELF garbage", TINY_WEIGHTS, TINY_INFO)
    assert "zig" in str(e.value) and "failed" in str(e.value)


def _large_weights(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "weights.bin"
    with path.open("wb") as f:
        f.write(TINY_WEIGHTS)
        f.seek(size - 1)
        f.write(bytes([77]))
    return path


def test_weights_from_a_file(tmp_path: Path) -> None:
    size = 3 << 20
    linked = link_tiny(NATIVE, weights=_large_weights(tmp_path, size), probe_offset=size - 1)
    assert linked.weight_bytes == size
    with Package.create(NATIVE, TINY_INFO, linked).open_session() as s:
        assert s.run(tiny_inputs())["probe"].tolist() == [77]


@pytest.mark.slow
@pytest.mark.parametrize("target", [NATIVE, pytest.param("armv7-linux", marks=pytest.mark.qemu)])
def test_600_mb_of_weights(tmp_path: Path, target: str) -> None:
    """More weights than any model in the tests (VGG-19: 550 MB), natively and on a 32-bit target under
    qemu-user, where the large models themselves do not run (tests/e2e/test_models.py)."""
    size = 600 << 20
    linked = link_tiny(target, weights=_large_weights(tmp_path, size), probe_offset=size - 1)
    assert linked.runner is not None and len(linked.runner) > size
    with running.open_session(Package.create(target, TINY_INFO, linked)) as s:
        out = s.run(tiny_inputs())
    assert out["probe"].tolist() == [77]
    np.testing.assert_allclose(out["y"], tiny_expected(tiny_inputs()), rtol=1e-6)


def test_bare_metal_targets_get_a_library_and_no_runner() -> None:
    mcu = parse_target(
        {
            "name": "test-cortex-m4",
            "triple": "thumbv7em-none-eabihf",
            "cpu": "cortex-m4",
            "features": "",
            "vector_bits": 0,
            "os": "none",
            "zig_target": "thumb-freestanding-eabihf",
            "zig_cpu": "cortex_m4",
        }
    )
    linked = link_model(mcu, toolchain.compile_source(mcu, DATA / "tiny_model.c"), TINY_WEIGHTS, TINY_INFO)
    assert linked.runner is None and linked.libmodel.startswith(b"!<arch>\n")
    assert b"kiln_endpoint_serve" in linked.libmodel and b"kiln_platform_none.o" in linked.libmodel
    pkg = Package.create(mcu, TINY_INFO, linked)
    assert pkg.manifest["runnable"] is None and "bin/runner" not in pkg.files
    with pytest.raises(PackageError, match="has no runnable"), pkg.open_session():
        pass


def test_linking_leaves_nothing_of_the_model_in_zigs_global_cache(tmp_path: Path) -> None:
    """zig caches each command's outputs; kiln gives every command a temporary local cache, so a model's
    weights and runner never pile up in the global cache (only zig's own libc builds live there)."""
    import os

    zig_cache = Path(os.environ.get("ZIG_GLOBAL_CACHE_DIR") or Path.home() / ".cache" / "zig")
    link_tiny(NATIVE, TINY_WEIGHTS)  # libc and runtime built (cached) before counting
    before = set(zig_cache.rglob("*"))
    marker = os.urandom(64) + TINY_WEIGHTS  # weights no earlier run can have produced
    linked = link_tiny(NATIVE, marker)
    assert linked.runner is not None and marker in linked.runner and marker in linked.libmodel
    new = [p for p in set(zig_cache.rglob("*")) - before if p.is_file()]
    assert not [p for p in new if marker in p.read_bytes()], f"model data cached by zig: {new[:3]}"
