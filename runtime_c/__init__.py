"""The kiln C runtime: sources and headers shipped as package data, compiled per target by ``kiln.package``.

The constants C and Python share (alignment, dtype codes, status and exit codes, protocol numbers, symbol
names) live in :mod:`kiln.runtime_c.abi`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
INCLUDE_DIR = ROOT / "include"
SOURCE_DIR = ROOT / "src"
#: The QEMU TCG plugin that counts a runner's instructions per kernel (built for the host, not the target;
#: not part of the runtime: :func:`runtime_hash` leaves it out).
QEMU_PLUGIN_DIR = ROOT / "qemu_plugin"
QEMU_PLUGIN_SOURCE = QEMU_PLUGIN_DIR / "kiln_icount.c"

#: Sources of the runtime core: no OS calls, no allocation; the same on every target.
CORE_SOURCES = ("status.c", "model.c", "profiler.c", "crc32.c", "endpoint.c")
#: Weak default platform hooks, by target ``os``.
PLATFORM_SOURCES = {"linux": "platform_posix.c", "none": "platform_none.c"}
#: The worker-thread pool of ``parallel`` loops (``kiln_parallel_for``, include/kiln/threads.h), by target
#: ``os``: bare-metal builds have none (their generated code runs parallel loops serially).
THREAD_SOURCES: dict[str, tuple[str, ...]] = {"linux": ("threads.c",), "none": ()}
#: The Linux runner's ``main`` (platform glue: serves the device protocol on stdin/stdout).
RUNNER_MAIN = "runner_main.c"
#: The firmware's ``main`` for bare-metal boards (serves the device protocol over the board's UART).
FIRMWARE_MAIN = "firmware_main.c"
#: Board ports (src/port), by the board file's ``startup``, ``uart.kind`` and ``timer.kind``.
STARTUP_SOURCES = {
    "cortex-m": ("port/startup_cortex_m.c",),
    "riscv": ("port/startup_riscv.S", "port/startup_riscv_c.c"),
}
UART_SOURCES = {"cmsdk": "port/uart_cmsdk.c", "ns16550": "port/uart_ns16550.c"}
TIMER_SOURCES = {"systick": "port/timer_systick.c", "mcycle": "port/timer_mcycle.c"}


def sources(os_name: str) -> list[Path]:
    """The runtime library's sources for a target OS (``linux`` or ``none``): core, platform defaults and
    (with an OS) the thread pool."""
    if os_name not in PLATFORM_SOURCES:
        raise ValueError(f"no runtime platform for os {os_name!r}; known: {', '.join(PLATFORM_SOURCES)}")
    names = (*CORE_SOURCES, PLATFORM_SOURCES[os_name], *THREAD_SOURCES[os_name])
    return [SOURCE_DIR / name for name in names]


def firmware_sources(startup: str, uart: str, timer: str) -> list[Path]:
    """The firmware glue of a board (on top of :func:`sources` for ``none``): main, startup, UART, timer."""
    try:
        names = [FIRMWARE_MAIN, *STARTUP_SOURCES[startup], UART_SOURCES[uart], TIMER_SOURCES[timer]]
    except KeyError as e:
        raise ValueError(f"no firmware port for {e.args[0]!r}") from None
    return [SOURCE_DIR / name for name in names]


def headers() -> list[Path]:
    """The public headers, ``include/kiln/*.h``, sorted by name."""
    return sorted((INCLUDE_DIR / "kiln").glob("*.h"))


def runtime_hash() -> str:
    """sha256 (hex) over every runtime source and header: relative path and contents, in sorted order."""
    h = hashlib.sha256()
    files = (
        p for p in ROOT.rglob("*") if p.suffix in (".c", ".h", ".S") and QEMU_PLUGIN_DIR not in p.parents
    )
    for path in sorted(files):
        rel = path.relative_to(ROOT).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()
