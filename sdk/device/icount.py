"""Instruction counts of a runner under QEMU user mode: exact, deterministic, per kernel.

The count plugin (``runtime_c/qemu_plugin/kiln_icount.c``, built for the host by
:func:`kiln.package.toolchain.icount_plugin`) is loaded by the ``qemu-user`` launcher when it is given an
:class:`InstructionCounter`. Before the runner starts, the counter reads the runner's symbol table (Linux
runners are static, non-PIE: symbol addresses are the guest addresses) and writes the address ranges of
each kernel's code for the plugin: the kernel's own function and every function named ``<kernel>.<...>``
(the outlined bodies of its parallel loops and their trampolines, see :mod:`kiln.codegen.tensor_codegen`).
The plugin adds each translated block's instruction count, inline, to the total and to the counter of the
kernel whose range holds the block; at exit it writes the counts, which :meth:`InstructionCounter.result`
reads into :class:`~kiln.device.profile.InstructionCounts`.

Counts are of guest instructions as QEMU translates them (one per instruction, whatever its width: an RVV
instruction over 16 floats counts 1). They are deterministic for one thread: run counts with the runner's
thread pool at one thread (``threads=1``), so that no worker changes the order or number of blocks.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kiln.device.profile import InstructionCounts
from kiln.runtime_c import abi

#: The plugin's inputs and output in the counter's directory.
RANGES_FILE = "icount.ranges"
COUNTS_FILE = "icount.counts"
#: The first word of the plugin's line holding the count of every executed instruction.
TOTAL_KEY = "total"


class CountError(RuntimeError):
    """Instruction counting cannot be done: a runner without symbols, a kernel without code, no counts."""


def kernel_ranges(
    elf_path: Path, kernels: Sequence[str], entry: str = abi.ENTRY_SYMBOL
) -> list[tuple[int, int, int]]:
    """``(start, end, kernel index)`` of every function in ``elf_path``'s symbol table that belongs to a
    kernel, sorted by address: named as the kernel, or ``<kernel>.`` followed by anything (its outlined
    parallel loops), either also behind ``<entry>.`` (the code generator compiles each kernel called by the
    model's entry point ``entry`` in a unit of its own, under that name: :mod:`kiln.codegen.target_machine`);
    the longest kernel name wins. A :class:`CountError` when the runner has no symbol table or a kernel has
    no code."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with elf_path.open("rb") as fh:
        elf = ELFFile(fh)
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise CountError(
                f"{elf_path} has no symbol table (a runner linked by an older kiln is stripped); compile the "
                "model again to count its instructions per kernel"
            )
        funcs = {
            (int(s["st_value"]), int(s["st_value"]) + int(s["st_size"]), s.name)
            for s in symtab.iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC" and s["st_size"] > 0
        }
    by_length = sorted(range(len(kernels)), key=lambda i: -len(kernels[i]))
    ranges: list[tuple[int, int, int]] = []
    for start, end, symbol in sorted(funcs):
        name = symbol.removeprefix(entry + ".")
        for i in by_length:
            if name == kernels[i] or name.startswith(kernels[i] + "."):
                if ranges and start < ranges[-1][1]:
                    raise CountError(f"{elf_path}: function {symbol!r} overlaps the code of another kernel")
                ranges.append((start, end, i))
                break
    missing = sorted(set(range(len(kernels))) - {r[2] for r in ranges})
    if missing:
        names = ", ".join(kernels[i] for i in missing)
        raise CountError(f"{elf_path}: no code for kernel(s) {names} in the symbol table")
    return ranges


class InstructionCounter:
    """Counts a runner's instructions per kernel, with the QEMU plugin at ``plugin``: give it to the
    ``qemu-user`` launcher (``QemuUserLauncher(target, count=counter)``), start and use the session, close
    it (the counts are written when the runner exits), then call :meth:`result`. ``kernels``: the model's
    kernel names (the package manifest's ``kernels``); ``prefix``: its symbol prefix (the manifest's
    ``symbol_prefix``). Holds a temporary directory until :meth:`close`."""

    def __init__(
        self,
        plugin: Path,
        kernels: Sequence[str],
        *,
        prefix: str = abi.DEFAULT_PREFIX,
        model: str = "",
        target: str = "",
    ) -> None:
        if not Path(plugin).is_file():
            raise CountError(f"the instruction-count plugin {plugin} does not exist")
        self.plugin = Path(plugin)
        self.kernels = list(kernels)
        self.entry = abi.entry_symbol(prefix)
        self.model = model
        self.target = target
        self.directory = Path(tempfile.mkdtemp(prefix="kiln-icount-"))

    @property
    def counts_path(self) -> Path:
        return self.directory / COUNTS_FILE

    def emulator_args(self, runnable: Path) -> list[str]:
        """Writes the kernel ranges of ``runnable`` and returns the emulator options that load the plugin."""
        ranges = kernel_ranges(Path(runnable), self.kernels, self.entry)
        (self.directory / RANGES_FILE).write_text("".join(f"{s} {e} {k}\n" for s, e, k in ranges))
        self.counts_path.unlink(missing_ok=True)
        for path in (self.plugin, self.directory):
            if "," in str(path):
                raise CountError(f"QEMU cannot take a plugin path with a comma: {path}")
        return ["-plugin", f"{self.plugin},ranges={self.directory / RANGES_FILE},out={self.counts_path}"]

    def result(self) -> InstructionCounts:
        """The counts the plugin wrote when the runner exited (close the session first)."""
        if not self.counts_path.is_file():
            raise CountError(
                "the runner wrote no instruction counts: close the session before reading them (the plugin "
                "writes them when the runner exits), and check that the runner exited normally"
            )
        total: int | None = None
        per = [0] * len(self.kernels)
        for line in self.counts_path.read_text().splitlines():
            key, value = line.split()
            if key == TOTAL_KEY:
                total = int(value)
            elif int(key) < len(per):
                per[int(key)] = int(value)
        if total is None:
            raise CountError(f"{self.counts_path} has no total")
        return InstructionCounts(
            kernels=dict(zip(self.kernels, per, strict=True)),
            total=total,
            model=self.model,
            target=self.target,
        )

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> InstructionCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["COUNTS_FILE", "RANGES_FILE", "CountError", "InstructionCounter", "kernel_ranges"]
