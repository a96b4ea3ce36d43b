"""What a board can run, from its ``uname -m`` and ``/proc/cpuinfo`` (kiln.targets.cpu), on the cpuinfo texts
of real boards: the SSH tests' board is this machine, so the other architectures are checked here."""

from __future__ import annotations

import pytest

from kiln.targets import get_target
from kiln.targets.cpu import cannot_run, cpuinfo_features

PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

processor\t: 1
Features\t: fp asimd evtstrm crc32 cpuid

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
VISIONFIVE2 = (
    "processor\t: 0\nhart\t\t: 1\nisa\t\t: rv64imafdc_zicntr_zicsr_zifencei_zihpm_zba_zbb\nmmu\t\t: sv39\n"
)
RVV_BOARD = "processor\t: 0\nisa\t\t: rv64gcv_zba\n"
OLD_X86 = (
    "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i7-3770\nflags\t\t: fpu sse sse2 ssse3 sse4_1 avx\n"
)
ARMV7 = "processor\t: 0\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt\n"


def test_cpuinfo_features_per_architecture() -> None:
    assert cpuinfo_features(PI4) == {"fp", "asimd", "evtstrm", "crc32", "cpuid"}
    assert cpuinfo_features(VISIONFIVE2) == set("imafdc")
    assert cpuinfo_features(RVV_BOARD) == set("imafdcv")
    assert "avx2" not in cpuinfo_features(OLD_X86) and "avx" in cpuinfo_features(OLD_X86)


@pytest.mark.parametrize(
    ("target", "machine", "cpuinfo", "reason"),
    [
        ("aarch64-linux", "aarch64", PI4, None),
        ("armv7-linux", "aarch64", PI4, None),  # 32-bit code on a 64-bit kernel
        ("armv7-linux", "armv7l", ARMV7, None),
        ("riscv64-linux", "riscv64", VISIONFIVE2, None),
        ("riscv64-linux-rvv", "riscv64", VISIONFIVE2, "its CPU lacks v (per /proc/cpuinfo)"),
        ("riscv64-linux-rvv", "riscv64", RVV_BOARD, None),
        (
            "x86_64-linux",
            "x86_64",
            OLD_X86,
            "its CPU lacks avx2, fma (per /proc/cpuinfo), which x86_64-linux",
        ),
        ("x86_64-linux", "aarch64", PI4, "it is aarch64 (uname -m) and x86_64-linux code is x86_64"),
        ("aarch64-linux", "armv7l", ARMV7, "it is armv7l (uname -m)"),
        ("aarch64-linux", "aarch64", "processor: 0\nFeatures: fp evtstrm\n", "its CPU lacks asimd"),
    ],
)
def test_cannot_run(target: str, machine: str, cpuinfo: str, reason: str | None) -> None:
    got = cannot_run(get_target(target), machine, cpuinfo)
    assert got == reason if reason is None else got is not None and got.startswith(reason)
