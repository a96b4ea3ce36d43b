"""Firmware images for boards (bare-metal targets): link, measure, check that they fit.

:func:`link_image` links models (one for a package, several for an exported C project; the generated
``kiln_firmware_models.c`` lists them for the firmware main) into a firmware image for a board: the generated code
(``kiln_code_<prefix>.o``), the descriptor and the model's static memory (``kiln_desc_<prefix>.c``: I/O buffers,
arena, profiler records), the weights (``.rodata.kiln_weights.<prefix>``, in flash), the runtime core, the
firmware main and the board's ports, with the board's linker script (``targets/*.ld``) and a generated
``memory.ld`` holding its memory map. The result is an ELF image (symbols kept, no debug info) and the
linker's map file.

:func:`memory_report` reads the linked ELF (pyelftools) and sorts every allocated output section into
flash (code / weights / runtime) and RAM (arena / io / stack / runtime), with the board's limits. LLD itself
rejects an image that overflows a region; :func:`link_image` turns that, and a report over the limits, into
:class:`ImageTooLarge` with both numbers and the board's limits.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.package import toolchain
from kiln.runtime_c import abi
from kiln.targets import Target
from kiln.targets.board import Board

#: Output section -> (memory, category) of :func:`memory_report`; every other allocated section counts as
#: runtime in the memory it occupies.
SECTION_KIND = {
    ".kiln_code": ("flash", "code"),
    ".kiln_weights": ("flash", "weights"),
    ".kiln_arena": ("ram", "arena"),
    ".kiln_io": ("ram", "io"),
    ".stack": ("ram", "stack"),
}
FLASH_CATEGORIES = ("code", "weights", "runtime")
RAM_CATEGORIES = ("arena", "io", "stack", "runtime")


class ImageTooLarge(ValueError):
    """The model does not fit the board: the message gives what it needs and what the board has."""


@dataclass(frozen=True)
class Image:
    """A linked firmware image: the ELF, the linker map and the memory report."""

    elf: bytes
    map_text: str
    memory: dict[str, Any]


def kernel_calls(info: Any) -> int:
    """Profiler records a firmware image reserves for a model: ``info.kernel_calls``, or twice its kernels
    and at least 16."""
    return int(info.kernel_calls) or max(16, 2 * len(info.kernel_names))


def memory_c(info: Any, *, kernel_calls: int) -> str:
    """C definitions of the model's static memory (``<prefix>_memory``, kiln/firmware.h): one buffer per
    input and output (section .kiln_io), the arena (.kiln_arena) and ``kernel_calls`` profiler records."""
    prefix = info.prefix
    lines = ['#include "kiln/firmware.h"', ""]
    refs: dict[str, list[str]] = {"inputs": [], "outputs": []}
    for kind, specs in (("inputs", info.inputs), ("outputs", info.outputs)):
        for i, spec in enumerate(specs):
            size = max(abi.align_up(info.nbytes(spec)), abi.ALIGNMENT)
            name = f"k_{kind}_buf{i}"
            lines.append(
                f"static uint8_t {name}[{size}] __attribute__((aligned({abi.ALIGNMENT}), "
                f'section(".bss.kiln_io.{prefix}.{kind}{i}")));'
            )
            refs[kind].append(name)
    for kind in ("inputs", "outputs"):
        items = ", ".join(refs[kind]) or "NULL"
        count = max(len(refs[kind]), 1)
        lines.append(f"static void *const k_{kind}_ptrs[{count}] = {{{items}}};")
    arena = "NULL"
    if info.workspace_bytes:
        lines.append(
            f"static uint8_t k_arena[{abi.align_up(info.workspace_bytes)}] "
            f'__attribute__((aligned({abi.ALIGNMENT}), section(".bss.kiln_arena.{prefix}")));'
        )
        arena = "k_arena"
    calls = max(kernel_calls, 1)
    lines += [
        f"static kiln_profile_record_t k_records[{calls}];",
        "",
        f"extern const kiln_model_memory_t {abi.memory_symbol(prefix)};",
        f"const kiln_model_memory_t {abi.memory_symbol(prefix)} = {{",
        f"    .inputs = k_inputs_ptrs,\n    .outputs = k_outputs_ptrs,\n    .workspace = {arena},",
        f"    .records = k_records,\n    .num_records = {calls}u,",
        "};",
        "",
    ]
    return "\n".join(lines)


def models_c(prefixes: Sequence[str]) -> str:
    """``kiln_firmware_models.c``: the table of the models a firmware serves (kiln/firmware.h), in order."""
    if not prefixes:
        raise ValueError("a firmware image needs at least one model")
    dupes = sorted({p for p in prefixes if list(prefixes).count(p) > 1})
    if dupes:
        raise ValueError(
            f"models in one firmware need distinct symbol prefixes; {', '.join(dupes)} is used more than once "
            "(compile each model with its own prefix: kiln compile --prefix NAME)"
        )
    decls = [
        f"extern const kiln_model_t {abi.model_symbol(p)};\n"
        f"extern const kiln_model_memory_t {abi.memory_symbol(p)};"
        for p in prefixes
    ]
    rows = [f"    {{&{abi.model_symbol(p)}, &{abi.memory_symbol(p)}}}," for p in prefixes]
    return "\n".join(
        [
            "/* Generated by kiln: the models this firmware serves (SELECT picks one, model 0 at start). */",
            '#include "kiln/firmware.h"',
            "",
            *decls,
            "",
            f"const kiln_firmware_model_t {abi.FIRMWARE_MODELS_SYMBOL}[{len(prefixes)}] = {{",
            *rows,
            "};",
            f"const uint32_t {abi.FIRMWARE_NUM_MODELS_SYMBOL} = {len(prefixes)}u;",
            "",
        ]
    )


def link_image(
    target: Target,
    board: Board,
    runtime: toolchain.RuntimeBuild,
    models: Sequence[Sequence[Path]],
    tmp: Path,
    *,
    prefixes: Sequence[str],
) -> Image:
    """Links the firmware image in ``tmp`` and measures it.

    ``models``: per model, its objects: the generated code (named ``kiln_code_<prefix>.o``),
    descriptor+memory (``kiln_desc_<prefix>.o``), weights and extra objects; ``prefixes``: their symbol
    prefixes, in the order the firmware serves them. Raises :class:`ImageTooLarge` when the image does not
    fit the board."""
    (tmp / "memory.ld").write_text(board.memory_ld())
    (tmp / "kiln_firmware_models.c").write_text(models_c(prefixes))
    table_o = toolchain.compile_c(target, tmp / "kiln_firmware_models.c", tmp / "kiln_firmware_models.o")
    model_objects = [table_o, *(o for objs in models for o in objs)]
    if runtime.compiler_rt is None:
        raise toolchain.ToolchainError(f"target {target.name}: the runtime build has no compiler_rt")
    args = [
        *toolchain.zig(),
        "ld.lld",
        "-static",
        "-nostdlib",
        "-T",
        str(board.linker_script),
        "-L",
        str(tmp),
        "--gc-sections",
        "--build-id=none",
        "--no-undefined",
        "-Map=image.map",
        "-o",
        "image.elf",
        *(str(o) for o in runtime.firmware),
        *(str(o) for o in model_objects),
        *(str(o) for o in runtime.objects),
        str(runtime.compiler_rt),
    ]
    try:
        toolchain.run_tool(args, cwd=tmp)
    except toolchain.ToolchainError as e:
        overflow = _region_overflow(str(e))
        if overflow is None:
            raise
        region, excess = overflow
        limit = board.flash_bytes if region == "FLASH" else board.ram_bytes
        raise ImageTooLarge(
            f"the model does not fit board {target.name}: its {region.lower()} needs {limit + excess} bytes "
            f"({excess} more than the board's {limit}; {_limits(board)}). Use a smaller model or a board "
            "with more memory"
        ) from None
    elf = (tmp / "image.elf").read_bytes()
    report = memory_report(elf, board)
    for mem in ("flash", "ram"):
        if report[mem]["total"] > report[mem]["limit"]:
            raise ImageTooLarge(
                f"the model does not fit board {target.name}: it needs {report[mem]['total']} bytes of {mem} "
                f"({_breakdown(report[mem])}); {_limits(board)}"
            )
    return Image(elf, (tmp / "image.map").read_text(errors="replace"), report)


def _limits(board: Board) -> str:
    return (
        f"the board has {board.flash_bytes} bytes of flash at {board.flash_base:#x} and {board.ram_bytes} "
        f"bytes of RAM at {board.ram_base:#x}"
    )


def _breakdown(mem: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mem["sections"].items())


def _region_overflow(text: str) -> tuple[str, int] | None:
    """('FLASH' | 'RAM', bytes over) from LLD's 'section ... will not fit in region' / 'overflowed by'."""
    m = re.search(r"region '?(FLASH|RAM)'? overflowed by (\d+) bytes", text)
    if m:
        return m.group(1), int(m.group(2))
    m = re.search(r"will not fit in region '?(FLASH|RAM)'?: overflowed by (\d+) bytes", text)
    return (m.group(1), int(m.group(2))) if m else None


