"""``kiln export --format c-project``: one or more board packages as a self-contained C project.

The project builds the same firmware image as the packages' ``bin/image.elf`` (the models, the runtime, the
firmware main serving the device protocol over the board's UART, the board's startup and ports), with the
bundled zig (``ziglang``) or with ``arm-none-eabi-gcc`` on Cortex-M boards, through its Makefile or its
CMakeLists.txt. Several packages become one firmware serving several models (the device protocol's SELECT
picks one); their symbol prefixes must differ (``kiln compile --prefix``). Layout::

    include/kiln/*.h            the runtime's headers
    include/<prefix>.h          each model's header (symbols, sizes; kiln_model_run to call it directly)
    lib/lib<prefix>.a           each model's static library: generated code, weights, descriptor, memory
    src/kiln/                   runtime sources (core, platform defaults, firmware main, the board's ports)
    src/kiln_firmware_models.c  the models the firmware serves, in order
    link/                       the board's linker script (its memory map included)
    tools/zig-cc                zig cc from the ziglang Python package ($PYTHON -m ziglang cc)
    cmake/{zig,gcc}.cmake       CMake toolchain files
    Makefile, CMakeLists.txt, kiln-project.json, README.md

``make`` (or ``make TOOLCHAIN=gcc``) and ``cmake -B build -DCMAKE_TOOLCHAIN_FILE=cmake/zig.cmake && cmake
--build build`` both give ``build/image.elf``.
"""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln import runtime_c
from kiln.package import toolchain
from kiln.package.firmware import models_c
from kiln.package.kpkg import Package
from kiln.runtime_c import abi
from kiln.targets import Target
from kiln.targets.board import Board, board_of

FORMATS = ("c-project",)

#: GNU Arm flags per Cortex-M CPU (the FPU each board file's float ABI implies).
GCC_FPU = {"cortex-m4": "fpv4-sp-d16", "cortex-m33": "fpv5-sp-d16", "cortex-m55": "auto"}


class ExportError(ValueError):
    """The packages cannot be exported together; the message says why and what to do."""


def read_ar(data: bytes) -> list[tuple[str, bytes]]:
    """Members ``(name, bytes)`` of a System V / GNU ``ar`` archive (symbol and name tables skipped)."""
    if not data.startswith(b"!<arch>\n"):
        raise ExportError("lib/libmodel.a is not an ar archive")
    pos, names, out = 8, b"", []
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip()
        size = int(header[48:58].decode().strip())
        body = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name in ("/", "/SYM64/"):
            continue
        if name == "//":
            names = body
            continue
        if name.startswith("/") and name[1:].isdigit():
            start = int(name[1:])
            name = names[start : names.index(b"/\n", start)].decode()
        out.append((name.rstrip("/"), body))
    return out


