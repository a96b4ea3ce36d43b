"""onnxruntime as the benchmarks' peer: single-threaded sessions timed the way kiln's TIME message times."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def ort_latency(model: Path | bytes, inputs: dict[str, np.ndarray], number: int, repeat: int) -> float:
    """Median over ``repeat`` repeats of the mean of ``number`` runs (seconds), one thread, after a warm-up."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"]
    )
    sess.run(None, inputs)
    means = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            sess.run(None, inputs)
        means.append((time.perf_counter() - t0) / number)
    return statistics.median(means)
