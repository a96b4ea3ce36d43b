"""Targets: one TOML file per target or board, validated at load time.

A target says what the code generator and the toolchain need to know about a device: the LLVM triple, CPU and
features, the vector width generic passes schedule for, the OS (``linux`` or ``none`` for bare metal), the zig
target used to build the C runtime, and how to emulate it. Users add their own targets by dropping TOML files
into a directory named in ``KILN_TARGET_PATH`` (``os.pathsep``-separated); no SDK change is needed.

Hooks: a target adds passes to the default pipeline without forking it. A TOML file names them per phase of
the pipeline, ``hooks = { tensor_opt = ["my_pkg.my_module:my_pass"] }``; the target keeps them as data
(``Target.hook_specs``), and :mod:`kiln.transform.pipeline`, which owns the phases, checks the phase names
and loads the passes (docs/topics/passes.md).

Schedules: the tile sizes, packing thresholds and loop kinds of the GEMM, convolution and pooling schedules
are data (:mod:`kiln.targets.schedule`): a file's ``[schedule]`` table (``[schedule.gemm] mr = 6``) sets the
target's defaults over the generic ones for its vector width, validated here; per-operator-instance records
(a schedule file, ``kiln compile --schedule``) ride on the target as ``schedule_instances``
(:func:`kiln.ops.schedule.apply_schedule_file`).
"""

from __future__ import annotations

import os
import platform
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .board import BoardError, is_board, parse_board
from .schedule import Schedule, ScheduleError, default_schedule, parse_schedule_table

_REQUIRED = {
    "name": str,
    "triple": str,
    "cpu": str,
    "features": str,
    "vector_bits": int,
    "os": str,
    "zig_target": str,
}
_OPTIONAL: dict[str, tuple[type, Any]] = {
    "description": (str, ""),
    "float_abi": (str, "hard"),
    "zig_cpu": (str, ""),
    "emulator": (list, []),
    "emulator_package": (str, ""),
    "flash_bytes": (int, 0),
    "ram_bytes": (int, 0),
    "linker_script": (str, ""),
    "hooks": (dict, {}),
    "schedule": (dict, {}),
}


class TargetError(ValueError):
    """A target name is unknown or a target file is invalid."""