def export_c_project(packages: Sequence[Package], out: str | Path, *, format: str = "c-project") -> Path:
    """Writes the C project for ``packages`` (same board, distinct symbol prefixes) into ``out``."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; known formats: {', '.join(FORMATS)}")
    if not packages:
        raise ExportError("nothing to export: give at least one package")
    target = packages[0].target
    for pkg in packages[1:]:
        if pkg.target.name != target.name:
            raise ExportError(
                f"packages for different targets cannot share a firmware: {packages[0].name!r} is for "
                f"{target.name}, {pkg.name!r} for {pkg.target.name}"
            )
    board = board_of(target)
    if board is None:
        raise ExportError(
            f"target {target.name} is not a board: a c-project is a firmware for a microcontroller board "
            "(Linux packages carry lib/libmodel.a and include/model.h to embed directly)"
        )
    prefixes = [str(p.manifest.get("symbol_prefix", abi.DEFAULT_PREFIX)) for p in packages]
    try:
        table = models_c(prefixes)
    except ValueError as e:
        raise ExportError(str(e)) from None
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("include/kiln", "lib", "src/kiln/port", "link", "tools", "cmake"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for h in runtime_c.headers():
        shutil.copyfile(h, root / "include" / "kiln" / h.name)
    runtime_objects = {f"kiln_{src.stem}.o" for src in runtime_c.sources(target.os)}
    for pkg, prefix in zip(packages, prefixes, strict=True):
        (root / "include" / f"{prefix}.h").write_bytes(pkg.files["include/model.h"])
        members = [(n, b) for n, b in read_ar(pkg.files["lib/libmodel.a"]) if n not in runtime_objects]
        with tempfile.TemporaryDirectory(prefix="kiln-export-") as tmp:
            paths = []
            for name, body in members:
                paths.append(Path(tmp) / name)
                paths[-1].write_bytes(body)
            toolchain.archive(paths, root / "lib" / f"lib{prefix}.a")
    core = [s.name for s in runtime_c.sources(target.os)]
    firmware = [s.relative_to(runtime_c.SOURCE_DIR).as_posix() for s in _firmware_sources(board)]
    for rel in (*core, *firmware, "port/port.h"):
        shutil.copyfile(runtime_c.SOURCE_DIR / rel, root / "src" / "kiln" / rel)
    (root / "src" / "kiln_firmware_models.c").write_text(table)
    # one self-contained script: the board's, with its memory map in place of INCLUDE memory.ld (zig cc
    # passes no library path to the linker that INCLUDE could search)
    script_text = board.linker_script.read_text()
    if "INCLUDE memory.ld" in script_text:
        script_text = script_text.replace("INCLUDE memory.ld", board.memory_ld(), 1)
    else:
        (root / "link" / "memory.ld").write_text(board.memory_ld())
    (root / "link" / board.linker_script.name).write_text(script_text)
    defines = toolchain.runtime_defines(target)
    zig_flags = toolchain.target_flags(target)
    gcc_flags = _gcc_flags(target)
    sources = [f"src/kiln/{s}" for s in (*core, *firmware)] + ["src/kiln_firmware_models.c"]
    project: dict[str, Any] = {
        "board": target.name,
        "models": [
            {"prefix": p, "name": pkg.name, "package_sha256": pkg.sha256}
            for pkg, p in zip(packages, prefixes, strict=True)
        ],
        "emulator": list(target.emulator),
        "zig_flags": zig_flags,
        "gcc_flags": gcc_flags,
        "defines": defines,
    }
    (root / "kiln-project.json").write_text(json.dumps(project, indent=2, sort_keys=True) + "\n")
    script = board.linker_script.name
    (root / "Makefile").write_text(
        _makefile(target, sources, prefixes, defines, zig_flags, gcc_flags, script)
    )
    (root / "CMakeLists.txt").write_text(_cmake(target, sources, prefixes, defines, script))
    (root / "cmake" / "zig.cmake").write_text(_cmake_toolchain("zig", zig_flags, target))
    (root / "cmake" / "gcc.cmake").write_text(_cmake_toolchain("gcc", gcc_flags, target))
    zig_cc = root / "tools" / "zig-cc"
    zig_cc.write_text(
        "#!/bin/sh\n# zig cc from the ziglang Python package (pip install ziglang); $ZIG overrides the command\n"
        'if [ -n "$ZIG" ]; then exec $ZIG cc "$@"; fi\n'
        'exec "${PYTHON:-python3}" -m ziglang cc "$@"\n'
    )
    zig_cc.chmod(zig_cc.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (root / "README.md").write_text(_readme(target, packages, prefixes))
    return root


def _firmware_sources(board: Board) -> list[Path]:
    return runtime_c.firmware_sources(board.startup, board.uart_kind, board.timer_kind)


def _gcc_flags(target: Target) -> list[str] | None:
    """``arm-none-eabi-gcc`` flags for a Cortex-M board (None for other boards)."""
    if not target.triple.startswith("thumb"):
        return None
    abi_name = "hard" if target.float_abi == "hard" else "soft"
    # enums are 32-bit in kiln's (clang) objects, as in the Arm EABI for Linux; arm-none-eabi-gcc's default
    # is the smallest type
    flags = [f"-mcpu={target.cpu}", "-mthumb", f"-mfloat-abi={abi_name}", "-fno-short-enums"]
    if abi_name == "hard":
        flags.append(f"-mfpu={GCC_FPU.get(target.cpu, 'auto')}")
    return flags


def _common_cflags() -> list[str]:
    return [
        "-std=c11",
        "-Os",
        "-ffreestanding",
        "-ffunction-sections",
        "-fdata-sections",
        "-fno-unwind-tables",
    ]


def _makefile(
    target: Target,
    sources: list[str],
    prefixes: list[str],
    defines: list[str],
    zig_flags: list[str],
    gcc_flags: list[str] | None,
    script: str,
) -> str:
    libs = " ".join(f"lib/lib{p}.a" for p in prefixes)
    gcc = (
        f"""else ifeq ($(TOOLCHAIN),gcc)
