"""The C runtime's rules and builds: no allocation in the core, clean -Werror builds on every target,
freestanding core, Python constants in sync with the headers, the per-target build cache."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from kiln import runtime_c
from kiln.package import toolchain
from kiln.targets import get_target, parse_target
from tinymodel import LINUX_TARGETS


def _strip_comments(code: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", code, flags=re.S)


def test_core_has_no_malloc_free_assert() -> None:
    core = [runtime_c.SOURCE_DIR / s for s in runtime_c.CORE_SOURCES] + runtime_c.headers()
    core += [runtime_c.SOURCE_DIR / s for s in runtime_c.PLATFORM_SOURCES.values()]
    forbidden = re.compile(r"\b(malloc|calloc|realloc|free|aligned_alloc|assert|abort)\s*\(|<assert\.h>")
    hits = [
        f"{path.name}: {m.group(0)}"
        for path in core
        for m in forbidden.finditer(_strip_comments(path.read_text()))
    ]
    assert hits == []
    assert len(core) >= 12  # the grep really looked at the core


def test_grep_catches_a_forbidden_call() -> None:
    assert re.search(r"\bmalloc\s*\(", _strip_comments("void *p = malloc (4); /* free(p) */"))
    assert not re.search(r"\bfree\s*\(", _strip_comments("int x; /* free(p) */"))


@pytest.mark.parametrize("target", LINUX_TARGETS)
def test_runtime_builds_with_werror_on_every_linux_target(target: str) -> None:
    assert {"-Wall", "-Wextra", "-Werror", "-std=c11"} <= set(toolchain.CFLAGS)
    build = toolchain.runtime_build(get_target(target))
    assert build.library.stat().st_size > 0
    assert [o.name for o in build.objects] == [f"kiln_{Path(s).stem}.o" for s in runtime_c.sources("linux")]
    assert build.runner_main is not None and build.runner_main.exists()


@pytest.mark.parametrize(
    ("zig_target", "zig_cpu"), [("thumb-freestanding-eabi", "cortex_m4"), ("riscv32-freestanding-none", "")]
)
def test_core_builds_freestanding_without_libc(zig_target: str, zig_cpu: str, tmp_path: Path) -> None:
    """The core and the bare-metal platform defaults need no C library and no OS."""
    mcu = parse_target(
        {
            "name": "test-mcu",
            "triple": "x",
            "cpu": "x",
            "features": "",
            "vector_bits": 0,
            "os": "none",
            "zig_target": zig_target,
            "zig_cpu": zig_cpu,
        }
    )
    for src in runtime_c.sources("none"):
        obj = toolchain.compile_c(mcu, src, tmp_path / f"{src.stem}.o")
        assert obj.stat().st_size > 0


def test_runtime_hash_is_stable_and_covers_every_source() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", runtime_c.runtime_hash())
    assert runtime_c.runtime_hash() == runtime_c.runtime_hash()
    assert {p.name for p in runtime_c.sources("linux")} <= {p.name for p in runtime_c.SOURCE_DIR.glob("*.c")}


def test_runtime_cache_survives_concurrent_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    target = get_target("x86_64-linux")
    results: list[toolchain.RuntimeBuild] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(toolchain.runtime_build(target))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.directory for r in results}) == 1
    entries = list((tmp_path / "runtime").iterdir())
    assert entries == [results[0].directory]  # no temporary directories left behind
    assert results[0].library.stat().st_size > 0


def test_compiler_errors_show_the_command_and_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("int f(void) { return undeclared_name; }\n")
    with pytest.raises(toolchain.ToolchainError) as e:
        toolchain.compile_source(get_target("x86_64-linux"), bad)
    text = str(e.value)
    assert "zig" in text and "cc" in text and "bad.c" in text
    assert "undeclared_name" in text