def memory_report(elf: bytes, board: Board) -> dict[str, Any]:
    """Flash and RAM use of a linked image, from its section headers.

    Returns ``{"flash": {...}, "ram": {...}}``; each has the categories (flash: code, weights, runtime;
    RAM: arena, io, stack, runtime) in bytes, ``total``, ``limit`` (the board's size), ``percent`` and
    ``sections`` (output section -> bytes). Flash counts every allocated section stored in the image (its
    load address, so .data's initial values count in flash as well as in RAM)."""
    from elftools.elf.elffile import ELFFile

    f = ELFFile(io.BytesIO(elf))
    out: dict[str, Any] = {
        "flash": dict.fromkeys(FLASH_CATEGORIES, 0) | {"sections": {}},
        "ram": dict.fromkeys(RAM_CATEGORIES, 0) | {"sections": {}},
    }
    segments = [s.header for s in f.iter_segments() if s.header.p_type == "PT_LOAD"]

    def load_address(sh: Any) -> int:
        for p in segments:
            if p.p_vaddr <= sh.sh_addr < p.p_vaddr + max(p.p_memsz, 1) and sh.sh_type != "SHT_NOBITS":
                return int(p.p_paddr + (sh.sh_addr - p.p_vaddr))
        return int(sh.sh_addr)

    def region(addr: int) -> str | None:
        if board.flash_base <= addr < board.flash_base + board.flash_bytes:
            return "flash"
        if board.ram_base <= addr < board.ram_base + board.ram_bytes:
            return "ram"
        return None

    for sec in f.iter_sections():
        sh = sec.header
        if not sh.sh_flags & 0x2 or sh.sh_size == 0:  # SHF_ALLOC
            continue
        size = int(sh.sh_size)
        places = {region(int(sh.sh_addr))}
        if sh.sh_type != "SHT_NOBITS":
            places.add(region(load_address(sh)))
        for mem in places - {None}:
            assert mem is not None
            kind = SECTION_KIND.get(sec.name)
            cat = kind[1] if kind is not None and kind[0] == mem else "runtime"
            out[mem][cat] += size
            out[mem]["sections"][sec.name] = out[mem]["sections"].get(sec.name, 0) + size
    for mem, limit in (("flash", board.flash_bytes), ("ram", board.ram_bytes)):
        cats = FLASH_CATEGORIES if mem == "flash" else RAM_CATEGORIES
        total = sum(out[mem][c] for c in cats)
        out[mem].update(total=total, limit=limit, percent=round(100.0 * total / limit, 2))
    return out


def symbol_sizes(elf: bytes, names: Sequence[str]) -> dict[str, int]:
    """Size of each named symbol in a linked image (0 when absent)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    f = ELFFile(io.BytesIO(elf))
    symtab = f.get_section_by_name(".symtab")
    found = dict.fromkeys(names, 0)
    if isinstance(symtab, SymbolTableSection):
        for sym in symtab.iter_symbols():
            if sym.name in found:
                found[sym.name] = int(sym["st_size"])
    return found


__all__ = [
    "Image",
    "ImageTooLarge",
    "kernel_calls",
    "link_image",
    "memory_c",
    "memory_report",
    "models_c",
    "symbol_sizes",
]