CC := arm-none-eabi-gcc
TARGET_FLAGS := {" ".join(gcc_flags)}
# kiln's generated code (LLVM) passes only pointers between objects, so its objects' missing
# "VFP register arguments" attribute is no mismatch: --no-warn-mismatch lets GNU ld link them
LINK_FLAGS := -nostartfiles -Wl,--no-warn-mismatch
SYSTEM_LIBS := -Wl,--start-group -lc -lgcc -Wl,--end-group
"""
        if gcc_flags
        else ""
    )
    return f"""# Generated by kiln export: firmware for board {target.name} serving {", ".join(prefixes)}.
# make                      builds build/image.elf with the bundled zig (PYTHON: the Python with ziglang)
# make TOOLCHAIN=gcc        with arm-none-eabi-gcc (Cortex-M boards)
# make run                  boots it under QEMU (the device protocol on stdin/stdout)
TOOLCHAIN ?= zig
PYTHON ?= python3
BUILD ?= build

ifeq ($(TOOLCHAIN),zig)
CC := $(CURDIR)/tools/zig-cc
TARGET_FLAGS := {" ".join(zig_flags)}
LINK_FLAGS :=
SYSTEM_LIBS :=
{gcc}else
$(error unknown TOOLCHAIN $(TOOLCHAIN): zig{" or gcc" if gcc_flags else ""})
endif
export PYTHON

CFLAGS := $(TARGET_FLAGS) {" ".join(_common_cflags())} -Iinclude {" ".join(defines)}
LDFLAGS := $(TARGET_FLAGS) $(LINK_FLAGS) -L$(CURDIR)/link -Tlink/{script} -Wl,--gc-sections
SOURCES := {" ".join(sources)}
OBJECTS := $(patsubst %,$(BUILD)/%.o,$(SOURCES))
LIBS := {libs}

all: $(BUILD)/image.elf

$(BUILD)/%.o: %
\t@mkdir -p $(dir $@)
\t$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/image.elf: $(OBJECTS) $(LIBS) link/{script}
\t$(CC) $(LDFLAGS) -o $@ $(OBJECTS) $(LIBS) $(SYSTEM_LIBS)

run: $(BUILD)/image.elf
\t{" ".join(target.emulator)} -nographic -monitor none -serial stdio -kernel $<

clean:
\trm -rf $(BUILD)

.PHONY: all run clean
"""


def _cmake(target: Target, sources: list[str], prefixes: list[str], defines: list[str], script: str) -> str:
    imported = "\n".join(
        f"add_library({p} STATIC IMPORTED)\n"
        f'set_target_properties({p} PROPERTIES IMPORTED_LOCATION "${{CMAKE_CURRENT_SOURCE_DIR}}/lib/lib{p}.a")'
        for p in prefixes
    )
    defs = " ".join(d.removeprefix("-D") for d in defines)
    return f"""# Generated by kiln export: firmware for board {target.name} serving {", ".join(prefixes)}.
