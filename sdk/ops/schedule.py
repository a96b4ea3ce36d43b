"""Which schedule record a lowering uses: operator instances, their keys, and schedule files.

The record itself (:class:`kiln.targets.schedule.Schedule`: GEMM register tiles and packing, im2col blocks,
pooling loop kinds) is data the target provides: its defaults come from the target's TOML file. This module
adds what only the operators know:

* an **instance key** names one operator instance stably, by operator, input types and the attributes that
  shape its loop nest, e.g. ``conv2d(float32[1,64,56,56], float32[64,64,3,3], float32[64]; dilations=1,1;
  groups=1; pads=1,1,1,1; strides=1,1)``. The same layer of a later compile (or of another model) has the same
  key, so a schedule file written for one compile applies to the next;
* a **schedule file** (JSON, :class:`ScheduleFile`) holds per-instance changes to the target's defaults, and
  optionally a ``default`` for every instance; :func:`apply_schedule_file` lays it over a target, which is
  how ``kiln compile --schedule`` and ``kiln.compile(..., schedule=...)`` reach the lowerings;
* :func:`schedule_for` is what a lowering calls; :func:`record_instances` lets a caller (the tuner, the
  driver's report of unmatched file entries) see which kernel got which instance key.

Schedule file format (version 1; ``tuning`` is free-form information, ignored when loading)::

    {"kiln_schedule": 1, "target": "x86_64-linux-avx512",
     "default": {"gemm": {"pack_min_k": 128}},
     "instances": {"matmul(float32[64,256], float32[256,512])": {"gemm": {"mr": 4, "nr": 48}}},
     "tuning": {...}}
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir import tensor as T
from ..targets import Target
from ..targets.schedule import Schedule, ScheduleError, check_changes, default_schedule

FORMAT_VERSION = 1

#: The operators that read a schedule record, and the sections each one reads.
SECTIONS: dict[str, tuple[str, ...]] = {
    "matmul": ("gemm",),
    "conv2d": ("gemm", "conv2d"),
    "max_pool2d": ("pool",),
    "avg_pool2d": ("pool",),
}

_RECORDERS: ContextVar[tuple[dict[str, str], ...]] = ContextVar("kiln_schedule_recorders", default=())
_KEY = re.compile(r"^([a-z_][a-z0-9_]*)\(.*\)$", re.S)


def _value(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(_value(x) for x in v)
    if isinstance(v, bool):
        return str(int(v))
    return str(v)


def instance_key(op: str, inputs: Sequence[tuple[Sequence[int], str]], attrs: Mapping[str, Any]) -> str:
    """The stable name of one operator instance: ``op(dtype[shape], ...; attr=value; ...)`` with the
    attributes sorted by name. Lowerings pass their canonical attributes (defaults filled in), so the key does
    not depend on how a frontend spelled them."""
    types = ", ".join(f"{dtype}[{','.join(str(int(d)) for d in shape)}]" for shape, dtype in inputs)
    extra = "".join(f"; {k}={_value(attrs[k])}" for k in sorted(attrs))
    return f"{op}({types}{extra})"


def schedule_for(
    ctx: Any, op: str, ins: Sequence[T.Buffer], attrs: Mapping[str, Any] | None = None
) -> Schedule:
    """The schedule record for this instance of ``op`` (``ctx`` is the lowering's
    :class:`kiln.ops.base.LowerContext`): the target's record for the instance's key if it has one, else the
    target's default (the generic defaults for 128-bit vectors without a target)."""
    key = instance_key(op, [(b.shape, b.dtype) for b in ins], attrs or {})
    for seen in _RECORDERS.get():
        seen[ctx.name] = key
    target: Target | None = ctx.target
    return target.schedule_for(key) if target is not None else default_schedule(128)


@contextlib.contextmanager
def record_instances() -> Iterator[dict[str, str]]:
    """Within the block, every lowering that reads a schedule records ``kernel name -> instance key`` into the
    yielded dict (the kernel name is the tensor function's, as profiles show it). Blocks nest: an outer
    recorder sees what inner ones see."""
    seen: dict[str, str] = {}
    token = _RECORDERS.set((*_RECORDERS.get(), seen))
    try:
        yield seen
    finally:
        _RECORDERS.reset(token)


def operator_of(key: str) -> str:
    m = _KEY.match(key)
    if not m:
        raise ScheduleError(f"instance key {key!r} is not of the form op(dtype[shape], ...; attr=value)")
    return m.group(1)


