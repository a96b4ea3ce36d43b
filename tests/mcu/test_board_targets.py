"""Board targets as data, firmware images and what kiln inspect reports about them; no emulator needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from boards import BOARDS, user_board

from kiln.package import ModelInfo, Package
from kiln.package.firmware import ImageTooLarge, memory_report, symbol_sizes
from kiln.runtime_c import abi
from kiln.targets import TargetError, get_target
from kiln.targets.board import board_of
from tinymodel import TINY_INFO, TINY_WEIGHTS, link_tiny


def test_the_sdk_has_the_four_boards() -> None:
    assert set(BOARDS) >= {"mps2-an386", "mps2-an505", "mps3-an547", "riscv32-virt"}
    an386 = board_of(get_target("mps2-an386"))
    assert an386 is not None and an386.uart_kind == "cmsdk" and an386.uart_base == 0x40004000
    assert (an386.flash_bytes, an386.ram_bytes) == (4 << 20, 4 << 20)
    assert get_target("mps3-an547").vector_bits == 128  # MVE
    rv = board_of(get_target("riscv32-virt"))
    assert rv is not None and rv.timer_kind == "mcycle" and get_target("riscv32-virt").float_abi == "ilp32"
    assert all(get_target(b).pointer_bits == 32 for b in BOARDS)
    assert board_of(get_target("aarch64-linux")) is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("uart", None, r"missing required field 'uart'"),
        ("ram_bytes", None, r"missing required field 'ram_bytes'"),
        ("uart", '{ kind = "cmsdk" }', r"missing required field 'uart.base'"),
        ("timer", '{ kind = "dwt", hz = 1 }', r"'timer.kind' must be one of systick, mcycle"),
        ("stack_bytes", '"big"', r"field 'stack_bytes' must be a int"),
        ("linker_script", '"nowhere.ld"', r"linker_script 'nowhere.ld' not found"),
    ],
)
def test_a_bad_board_file_names_the_file_and_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: str | None, message: str
) -> None:
    path = user_board(tmp_path, "broken-board", **{field: value})
    monkeypatch.setenv("KILN_TARGET_PATH", str(tmp_path))
    with pytest.raises(TargetError, match=message) as e:
        get_target("broken-board")
    assert str(path) in str(e.value)


def test_a_user_board_with_its_own_linker_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = (Path(get_target("mps2-an386").source).parent / "cortex-m.ld").read_text()
    (tmp_path / "small-m4.ld").write_text("__small_m4_script = 0x1234;\n" + script)
    user_board(
        tmp_path, "small-m4", linker_script='"small-m4.ld"', flash_bytes="0x20000", ram_bytes="0x10000"
    )
    monkeypatch.setenv("KILN_TARGET_PATH", str(tmp_path))
    board = board_of(get_target("small-m4"))
    assert board is not None and board.linker_script == tmp_path / "small-m4.ld"
    image = link_tiny("small-m4").image
    assert "__small_m4_script = 0x1234" in image.map_text
    assert image.memory["flash"]["limit"] == 0x20000 and image.memory["ram"]["limit"] == 0x10000


def _map_sections(map_text: str) -> dict[str, int]:
    """Output section -> size from an LLD map file (lines: VMA LMA Size Align Out)."""
    out = {}
    for line in map_text.splitlines():
        m = re.match(r"^\s*[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s(\.\S+)$", line)
        if m:
            out[m.group(2)] = int(m.group(1), 16)
    return out


@pytest.mark.parametrize("board", BOARDS)
def test_memory_report_agrees_with_the_elf_and_the_linker_map(board: str) -> None:
    info = ModelInfo(**{**TINY_INFO.__dict__, "workspace_bytes": 3000})
    linked = link_tiny(board, info=info)
    pkg = Package.create(board, info, linked)
    mem = pkg.manifest["memory"]
    assert pkg.manifest["runnable"] == "bin/image.elf" and "lib/image.map" in pkg.files
    assert mem == memory_report(pkg.files["bin/image.elf"], board_of(get_target(board)))  # type: ignore[arg-type]
    sections = _map_sections(pkg.files["lib/image.map"].decode())
    for name in (".kiln_code", ".kiln_weights", ".kiln_arena", ".kiln_io", ".stack", ".bss"):
        assert (
            sections[name]
            == mem["ram" if name in (".kiln_arena", ".kiln_io", ".stack", ".bss") else "flash"]["sections"][
                name
            ]
        ), name
    # the plan's arena and the image's agree; weights and I/O buffers as described
    assert mem["ram"]["arena"] == abi.align_up(3000)
    assert mem["flash"]["weights"] == len(TINY_WEIGHTS)
    assert mem["ram"]["io"] == 4 * abi.ALIGNMENT  # x, mode, y, probe: one aligned buffer each
    assert mem["ram"]["stack"] == board_of(get_target(board)).stack_bytes  # type: ignore[union-attr]
    assert symbol_sizes(linked.image.elf, ["kiln_model_weights"])["kiln_model_weights"] == len(TINY_WEIGHTS)
    for m in ("flash", "ram"):
        cats = ("code", "weights", "runtime") if m == "flash" else ("arena", "io", "stack", "runtime")
        assert mem[m]["total"] == sum(mem[m][c] for c in cats) <= mem[m]["limit"]


def test_a_model_too_big_for_the_board_fails_with_both_numbers() -> None:
    with pytest.raises(ImageTooLarge) as e:
        link_tiny("mps3-an547", weights=bytes(600 * 1024))
    text = str(e.value)
    assert "mps3-an547" in text and "524288 bytes of flash" in text
    assert re.search(r"flash needs \d+ bytes \(\d+ more than the board's 524288", text)
    info = ModelInfo(**{**TINY_INFO.__dict__, "workspace_bytes": 5 << 20})
    with pytest.raises(ImageTooLarge, match=r"ram needs \d+ bytes .*4194304 bytes of RAM at 0x20000000"):
        link_tiny("mps2-an386", info=info)


#: The runtime core (status, model, profiler, crc32, endpoint) in a Cortex-M4 firmware image, in bytes of
#: flash: its code and constants after --gc-sections (from the linker map) plus its string literals (which
#: LLD merges into one section the map does not attribute; counted from the objects). It may shrink, not
#: creep. Measured when written: 7818 B without strings (about 9.2 KB with them) before the endpoint kept its
#: helpers out of line, did 64-bit divisions with 32-bit ones and left status names to the host; then
#: 5452 B + 913 B of strings (6365 B); then 3960 B and no strings, once ERROR replies carried a reason and
#: numbers that the host words (abi.ERROR_REASONS) and requests went through one table. The goal was 4 KiB.
#: On the RV32 board (RV32IMAC, whose compressed code is larger than Thumb-2): 7849 B before that, 5376 B after.
CORE_FLASH_BUDGET = {"mps2-an386": 4096, "riscv32-virt": 5632}
CORE_OBJECTS = ("status", "model", "profiler", "crc32", "endpoint")


def core_bytes(map_text: str) -> dict[str, int]:
    """Flash and RAM of the runtime core's input sections in a linked image, from its LLD map."""
    out = {"flash": 0, "ram": 0}
    pattern = re.compile(
        rf"^\s*[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S*/kiln_({'|'.join(CORE_OBJECTS)})\.o:\((\S+)\)"
    )
    for line in map_text.splitlines():
        m = pattern.match(line)
        if m:
            ram = m.group(3).startswith((".data", ".bss"))
            out["ram" if ram else "flash"] += int(m.group(1), 16)
    return out