#   cmake -B build -DCMAKE_TOOLCHAIN_FILE=cmake/zig.cmake    (or cmake/gcc.cmake: arm-none-eabi-gcc)
#   cmake --build build                                      -> build/image.elf
cmake_minimum_required(VERSION 3.16)
project(kiln_firmware C ASM)

set(CMAKE_C_STANDARD 11)
set(KILN_SOURCES {" ".join(sources)})
set_source_files_properties(${{KILN_SOURCES}} PROPERTIES LANGUAGE C)
foreach(src ${{KILN_SOURCES}})
  if(src MATCHES "\\\\.S$")
    set_source_files_properties(${{src}} PROPERTIES LANGUAGE ASM)
  endif()
endforeach()
{imported}

add_executable(image.elf ${{KILN_SOURCES}})
target_include_directories(image.elf PRIVATE include)
target_compile_definitions(image.elf PRIVATE {defs})
target_compile_options(image.elf PRIVATE {" ".join(_common_cflags()[1:])})
target_link_options(image.elf PRIVATE ${{KILN_LINK_FLAGS}} -L${{CMAKE_CURRENT_SOURCE_DIR}}/link
  -T${{CMAKE_CURRENT_SOURCE_DIR}}/link/{script} -Wl,--gc-sections)
target_link_libraries(image.elf PRIVATE {" ".join(prefixes)} ${{KILN_SYSTEM_LIBS}})
"""


def _cmake_toolchain(kind: str, flags: list[str] | None, target: Target) -> str:
    if flags is None:
        return f'message(FATAL_ERROR "board {target.name}: no {kind} toolchain (use cmake/zig.cmake)")\n'
    if kind == "zig":
        cc = "${CMAKE_CURRENT_LIST_DIR}/../tools/zig-cc"
        link, libs = "", ""  # freestanding: zig links its compiler_rt (memcpy, memset, divisions), no libc
    else:
        cc = "arm-none-eabi-gcc"
        link, libs = "-nostartfiles -Wl,--no-warn-mismatch", "-Wl,--start-group -lc -lgcc -Wl,--end-group"
    return f"""# Generated by kiln export: the {kind} toolchain for board {target.name}.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR {target.triple.split("-")[0]})
set(CMAKE_C_COMPILER {cc})
set(CMAKE_ASM_COMPILER {cc})
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_C_FLAGS_INIT "{" ".join(flags)}")
set(CMAKE_ASM_FLAGS_INIT "{" ".join(flags)}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "{" ".join(flags)}")
set(KILN_LINK_FLAGS {link})
set(KILN_SYSTEM_LIBS {libs})
"""


def _readme(target: Target, packages: Sequence[Package], prefixes: list[str]) -> str:
    rows = "\n".join(
        f"| {i} | `{p}` | {pkg.name} | `include/{p}.h`, `lib/lib{p}.a` |"
        for i, (pkg, p) in enumerate(zip(packages, prefixes, strict=True))
    )
    return f"""# kiln firmware for {target.name}

Generated by `kiln export`. The image serves the kiln device protocol over the board's UART for these
models (SELECT picks one by index; model 0 at start):

| index | prefix | model | files |
|---|---|---|---|
{rows}

Build: `make` (zig from the `ziglang` Python package; set `PYTHON` to the Python that has it), `make
TOOLCHAIN=gcc` (arm-none-eabi-gcc), or `cmake -B build -DCMAKE_TOOLCHAIN_FILE=cmake/zig.cmake && cmake --build
build`. Run under QEMU: `make run`, or drive it from Python with kiln's qemu-system or serial launcher.

To call a model from your own code instead of the device protocol, replace `src/kiln/firmware_main.c` and
call `kiln_model_run(&<prefix>, <prefix>_memory.inputs, <prefix>_memory.outputs, <prefix>_memory.workspace,
NULL)`.
"""


__all__ = ["FORMATS", "ExportError", "export_c_project", "read_ar"]
