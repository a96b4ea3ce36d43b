"""Object code for packages: the module split per tensor function, the object cache, parallel emission.

The packages these tests compile must not depend on the cache's state or on the number of processes, so each
test points ``KILN_CACHE_DIR`` at its own directory and compares whole package bytes.
"""

from __future__ import annotations

from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest

import kiln
from kiln.codegen import build_llvm_ir
from kiln.codegen import target_machine as tm
from kiln.driver import compile_module
from kiln.frontend.nn import GraphBuilder
from kiln.ir import Module
from kiln.ops.interpreter import interpret
from kiln.targets import get_target

NATIVE = "x86_64-linux"


def _model() -> Module:
    """Two matmuls of one shape (one tensor function or two), a bias add and a softmax: several kernels."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("objects")
    x = g.input("x", (4, 64))
    y = g.matmul(x, g.const(rng.standard_normal((64, 64)).astype("f4") / 8))
    y = g.matmul(y, g.const(rng.standard_normal((64, 64)).astype("f4") / 8))
    y = g.add(y, g.const(rng.standard_normal((64,)).astype("f4")))
    g.output(g.softmax(y), "y")
    return g.build()


def test_the_split_modules_are_valid_and_cover_every_called_function() -> None:
    t = get_target(NATIVE)
    text = build_llvm_ir(compile_module(_model(), t), t)[0]
    parts = tm.split_module(text)
    assert len(parts) > 2
    tm._init()
    for part in parts:
        llvm.parse_assembly(part).verify()
    entry = llvm.parse_assembly(parts[0])
    called = sorted(
        f.name for f in entry.functions if f.is_declaration and f.name.startswith("kiln_model_entry.")
    )
    defined = sorted(
        f.name
        for part in parts[1:]
        for f in llvm.parse_assembly(part).functions
        if not f.is_declaration and f.linkage == llvm.Linkage.external
    )
    assert called == defined and len(defined) == len(parts) - 1


def test_bare_metal_gets_one_object() -> None:
    t = get_target("mps2-an386")
    text = build_llvm_ir(compile_module(_model(), t), t)[0]
    assert len(tm.compile_objects(text, t)) == 1


def test_packages_do_not_depend_on_the_cache_or_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _model()
    monkeypatch.setattr(tm, "PARALLEL_MIN_BYTES", 0)  # a small model in parallel processes too
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("KILN_JOBS", "2")
    cold = kiln.compile(mod, NATIVE).to_bytes()
    objects = sorted((tmp_path / "a" / "objects").glob("??/*"))
    assert len(objects) > 2
    warm = kiln.compile(mod, NATIVE)
    assert warm.to_bytes() == cold
    modules = sorted((tmp_path / "a" / "modules").glob("??/*"))
    assert len(modules) == 1
    for damaged in ([modules[0]], [modules[0], objects[0]]):  # damaged entries: compiled again
        for entry in damaged:
            entry.write_bytes(entry.read_bytes()[:-1] + b"\0")
        assert kiln.compile(mod, NATIVE).to_bytes() == cold
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "b"))
    monkeypatch.setenv("KILN_JOBS", "1")
    assert kiln.compile(mod, NATIVE).to_bytes() == cold
    x = {"x": np.random.default_rng(1).standard_normal((4, 64)).astype("f4")}
    np.testing.assert_allclose(warm.run(x)["y"], interpret(mod, x)["y"], rtol=1e-5, atol=1e-6)


def test_the_cache_directory_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KILN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tm.cache_dir() == tmp_path / "xdg" / "kiln"
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "own"))
    assert tm.cache_dir() == tmp_path / "own"


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_job_count_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KILN_JOBS", value)
    with pytest.raises(ValueError, match=f"KILN_JOBS must be a whole number >= 1, got '{value}'"):
        tm.jobs()


def test_a_compiled_package_holds_its_weights_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose weights dominate: the .kpkg is one copy of them plus code, runtime and headers."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(2)
    g = GraphBuilder("heavy")
    w = rng.standard_normal((1024, 1024)).astype("f4")  # 4 MiB
    g.output(g.matmul(g.input("x", (1, 1024)), g.const(w)), "y")
    pkg = kiln.compile(g.build(), NATIVE)
    size = len(pkg.to_bytes())
    assert pkg.manifest["weight_bytes"] >= w.nbytes
    assert w.nbytes < size < pkg.manifest["weight_bytes"] + (1 << 20)
