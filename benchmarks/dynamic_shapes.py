"""What run-time sizes cost: one package compiled with a run-time sequence length (or image size) against
packages compiled for each fixed size, and onnxruntime on the same dynamic-axis model, one thread each.

    python benchmarks/dynamic_shapes.py [--target native] [--seqs 7,64,128,512] [--images 64,128,224]

The models are tests/models.py's ``bert_dyn`` (a 2-layer BERT-style encoder, d_model 64) and ``cnn_dyn`` (a
small CNN). Per size: the dynamic package's median ms, the fixed-size package's, their ratio, onnxruntime's and
kiln dynamic / onnxruntime. Medians of 5 repeats (each at least 100 ms); these machines are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import kiln  # noqa: E402
import models  # noqa: E402


def _ort_ms(path: Path, feed: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    sess.run(None, feed)
    times = []
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.1:
            sess.run(None, feed)
            n += 1
        times.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(times)


def _kiln_ms(session: kiln.device.Executable, feed: dict[str, np.ndarray]) -> float:
    session.run(feed)
    return statistics.median(session.time(number=1, repeat=5, min_repeat_ms=100)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="native")
    ap.add_argument("--seqs", default="7,64,128,512")
    ap.add_argument("--images", default="64,128,224")
    opts = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    cases = [
        (
            "bert_dyn",
            {"ids": (1, f"seq:{models.DYNAMIC_SEQ_MAX}"), "mask": (1, f"seq:{models.DYNAMIC_SEQ_MAX}")},
            [
                (f"seq {n}", {"ids": rng.integers(0, 100, (1, n)), "mask": np.ones((1, n), np.float32)})
                for n in map(int, opts.seqs.split(","))
            ],
        ),
        (
            "cnn_dyn",
            {"x": (1, 3, "h:224", "w:224")},
            [
                (f"{n}x{n}", {"x": rng.standard_normal((1, 3, n, n)).astype(np.float32)})
                for n in map(int, opts.images.split(","))
            ],
        ),
    ]
    for name, shapes, feeds in cases:
        path = models.dynamic_onnx_path(name)
        dyn = kiln.compile(path, opts.target, shapes=shapes, threads=1)
        with dyn.open_session() as session:
            for label, feed in feeds:
                fixed_shapes = {k: tuple(int(d) for d in v.shape) for k, v in feed.items()}
                with kiln.compile(path, opts.target, shapes=fixed_shapes, threads=1).open_session() as fixed:
                    f_ms = _kiln_ms(fixed, feed)
                d_ms = _kiln_ms(session, feed)
                o_ms = _ort_ms(path, feed)
                rows.append((name, label, d_ms, f_ms, o_ms))
    print(f"target {kiln.targets.get_target(opts.target).name}, one thread, median ms")
    print(f"{'model':10} {'size':10} {'dynamic':>9} {'fixed':>9} {'dyn/fixed':>9} {'ort':>9} {'dyn/ort':>8}")
    for name, label, d_ms, f_ms, o_ms in rows:
        print(
            f"{name:10} {label:10} {d_ms:9.3f} {f_ms:9.3f} {d_ms / f_ms:9.2f} {o_ms:9.3f} {d_ms / o_ms:8.2f}"
        )


if __name__ == "__main__":
    main()