def parse_instance_key(key: str) -> tuple[str, list[tuple[str, tuple[int, ...]]], dict[str, tuple[int, ...]]]:
    """``(op, [(dtype, shape), ...], {attr: ints})`` of a key made by :func:`instance_key` (integer attributes
    only, as the scheduled operators have)."""
    op = operator_of(key)
    body = key[len(op) + 1 : -1]
    types, *attrs = body.split("; ")
    inputs = [
        (dt, tuple(int(d) for d in dims.split(",") if d))
        for dt, dims in re.findall(r"([a-z0-9_]+)\[([0-9,]*)\]", types)
    ]
    parsed: dict[str, tuple[int, ...]] = {}
    for a in attrs:
        name, _, value = a.partition("=")
        parsed[name] = tuple(int(v) for v in value.split(",") if v)
    return op, inputs, parsed


@dataclass
class ScheduleFile:
    """Per-instance schedule changes: ``instances`` maps instance keys to ``{section: {field: value}}``;
    ``default`` applies to every instance first. ``target`` names the target it was tuned for (informational
    but checked: a file tuned for another target is refused); ``tuning`` is free-form information."""

    instances: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    default: dict[str, dict[str, Any]] = field(default_factory=dict)
    target: str = ""
    tuning: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    @classmethod
    def from_json(cls, data: Any, source: str = "<dict>") -> ScheduleFile:
        """Validate a decoded schedule file; errors name the source, the instance and the field."""
        if not isinstance(data, Mapping):
            raise ScheduleError(f"{source}: a schedule file is a JSON object, got {type(data).__name__}")
        known = {"kiln_schedule", "target", "default", "instances", "tuning"}
        for k in data:
            if k not in known:
                raise ScheduleError(f"{source}: unknown key {k!r}; keys: {', '.join(sorted(known))}")
        version = data.get("kiln_schedule")
        if version != FORMAT_VERSION:
            raise ScheduleError(
                f"{source}: 'kiln_schedule' must be {FORMAT_VERSION} (the format version), got {version!r}"
            )
        target = data.get("target", "")
        if not isinstance(target, str):
            raise ScheduleError(f"{source}: 'target' must be a target name, got {target!r}")
        default = check_changes(data.get("default", {}), f"{source}: default")
        instances_in = data.get("instances", {})
        if not isinstance(instances_in, Mapping):
            raise ScheduleError(f"{source}: 'instances' must map instance keys to schedule tables")
        instances: dict[str, dict[str, dict[str, Any]]] = {}
        for key, table in instances_in.items():
            where = f"{source}: instance {key!r}"
            try:
                op = operator_of(key)
            except ScheduleError as e:
                raise ScheduleError(f"{source}: {e}") from None
            if op not in SECTIONS:
                raise ScheduleError(
                    f"{where}: operator {op!r} has no schedule; scheduled operators: {', '.join(SECTIONS)}"
                )
            instances[key] = check_changes(table, where, SECTIONS[op])
        tuning = data.get("tuning", {})
        if not isinstance(tuning, Mapping):
            raise ScheduleError(f"{source}: 'tuning' must be an object")
        return cls(instances, default, target, dict(tuning), source)

    @classmethod
    def load(cls, path: str | Path) -> ScheduleFile:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as e:
            raise ScheduleError(f"cannot read schedule file {p}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise ScheduleError(f"{p}: invalid JSON: {e}") from None
        return cls.from_json(data, str(p))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kiln_schedule": FORMAT_VERSION}
        if self.target:
            out["target"] = self.target
        if self.default:
            out["default"] = self.default
        out["instances"] = {k: self.instances[k] for k in sorted(self.instances)}
        if self.tuning:
            out["tuning"] = self.tuning
        return out

    def save(self, path: str | Path) -> None:
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(p)


def apply_schedule_file(target: Target, schedule: ScheduleFile | str | Path | Mapping[str, Any]) -> Target:
    """``target`` with the file's records: its default changes laid over the target's default, and one
    complete record per instance of the file (laid over that). A file tuned for another target is refused."""
    sf = (
        schedule
        if isinstance(schedule, ScheduleFile)
        else ScheduleFile.from_json(schedule)
        if isinstance(schedule, Mapping)
        else ScheduleFile.load(schedule)
    )
    if sf.target and sf.target != target.name:
        raise ScheduleError(
            f"{sf.source}: schedules tuned for target {sf.target!r} do not apply to {target.name!r} "
            "(tune again for this target, or remove the file's 'target' to use it anyway)"
        )
    base = target.schedule_for(None).with_changes(sf.default)
    own = {k: base.with_changes(v) for k, v in sf.instances.items()}
    kept = tuple((k, r) for k, r in target.schedule_instances if k not in own)
    return dataclasses.replace(target, schedule=base, schedule_instances=(*kept, *sorted(own.items())))


__all__ = [
    "SECTIONS",
    "ScheduleFile",
    "apply_schedule_file",
    "instance_key",
    "operator_of",
    "parse_instance_key",
    "record_instances",
    "schedule_for",
]
