"""Per-kernel profiles: the records a PROFILE request returns, aggregated rows, and Chrome trace JSON.

A :class:`Profile` holds one record per kernel call of one run, in call order, with start/end in device
ticks. :meth:`Profile.rows` aggregates them per kernel; :meth:`Profile.chrome_trace` gives the Trace Event
Format (complete events, ``ph: "X"``, microseconds) that chrome://tracing and https://ui.perfetto.dev open.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class KernelCall:
    """One kernel call: ``kernel`` is the index into the model's kernel names; ticks are device ticks."""

    kernel: int
    name: str
    start: int
    end: int


@dataclass(frozen=True)
class KernelStats:
    """Aggregate of all calls of one kernel in a run (seconds; ``percent`` of the summed kernel time)."""

    kernel: str
    calls: int
    total_s: float
    mean_s: float
    min_s: float
    max_s: float
    percent: float


@dataclass
class Profile:
    """Kernel calls of one profiled run. ``dropped`` counts calls the device's record buffer had no room
    for (they are missing from ``calls``)."""

    calls: list[KernelCall]
    ticks_per_second: int
    dropped: int = 0
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def seconds(self, call: KernelCall) -> float:
        return (call.end - call.start) / self.ticks_per_second

    @property
    def total_s(self) -> float:
        """Summed duration of all recorded kernel calls."""
        return sum(self.seconds(c) for c in self.calls)

    def rows(self) -> list[KernelStats]:
        """One row per kernel, the most expensive first."""
        per: dict[str, list[float]] = {}
        for c in self.calls:
            per.setdefault(c.name, []).append(self.seconds(c))
        total = self.total_s or 1.0
        rows = [
            KernelStats(name, len(t), sum(t), sum(t) / len(t), min(t), max(t), 100.0 * sum(t) / total)
            for name, t in per.items()
        ]
        return sorted(rows, key=lambda r: (-r.total_s, r.kernel))

    def table(self) -> str:
        """The rows as a fixed-width text table (times in microseconds)."""
        rows = self.rows()
        width = max([len("kernel"), *(len(r.kernel) for r in rows)])
        lines = [
            f"{'kernel':<{width}}  {'calls':>6}  {'total us':>11}  {'mean us':>10}  {'min us':>10}  {'%':>6}"
        ]
        for r in rows:
            lines.append(
                f"{r.kernel:<{width}}  {r.calls:>6}  {r.total_s * 1e6:>11.2f}  {r.mean_s * 1e6:>10.2f}  "
                f"{r.min_s * 1e6:>10.2f}  {r.percent:>6.1f}"
            )
        lines.append(f"{'total':<{width}}  {len(self.calls):>6}  {self.total_s * 1e6:>11.2f}")
        if self.dropped:
            lines.append(f"({self.dropped} calls were not recorded: the device's profile buffer was full)")
        return "\n".join(lines)

    def chrome_trace(self) -> dict[str, Any]:
        """Trace Event Format: one complete event per call, times in microseconds from the first call."""
        t0 = min((c.start for c in self.calls), default=0)
        us = 1e6 / self.ticks_per_second
        events: list[dict[str, Any]] = [
            {
                "name": "process_name",
                "ph": "M",
                "pid": 1,
                "tid": 1,
                "args": {"name": self.model or "kiln model"},
            }
        ]
        for i, c in enumerate(self.calls):
            events.append(
                {
                    "name": c.name,
                    "cat": "kernel",
                    "ph": "X",
                    "ts": (c.start - t0) * us,
                    "dur": (c.end - c.start) * us,
                    "pid": 1,
                    "tid": 1,
                    "args": {"kernel": c.kernel, "call": i},
                }
            )
        return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"dropped_calls": self.dropped}}

    def write_chrome_trace(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.chrome_trace()))
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": [asdict(c) for c in self.calls],
            "ticks_per_second": self.ticks_per_second,
            "dropped": self.dropped,
            "model": self.model,
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(
            calls=[KernelCall(**c) for c in data["calls"]],
            ticks_per_second=int(data["ticks_per_second"]),
            dropped=int(data.get("dropped", 0)),
            model=str(data.get("model", "")),
            meta=dict(data.get("meta", {})),
        )


@dataclass(frozen=True)
class InstructionCounts:
    """Guest instructions executed by one counted run under QEMU (:mod:`kiln.device.icount`): per kernel
    (including its outlined parallel bodies), and ``total`` for the whole runner process (start-up, the
    device protocol, the runtime between kernels: this part can vary with how the host delivers the
    protocol's bytes; the kernels' counts cannot)."""

    kernels: dict[str, int]
    total: int
    model: str = ""
    target: str = ""

    @property
    def kernel_total(self) -> int:
        """The instructions of all kernels."""
        return sum(self.kernels.values())

    def top(self, n: int | None = None) -> list[tuple[str, int]]:
        """``(kernel, count)``, the largest first (ties by name); the first ``n`` when given."""
        rows = sorted(self.kernels.items(), key=lambda kv: (-kv[1], kv[0]))
        return rows if n is None else rows[:n]

    def table(self) -> str:
        """Per-kernel counts (largest first), the kernels' sum and the process total, as fixed-width text."""
        rows = self.top()
        width = max([len("kernels"), len("process total"), *(len(k) for k, _ in rows)])
        ksum = self.kernel_total or 1
        lines = [f"{'kernel':<{width}}  {'instructions':>15}  {'%':>6}"]
        lines += [f"{k:<{width}}  {c:>15,}  {100.0 * c / ksum:>6.1f}" for k, c in rows]
        lines.append(f"{'kernels':<{width}}  {self.kernel_total:>15,}  {100.0:>6.1f}")
        lines.append(f"{'process total':<{width}}  {self.total:>15,}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