@dataclass(frozen=True)
class Target:
    name: str
    triple: str
    cpu: str
    features: str
    vector_bits: int
    os: str
    zig_target: str
    description: str = ""
    float_abi: str = "hard"
    zig_cpu: str = ""
    emulator: tuple[str, ...] = ()
    emulator_package: str = ""
    flash_bytes: int = 0
    ram_bytes: int = 0
    linker_script: str = ""
    #: (phase, ("module:function", ...)) pairs from the file's ``hooks`` table, sorted by phase.
    hook_specs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: The default schedule record (None: :func:`kiln.targets.schedule.default_schedule` for vector_bits).
    schedule: Schedule | None = None
    #: (operator instance key, schedule record) pairs that replace the default for those instances.
    schedule_instances: tuple[tuple[str, Schedule], ...] = ()
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def arch(self) -> str:
        return self.triple.split("-", 1)[0]

    @property
    def is_bare_metal(self) -> bool:
        return self.os == "none"

    @property
    def pointer_bits(self) -> int:
        """Width of a pointer (and of index arithmetic in generated code): 32 on Arm (AArch32), RV32, x86."""
        return 32 if self.arch.startswith(("arm", "thumb", "riscv32", "i386", "i686")) else 64

    @property
    def vector_lanes_f32(self) -> int:
        """How many float32 lanes one vector register holds (1 when the target has no vector unit)."""
        return max(1, self.vector_bits // 32)

    def schedule_for(self, instance: str | None = None) -> Schedule:
        """The schedule record of one operator instance (:func:`kiln.ops.schedule.instance_key`): its own
        record if it has one, else the target's default."""
        for key, record in self.schedule_instances:
            if key == instance:
                return record
        return self.schedule if self.schedule is not None else default_schedule(self.vector_bits)

    def runs_natively(self) -> bool:
        """True when the host can execute this target's Linux runner without an emulator."""
        host = platform.machine().lower()
        host = {"amd64": "x86_64", "arm64": "aarch64"}.get(host, host)
        if self.os != "linux" or platform.system() != "Linux" or self.arch != host:
            return False
        if self.arch == "x86_64":
            return _host_supports_x86_level(self.cpu)
        return True


def _host_supports_x86_level(cpu: str) -> bool:
    from kiln.targets.cpu import X86_LEVEL_FLAGS, cpuinfo_features  # the same tables check SSH boards

    try:
        flags = cpuinfo_features(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False
    return X86_LEVEL_FLAGS.get(cpu, frozenset()) <= flags


def _search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("KILN_TARGET_PATH", "").split(os.pathsep) if p]
    return [*dirs, Path(__file__).parent]


def parse_target(data: dict[str, Any], source: str = "<dict>") -> Target:
    """Validate one target table and build a :class:`Target`; errors name the file and the field."""
    kwargs: dict[str, Any] = {}
    for key, typ in _REQUIRED.items():
        if key not in data:
            raise TargetError(f"{source}: missing required field {key!r}")
        if not isinstance(data[key], typ):
            raise TargetError(f"{source}: field {key!r} must be a {typ.__name__}, got {data[key]!r}")
        kwargs[key] = data[key]
    for key, (typ, default) in _OPTIONAL.items():
        val = data.get(key, default)
        if not isinstance(val, typ):
            raise TargetError(f"{source}: field {key!r} must be a {typ.__name__}, got {val!r}")
        kwargs[key] = val
    if kwargs["os"] not in ("linux", "none"):
        raise TargetError(f"{source}: os must be 'linux' or 'none', got {kwargs['os']!r}")
    if kwargs["vector_bits"] < 0 or kwargs["vector_bits"] % 32:
        raise TargetError(f"{source}: vector_bits must be a non-negative multiple of 32")
    hooks = kwargs.pop("hooks")
    for phase, specs in hooks.items():
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise TargetError(f"{source}: hooks.{phase} must be a list of 'module:function' strings")
    kwargs["hook_specs"] = tuple((p, tuple(s)) for p, s in sorted(hooks.items()))
    try:
        kwargs["schedule"] = parse_schedule_table(kwargs["schedule"], kwargs["vector_bits"], "[schedule]")
    except ScheduleError as e:
        raise TargetError(f"{source}: {e}") from None
    kwargs["emulator"] = tuple(str(x) for x in kwargs["emulator"])
    if is_board(data):  # a board file: its memory map, UART, timer, ... (kiln.targets.board)
        try:
            parse_board(data, source)
        except BoardError as e:
            raise TargetError(str(e)) from None
    known = set(_REQUIRED) | set(_OPTIONAL)
    extra = {k: v for k, v in data.items() if k not in known}
    return Target(**kwargs, source=source, extra=extra)


def _load_all() -> dict[str, Target]:
    found: dict[str, Target] = {}
    for d in _search_dirs():
        for f in sorted(d.glob("*.toml")):
            try:
                data = tomllib.loads(f.read_text())
            except tomllib.TOMLDecodeError as e:
                raise TargetError(f"{f}: invalid TOML: {e}") from e
            t = parse_target(data, str(f))
            found.setdefault(t.name, t)  # earlier directories (user ones) win
    return found


def list_targets() -> list[Target]:
    return sorted(_load_all().values(), key=lambda t: t.name)


def native_target(targets: dict[str, Target] | None = None) -> Target:
    """The Linux target that makes the most of this host: of those whose runner runs here without an
    emulator, the one with the widest vectors (then the first by name)."""
    found = [t for t in (targets or _load_all()).values() if t.runs_natively()]
    if not found:
        raise TargetError(
            f"no target runs natively on this {platform.machine()} host; pick one with `kiln targets`"
        )
    return min(found, key=lambda t: (-t.vector_bits, t.name))


def get_target(target: str | Target) -> Target:
    """Look a target up by name (or pass a Target through); ``native`` is :func:`native_target`. Unknown
    names list the known ones."""
    if isinstance(target, Target):
        return target
    targets = _load_all()
    if target == "native":
        return native_target(targets)
    if target not in targets:
        raise TargetError(
            f"unknown target {target!r}; known targets: native, {', '.join(sorted(targets))} "
            "(add your own TOML file to a directory in KILN_TARGET_PATH)"
        )
    return targets[target]


def emulator_available(t: Target) -> bool:
    return bool(t.emulator) and shutil.which(t.emulator[0]) is not None


__all__ = [
    "Target",
    "TargetError",
    "emulator_available",
    "get_target",
    "list_targets",
    "native_target",
    "parse_target",
]
