"""The C toolchain: ``zig cc`` / ``zig ar`` from the ``ziglang`` wheel, for every target, no system compiler.

Contracts:

- Every command runs as ``sys.executable -m ziglang ...`` with the target's ``zig_target`` and ``zig_cpu``.
  A failing command raises :class:`ToolchainError` showing the command line and the compiler's stderr.
- Objects are built without debug info (``-g0``) and with relative file names, and archives in
  deterministic mode (``zig ar rcD``), so the same inputs give byte-identical outputs in any directory.
- :func:`runtime_build` compiles ``kiln.runtime_c`` once per (target, runtime sources, flags, zig version)
  into kiln's cache (``$KILN_CACHE_DIR``, else ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``:
  :func:`kiln.codegen.target_machine.cache_dir`). A build appears there atomically (built in a
  temporary directory, then renamed), so parallel processes (pytest-xdist) can race safely: the first
  rename wins and the others use its result.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import runtime_c
from kiln.codegen.target_machine import cache_dir
from kiln.targets import Target
from kiln.targets.board import board_of

#: Flags for every C file kiln compiles (runtime, descriptor, test models). The runtime must build cleanly
#: with them on every target.
CFLAGS: tuple[str, ...] = (
    "-std=c11",
    "-O2",
    "-g0",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wpedantic",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-ffunction-sections",
    "-fdata-sections",
)


class ToolchainError(RuntimeError):
    """A compiler, assembler or archiver command failed; the message holds the command and its output."""


def zig() -> list[str]:
    """The command prefix that runs the bundled zig."""
    return [sys.executable, "-m", "ziglang"]


@functools.cache
def zig_version() -> str:
    return run_tool([*zig(), "version"]).strip()


def target_flags(target: Target) -> list[str]:
    """``-target``/``-mcpu`` (and ``-ffreestanding`` for bare metal) for ``zig cc``."""
    flags = ["-target", target.zig_target]
    if target.zig_cpu:
        flags.append(f"-mcpu={target.zig_cpu}")
    if target.is_bare_metal:
        flags.append("-ffreestanding")
    return flags


def run_tool(args: Sequence[str], cwd: Path | None = None) -> str:
    """Runs a toolchain command and returns its stdout; raises :class:`ToolchainError` on failure.

    zig keeps what it builds for a command (an object holding a model's weights, a linked runner) in its
    "local" cache, which for ``zig cc`` is the global one (``~/.cache/zig``): every compiled model would stay
    there for good. Each command gets a temporary local cache instead; the global cache keeps only what zig
    puts there itself (each target's libc, built once)."""
    with tempfile.TemporaryDirectory(prefix="kiln-zig-") as local_cache:
        env = {**os.environ, "ZIG_LOCAL_CACHE_DIR": local_cache}
        try:
            proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False, env=env)
        except OSError as e:
            raise ToolchainError(f"cannot run {shlex.join(args)}: {e}") from e
    if proc.returncode != 0:
        where = f" (in {cwd})" if cwd else ""
        raise ToolchainError(
            f"command failed with exit status {proc.returncode}{where}:\n  {shlex.join(args)}\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def compile_c(
    target: Target,
    source: Path,
    output: Path,
    *,
    include_dirs: Sequence[Path] = (),
    flags: Sequence[str] = (),
) -> Path:
    """Compiles one C or assembly (``.S``) file to an object for ``target``, with :data:`CFLAGS` + ``flags``.

    The compiler runs in the source's directory with the source's base name, so no absolute path reaches the
    object."""
    includes = [f"-I{d}" for d in (runtime_c.INCLUDE_DIR, *include_dirs)]
    cflags = CFLAGS if source.suffix == ".c" else ("-g0",)
    run_tool(
        [
            *zig(),
            "cc",
            *target_flags(target),
            *cflags,
            *includes,
            *flags,
            "-c",
            source.name,
            "-o",
            str(output.resolve()),
        ],
        cwd=source.parent,
    )
    return output


def compile_source(target: Target, source: Path, *, flags: Sequence[str] = ()) -> bytes:
    """Compiles one C file for ``target`` and returns the object's bytes (e.g. a library kernel for
    ``call_extern``, or a hand-written test model)."""
    with tempfile.TemporaryDirectory(prefix="kiln-cc-") as tmp:
        return compile_c(target, source, Path(tmp) / "out.o", flags=flags).read_bytes()


def archive(objects: Sequence[Path], output: Path) -> Path:
    """Creates a static library from ``objects`` (members named by base name, in the given order)."""
    output.unlink(missing_ok=True)
    run_tool([*zig(), "ar", "rcsD", str(output), *(str(o) for o in objects)])
    return output


@dataclass(frozen=True)
class RuntimeBuild:
    """The runtime compiled for one target: core + platform objects, their archive, and (Linux) the runner
    main object or (boards) the firmware objects: main, startup, UART and timer port. Files live in the
    cache and must not be modified."""

    directory: Path
    objects: tuple[Path, ...]
    library: Path
    runner_main: Path | None
    firmware: tuple[Path, ...] = ()
    compiler_rt: Path | None = None


def runtime_key(target: Target) -> str:
    """Cache key: everything that changes the compiled runtime."""
    parts = [
        "layout 2",  # what a build directory holds (bumped when a build gains files: firmware, compiler_rt)
        target.name,
        target.zig_target,
        target.zig_cpu,
        target.os,
        runtime_c.runtime_hash(),
        shlex.join(CFLAGS),
        shlex.join(runtime_defines(target)),
        shlex.join(BARE_METAL_FLAGS),
        zig_version(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def runtime_build(target: Target) -> RuntimeBuild:
    """Returns the runtime compiled for ``target``, building it into the cache on first use."""
    final = cache_dir() / "runtime" / f"{target.name}-{runtime_key(target)}"
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            _build_runtime(target, tmp)
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not lost a race: a real failure
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    objects = tuple(final / f"kiln_{src.stem}.o" for src in runtime_c.sources(target.os))
    main = final / "kiln_runner_main.o"
    firmware = tuple(final / f"kiln_fw_{src.stem}.o" for src in _firmware_sources(target))
    rt = final / "libcompiler_rt.a"
    return RuntimeBuild(
        final,
        objects,
        final / "libkiln_runtime.a",
        main if main.exists() else None,
        firmware,
        rt if rt.exists() else None,
    )


def runtime_defines(target: Target) -> list[str]:
    """``-D`` flags from the target's optional ``runtime_defines = ["NAME=VALUE", ...]``, which override the
    limits in ``kiln/config.h`` (e.g. a smaller ``KILN_ENDPOINT_MAX_PAYLOAD`` for a microcontroller), and for
    a board the addresses its firmware ports need (:meth:`kiln.targets.board.Board.defines`)."""
    defines = target.extra.get("runtime_defines", [])
    valid = isinstance(defines, list) and all(isinstance(d, str) and d.startswith("KILN_") for d in defines)
    if not valid:
        raise ToolchainError(
            f"target {target.name}: runtime_defines must be a list of 'KILN_NAME=VALUE' strings, "
            f"got {defines!r}"
        )
    board = board_of(target)
    # bare metal compiles fixed shapes only (driver.compile refuses run-time sizes): no DIMS code in flash
    fixed = ["-DKILN_DYNAMIC_DIMS=0"] if target.is_bare_metal else []
    return [f"-D{d}" for d in defines] + fixed + (board.defines() if board is not None else [])


def _firmware_sources(target: Target) -> list[Path]:
    board = board_of(target)
    if board is None:
        return []
    return runtime_c.firmware_sources(board.startup, board.uart_kind, board.timer_kind)


#: Extra flags for the runtime on bare-metal targets: optimized for size, no unwind tables (C, no exceptions).
BARE_METAL_FLAGS: tuple[str, ...] = ("-Os", "-fno-unwind-tables", "-fno-asynchronous-unwind-tables")


def _build_runtime(target: Target, out: Path) -> None:
    flags = runtime_defines(target) + (list(BARE_METAL_FLAGS) if target.is_bare_metal else [])
    srcs = runtime_c.sources(target.os)
    objects = [compile_c(target, src, out / f"kiln_{src.stem}.o", flags=flags) for src in srcs]
    archive(objects, out / "libkiln_runtime.a")
    if target.os == "linux":
        main = runtime_c.SOURCE_DIR / runtime_c.RUNNER_MAIN
        compile_c(target, main, out / "kiln_runner_main.o", flags=flags)
    for src in _firmware_sources(target):
        compile_c(target, src, out / f"kiln_fw_{src.stem}.o", flags=flags)
    if target.is_bare_metal:
        shutil.copyfile(_compiler_rt(target, out), out / "libcompiler_rt.a")


def _compiler_rt(target: Target, work: Path) -> Path:
    """zig's compiler_rt archive for a bare-metal target (integer division, soft float, memcpy, ...): built
    by zig into its global cache when it links a freestanding program, found in that link's command line.
    Firmware images are linked with ``zig ld.lld`` directly (zig cc passes no -Map), against this archive."""
    (work / "rt_probe.c").write_text("int kiln_rt_probe(void);\nint kiln_rt_probe(void) { return 0; }\n")
    with tempfile.TemporaryDirectory(prefix="kiln-zig-") as local_cache:
        env = {**os.environ, "ZIG_LOCAL_CACHE_DIR": local_cache}
        cmd = [*zig(), "cc", *target_flags(target), "-O2", "-v", "-o", "rt_probe.elf", "rt_probe.c"]
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False, env=env)
    for line in proc.stderr.splitlines():
        for word in shlex.split(line) if "ld.lld" in line else []:
            if word.endswith("libcompiler_rt.a") and Path(word).is_file():
                return Path(word)
    raise ToolchainError(
        f"target {target.name}: cannot find zig's compiler_rt for {target.zig_target}; the probe link "
        f"{shlex.join(cmd)} said:\n{proc.stderr.strip()}"
    )


#: Flags of the host shared object that QEMU loads to count instructions (:func:`icount_plugin`).
PLUGIN_FLAGS: tuple[str, ...] = ("-shared", "-fPIC", "-fvisibility=hidden", *CFLAGS)


def host_zig_target() -> str:
    """The zig target of this host, with glibc (QEMU loads plugins into a glibc process)."""
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{arch}-linux-gnu"


def icount_plugin() -> Path:
    """The QEMU user-mode plugin that counts instructions per kernel (:mod:`kiln.device.icount`), built for
    this host from ``kiln.runtime_c``'s ``qemu_plugin/`` on first use and kept in kiln's cache (keyed by its
    sources, flags and zig version; built in a temporary file, then renamed)."""
    sources = sorted(runtime_c.QEMU_PLUGIN_DIR.glob("*.[ch]"))
    h = hashlib.sha256()
    for part in (host_zig_target(), shlex.join(PLUGIN_FLAGS), zig_version()):
        h.update(part.encode() + b"\n")
    for src in sources:
        h.update(src.name.encode() + b"\n" + src.read_bytes())
    final = cache_dir() / "qemu-plugin" / f"kiln_icount-{h.hexdigest()[:20]}.so"
    if not final.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}-", dir=final.parent)
        os.close(fd)
        try:
            src = runtime_c.QEMU_PLUGIN_SOURCE
            run_tool(
                [*zig(), "cc", "-target", host_zig_target(), *PLUGIN_FLAGS, src.name, "-o", tmp],
                cwd=src.parent,
            )
            os.rename(tmp, final)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return final
