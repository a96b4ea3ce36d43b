"""onnxruntime as the benchmarks' peer, timed the way kiln's TIME message times; and a cache flush for
cold-cache measurements of both."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FLUSH_BYTES = 128 << 20  # well over any L3 of the machines this runs on (32 MiB here)
_flush_buffer: np.ndarray | None = None


def flush_caches() -> None:
    """Evicts the caches of this core (and the shared L3) by writing and reading a buffer larger than them.

    A process started from this one on the same core (pin with ``os.sched_setaffinity``) loses its cached data
    too, so the next run of a kernel reads its weights and activations from DRAM."""
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = np.zeros(FLUSH_BYTES // 8, dtype=np.int64)
    _flush_buffer += 1
    int(_flush_buffer.sum())


def ort_session(model: Path | bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"]
    )


def ort_times(
    model: Path | bytes, inputs: dict[str, np.ndarray], number: int, repeat: int, threads: int = 1
) -> list[float]:
    """The mean of ``number`` runs (seconds) for each of ``repeat`` repeats, after a warm-up run."""
    sess = ort_session(model, threads)
    sess.run(None, inputs)
    means = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            sess.run(None, inputs)
        means.append((time.perf_counter() - t0) / number)
    return means


def ort_latency(model: Path | bytes, inputs: dict[str, np.ndarray], number: int, repeat: int) -> float:
    """Median over ``repeat`` repeats of the mean of ``number`` runs (seconds), one thread, after a warm-up."""
    return statistics.median(ort_times(model, inputs, number, repeat))


def cold_times(run: Callable[[], float], repeat: int) -> list[float]:
    """``repeat`` cold-cache durations: :func:`flush_caches`, then ``run()`` (which returns its seconds)."""
    out = []
    for _ in range(repeat):
        flush_caches()
        out.append(run())
    return out


def ort_cold_times(model: Path | bytes, inputs: dict[str, np.ndarray], repeat: int) -> list[float]:
    """Seconds of single one-thread runs, each after :func:`flush_caches`."""
    sess = ort_session(model, 1)
    sess.run(None, inputs)

    def once() -> float:
        t0 = time.perf_counter()
        sess.run(None, inputs)
        return time.perf_counter() - t0

    return cold_times(once, repeat)
