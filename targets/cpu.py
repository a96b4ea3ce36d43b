"""Can a machine run a target's code? Its ``uname -m`` and the CPU features its ``/proc/cpuinfo`` lists.

A Linux runner built for a target executes on a machine whose architecture matches the target's triple and
whose CPU has every feature the generated code may use: for x86-64 the micro-architecture level named by the
target's ``cpu`` (``x86-64-v3``: AVX2 and FMA), for AArch64, ARMv7 and RISC-V the ``+feature`` entries of its
``features`` that ``/proc/cpuinfo`` can show. A runner started on a machine without them dies of SIGILL;
:func:`cannot_run` says why beforehand. The host itself (:meth:`kiln.targets.Target.runs_natively`) and
boards reached over SSH (:mod:`kiln.device.ssh`) are checked with the same tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.targets import Target

#: /proc/cpuinfo ``flags`` an x86-64 CPU needs, per micro-architecture level (the target's ``cpu``).
X86_LEVEL_FLAGS: dict[str, frozenset[str]] = {
    "x86-64-v4": frozenset({"avx512f", "avx512bw", "avx512vl", "avx2", "fma"}),
    "x86-64-v3": frozenset({"avx2", "fma"}),
}

#: LLVM feature (as in a target's ``features``) -> the /proc/cpuinfo ``Features`` word showing it, per
#: architecture. Features not listed here cannot be seen in /proc/cpuinfo and are not checked.
CPUINFO_NAMES: dict[str, dict[str, str]] = {
    "aarch64": {
        "neon": "asimd",
        "fp-armv8": "fp",
        "crc": "crc32",
        "aes": "aes",
        "sha2": "sha2",
        "lse": "atomics",
        "rcpc": "lrcpc",
        "dotprod": "asimddp",
        "fullfp16": "asimdhp",
        "i8mm": "i8mm",
        "bf16": "bf16",
        "sve": "sve",
        "sve2": "sve2",
    },
    "armv7": {"neon": "neon", "vfp3": "vfpv3", "vfp4": "vfpv4"},
}

#: ``uname -m`` spellings of each target architecture (the first word of the triple). An AArch64 kernel
#: usually runs 32-bit ARM code too, but not every core can: armv7 runners are tried there unchecked.
MACHINES: dict[str, frozenset[str]] = {
    "x86_64": frozenset({"x86_64", "amd64"}),
    "aarch64": frozenset({"aarch64", "arm64"}),
    "armv7": frozenset({"armv7l", "armv8l", "aarch64", "arm64"}),
    "riscv64": frozenset({"riscv64"}),
}


def cpuinfo_features(cpuinfo: str) -> frozenset[str]:
    """The CPU features /proc/cpuinfo text lists: x86 ``flags``, Arm ``Features``, and for RISC-V the
    single-letter extensions of ``isa`` (``rv64imafdcv_zicsr`` -> i m a f d c v; ``g`` is imafd). Only the
    first processor's entry is read."""
    out: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or key not in ("flags", "features", "isa"):
            continue
        if key == "isa":
            base = value.strip().lower().split("_", 1)[0]
            letters = base[4:] if base.startswith(("rv32", "rv64")) else ""
            out.update(letters.replace("g", "imafd"))
        else:
            out.update(value.split())
        return frozenset(out)
    return frozenset(out)


def required_features(target: Target) -> frozenset[str]:
    """What /proc/cpuinfo must show on a machine that runs ``target``'s code (names as cpuinfo spells
    them)."""
    arch = target.arch
    if arch == "x86_64":
        return X86_LEVEL_FLAGS.get(target.cpu, frozenset())
    wanted = [f[1:] for f in target.features.split(",") if f.strip().startswith("+")]
    if arch == "riscv64":
        return frozenset(f for f in wanted if len(f) == 1)
    names = CPUINFO_NAMES.get(arch, {})
    return frozenset(names[f] for f in wanted if f in names)


def cannot_run(target: Target, machine: str, cpuinfo: str | None) -> str | None:
    """Why a Linux machine (``uname -m``, ``/proc/cpuinfo`` text or None if unknown) cannot run
    ``target``'s runner, as a phrase ("its CPU lacks avx512f, ..."); None if it can."""
    if target.os != "linux":
        return f"{target.name} is a bare-metal target (no Linux runner)"
    machine = machine.strip().lower()
    if machine not in MACHINES.get(target.arch, frozenset({target.arch})):
        return f"it is {machine} (uname -m) and {target.name} code is {target.arch}"
    if target.arch == "armv7" and machine in MACHINES["aarch64"]:
        return None  # 32-bit code on a 64-bit kernel: Features lists the AArch64 names, nothing to compare
    need = required_features(target)
    if not need:
        return None
    if cpuinfo is None:
        return f"its /proc/cpuinfo cannot be read, so the CPU features {target.name} needs are unknown"
    missing = sorted(need - cpuinfo_features(cpuinfo))
    if missing:
        level = f" ({target.cpu})" if target.arch == "x86_64" else ""
        return f"its CPU lacks {', '.join(missing)} (per /proc/cpuinfo), which {target.name}{level} needs"
    return None


__all__ = [
    "CPUINFO_NAMES",
    "MACHINES",
    "X86_LEVEL_FLAGS",
    "cannot_run",
    "cpuinfo_features",
    "required_features",
]
