"""Schedule records: the tile sizes, packing thresholds and loop kinds of kiln's CPU schedules, as data.

A :class:`Schedule` holds one section per schedule family (fields and bounds in :data:`FIELDS`):

* ``gemm`` (the register-tiled GEMM shared by conv2d and matmul, :mod:`kiln.ops.gemm_kernel`): register tile
  ``mr`` rows x ``nr`` columns, when to pack column panels of B (``pack``: ``auto`` uses the thresholds
  ``pack_min_row_tiles`` and ``pack_min_k``), when a matrix-vector product streams B (``stream_min_tiles``,
  ``stream_columns``), and whether the tile's rows are unrolled and its columns vectorized;
* ``conv2d`` (:mod:`kiln.ops.conv2d`): the im2col block size (``col_block_bytes``, ``min_block_columns``) and
  the K from which a block's column panels are packed (``pack_min_k``);
* ``pool`` (:mod:`kiln.ops.pool`): for integer average pooling, whether the output row loop is vectorized and
  the window taps unrolled (max pooling and float average pooling always run SIMD row kernels).

A target's defaults are :func:`default_schedule` for its vector width with its TOML file's ``[schedule]``
table laid over them (``[schedule.gemm] mr = 6``); :func:`parse_schedule_table` validates that table (and the
sections of a schedule file, :mod:`kiln.ops.schedule`) and names the offending field in its errors. This
module is data only: which operators read which section, and per-instance overrides, live in
:mod:`kiln.ops.schedule`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ScheduleError(ValueError):
    """A schedule table or file is invalid; the message names the place and the field."""


@dataclass(frozen=True)
class FieldSpec:
    """One schedule field: its type (``int``, ``bool`` or ``str``), bounds or choices, and what it does."""

    type: type
    doc: str
    lo: int = 0
    hi: int | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any, where: str) -> Any:
        if self.type is bool:
            if not isinstance(value, bool):
                raise ScheduleError(f"{where} must be true or false, got {value!r}")
            return value
        if self.type is str:
            if not isinstance(value, str) or value not in self.choices:
                raise ScheduleError(
                    f"{where} must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
                )
            return value
        bounds = f"from {self.lo} to {self.hi}" if self.hi is not None else f">= {self.lo}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScheduleError(f"{where} must be an integer {bounds}, got {value!r}")
        if value < self.lo or (self.hi is not None and value > self.hi):
            raise ScheduleError(f"{where} must be an integer {bounds}, got {value}")
        return value

    def describe(self) -> str:
        if self.type is bool:
            return "true/false"
        if self.type is str:
            return " | ".join(self.choices)
        return f"integer {self.lo}..{self.hi}" if self.hi is not None else f"integer >= {self.lo}"


#: Every section and field of a schedule record, with its type, bounds and meaning.
FIELDS: dict[str, dict[str, FieldSpec]] = {
    "gemm": {
        "mr": FieldSpec(int, "rows of A per register tile (accumulator rows)", 1, 32),
        "nr": FieldSpec(
            int, "columns of B and C per register tile, in elements (a multiple of the lanes)", 1, 512
        ),
        "pack": FieldSpec(
            str,
            "pack column panels of B into contiguous scratch: auto (by the thresholds and the caller's "
            "hint), always, never",
            choices=("auto", "always", "never"),
        ),
        "pack_min_row_tiles": FieldSpec(int, "auto packing: at least this many row tiles reuse a panel", 1),
        "pack_min_k": FieldSpec(int, "auto packing: K at least this", 0),
        "stream_min_tiles": FieldSpec(
            int, "fewer rows than mr: stream B when it is at least this many tiles wide", 0
        ),
        "stream_columns": FieldSpec(int, "streaming: columns per block", 1, 1 << 16),
        "unroll_rows": FieldSpec(bool, "unroll the rows of a tile (one broadcast of A per row)"),
        "vectorize_columns": FieldSpec(bool, "vectorize the columns of a tile"),
    },
    "conv2d": {
        "col_block_bytes": FieldSpec(int, "im2col scratch per block of output rows, in bytes", 1),
        "min_block_columns": FieldSpec(
            int, "im2col: at least this many columns (output pixels) per block", 1
        ),
        "pack_min_k": FieldSpec(int, "im2col blocks: pack B panels when K is at least this", 0),
    },
    "pool": {
        "vectorize": FieldSpec(bool, "vectorize the loop over the output row (integer average pooling)"),
        "unroll_taps": FieldSpec(bool, "unroll the loops over the window's taps"),
    },
}


@dataclass(frozen=True)
class GemmSchedule:
    mr: int = 6
    nr: int = 8
    pack: str = "auto"
    pack_min_row_tiles: int = 4
    pack_min_k: int = 64
    stream_min_tiles: int = 4
    stream_columns: int = 512
    unroll_rows: bool = True
    vectorize_columns: bool = True


@dataclass(frozen=True)
class Conv2dSchedule:
    col_block_bytes: int = 512 * 1024  # fits the L2 cache of the CPUs kiln targets, beside the weights' panel
    min_block_columns: int = 128  # narrower GEMMs spend too much of their time in edge tiles
    # A block of col is compact and in cache; its column panels are worth packing only when they are long
    # (measured on AVX-512: K = 576 lost 5% by packing, K = 2304 gained 12%).
    pack_min_k: int = 1024


@dataclass(frozen=True)
class PoolSchedule:
    vectorize: bool = False
    unroll_taps: bool = False


@dataclass(frozen=True)
class Schedule:
    """A complete schedule record: one value for every field of :data:`FIELDS`."""

    gemm: GemmSchedule = field(default_factory=GemmSchedule)
    conv2d: Conv2dSchedule = field(default_factory=Conv2dSchedule)
    pool: PoolSchedule = field(default_factory=PoolSchedule)

    def with_changes(self, changes: Mapping[str, Mapping[str, Any]]) -> Schedule:
        """This record with ``{section: {field: value}}`` changed (values already validated)."""
        if not changes:
            return self
        sections = {s: dataclasses.replace(getattr(self, s), **dict(v)) for s, v in changes.items() if v}
        return dataclasses.replace(self, **sections)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in FIELDS}

    def diff(self, base: Schedule) -> dict[str, dict[str, Any]]:
        """The fields whose values differ from ``base``, as ``{section: {field: value}}``."""
        mine, theirs = self.as_dict(), base.as_dict()
        out = {s: {f: v for f, v in mine[s].items() if theirs[s][f] != v} for s in FIELDS}
        return {s: v for s, v in out.items() if v}


def default_schedule(vector_bits: int) -> Schedule:
    """The generic defaults for a target with ``vector_bits``-wide vectors: GEMM tiles of 6 rows x 2 vectors
    (12 accumulator registers, plus 2 for B and 1 broadcast: fits the 16 vector registers of AVX2 and Armv7
    NEON and leaves room on 32-register machines); 4 x 4 scalars on targets without a vector unit."""
    lanes = max(1, vector_bits // 32)
    mr, nr = (6, 2 * lanes) if lanes > 1 else (4, 4)
    return Schedule(gemm=GemmSchedule(mr=mr, nr=nr))


def _unknown(kind: str, name: str, known: list[str], where: str) -> ScheduleError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ScheduleError(f"{where}: unknown {kind} {name!r}{hint}; {kind}s: {', '.join(known)}")


def check_changes(
    table: Any, where: str, sections: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """Validate ``{section: {field: value}}`` (a ``[schedule]`` table or one entry of a schedule file) and
    return it as plain dicts. ``sections`` limits the sections allowed (those that apply to an operator)."""
    if not isinstance(table, Mapping):
        raise ScheduleError(f"{where} must be a table of sections ({', '.join(FIELDS)}), got {table!r}")
    allowed = list(sections if sections is not None else FIELDS)
    out: dict[str, dict[str, Any]] = {}
    for sec, values in table.items():
        if sec not in FIELDS:
            raise _unknown("section", str(sec), list(FIELDS), where)
        if sec not in allowed:
            raise ScheduleError(
                f"{where}: section {sec!r} does not apply here; it takes {', '.join(allowed)}"
            )
        if not isinstance(values, Mapping):
            raise ScheduleError(f"{where}.{sec} must be a table of fields, got {values!r}")
        specs = FIELDS[sec]
        out[sec] = {}
        for name, value in values.items():
            if name not in specs:
                raise _unknown("field", str(name), list(specs), f"{where}.{sec}")
            out[sec][name] = specs[name].check(value, f"{where}.{sec}.{name}")
    return out


def parse_schedule_table(table: Any, vector_bits: int, where: str = "[schedule]") -> Schedule:
    """A target's schedule: :func:`default_schedule` for ``vector_bits`` with ``table`` (its TOML file's
    ``[schedule]`` table, possibly empty) laid over it. Raises :class:`ScheduleError` naming the field."""
    return default_schedule(vector_bits).with_changes(check_changes(table, where))


__all__ = [
    "FIELDS",
    "Conv2dSchedule",
    "FieldSpec",
    "GemmSchedule",
    "PoolSchedule",
    "Schedule",
    "ScheduleError",
    "check_changes",
    "default_schedule",
    "parse_schedule_table",
]