def core_strings(map_text: str, board: str = "mps2-an386") -> int:
    """Bytes of string literals in the core objects that the image links (before LLD merges them)."""
    import io

    from elftools.elf.elffile import ELFFile

    from kiln.package import toolchain

    linked = set(re.findall(rf"/kiln_({'|'.join(CORE_OBJECTS)})\.o:", map_text))
    total = 0
    for obj in toolchain.runtime_build(get_target(board)).objects:
        if obj.stem.removeprefix("kiln_") in linked:
            elf = ELFFile(io.BytesIO(obj.read_bytes()))
            total += sum(s.header.sh_size for s in elf.iter_sections() if s.name.startswith(".rodata.str"))
    return total


@pytest.mark.parametrize("board", sorted(CORE_FLASH_BUDGET))
def test_the_runtime_core_stays_within_its_flash_budget(board: str) -> None:
    image = link_tiny(board).image
    core = core_bytes(image.map_text)
    flash = core["flash"] + core_strings(image.map_text, board)
    assert 0 < flash <= CORE_FLASH_BUDGET[board], f"runtime core is {flash} bytes on {board} ({core})"
    assert core["ram"] == 0  # the core keeps no state of its own: the caller provides every buffer
    assert image.memory["flash"]["runtime"] > flash  # plus firmware main, ports, startup, compiler-rt
    assert "__udivmoddi4" not in image.map_text  # no 64-bit division routine in the image
