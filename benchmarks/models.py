"""kiln vs onnxruntime latency on x86-64 at 1 and 2 threads: the benchmark set, one table.

    python benchmarks/models.py [--target native] [--models resnet18,vit_b16,...] [--number 3] [--repeat 5]

The set (the default ``--models``): the nine light models of the ONNX zoo with random weights
(tests/models.py ``light_random_path``) and the real-size PyTorch-built ones (tests/models.py ``BENCH_MODELS``:
ResNet-18, MobileNetV2, EfficientNet-B0-, ConvNeXt-Tiny- and ViT-B/16-style nets at 224x224, a 6-layer encoder
with an attention mask, an MLP at batch 1 and 64). The small test models (``TORCH_MODELS``) can be named too.

Per model: the compile time (``kiln.compile``, seconds, wall clock); kiln's latency measured by the runtime's own
timer on the device (TIME message: one figure per repeat, the mean of ``number`` runs) and onnxruntime's around
``session.run`` in this process (same statistics), each printed as the median over repeats and [min-max]; at
1 thread and at 2 (kiln: ``open_session(threads=2)``; onnxruntime: ``intra_op_num_threads=2``); the ratios
kiln / onnxruntime at each thread count (below 1: kiln is faster), and their geometric means at the end.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ort_timing import ort_times  # noqa: E402

import kiln  # noqa: E402
import kiln.targets  # noqa: E402
import models  # noqa: E402  (tests/models.py builds the model files)
from kiln.package import Package  # noqa: E402

HEADLINE = (*models.LIGHT_MODELS, *models.BENCH_MODELS)
KILN_THREADS = "threads" in inspect.signature(Package.open_session).parameters


def model_path(name: str) -> Path:
    if name in models.BENCH_MODELS or name in models.TORCH_MODELS:
        return models.torch_onnx_path(name)
    if name in models.LIGHT_MODELS:
        return models.light_random_path(name)
    raise SystemExit(
        f"unknown model {name!r}: pick from {', '.join(HEADLINE)} (or the small {', '.join(models.TORCH_MODELS)})"
    )


def kiln_times(pkg: Package, x: dict[str, np.ndarray], threads: int, number: int, repeat: int) -> list[float]:
    with pkg.open_session(threads=threads) if KILN_THREADS else pkg.open_session() as sess:
        sess.run(x)
        return sess.time(number=number, repeat=repeat)


def cell(times: list[float] | None) -> str:
    """``median [min-max]`` in ms, or n/a."""
    if not times:
        return f"{'n/a':>22}"
    return f"{ms(statistics.median(times))} [{ms(min(times))}-{ms(max(times))}]".rjust(22)


def ms(seconds: float) -> str:
    v = seconds * 1e3
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def ratio(a: list[float] | None, b: list[float]) -> float | None:
    return statistics.median(a) / statistics.median(b) if a else None


def geomean(xs: list[float]) -> float:
    return float(np.exp(np.mean(np.log(xs))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="native", help="default: the best target this host runs natively")
    ap.add_argument("--models", default=",".join(HEADLINE))
    ap.add_argument("--number", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    target = kiln.targets.get_target(args.target).name
    names = [n for n in args.models.split(",") if n]
    paths = {n: model_path(n) for n in names}
    print(f"target {target}; ms: median [min-max] over {args.repeat} repeats of {args.number} runs")
    print(
        f"{'model':16} {'compile s':>9} {'kiln 1 thread':>22} {'kiln 2 threads':>22} {'ort 1 thread':>22}"
        f" {'ort 2 threads':>22} {'k/o 1t':>7} {'k/o 2t':>7}"
    )
    r1: list[float] = []
    r2: list[float] = []
    for name in names:
        path = paths[name]
        x = models.inputs_for(path)
        t0 = time.perf_counter()
        pkg = kiln.compile(str(path), target)
        compile_s = time.perf_counter() - t0
        k1 = kiln_times(pkg, x, 1, args.number, args.repeat)
        k2 = kiln_times(pkg, x, 2, args.number, args.repeat) if KILN_THREADS else None
        o1 = ort_times(path, x, args.number, args.repeat, threads=1)
        o2 = ort_times(path, x, args.number, args.repeat, threads=2)
        a, b = ratio(k1, o1), ratio(k2, o2)
        assert a is not None
        r1.append(a)
        if b is not None:
            r2.append(b)
        b_txt = f"{b:7.2f}" if b is not None else f"{'n/a':>7}"
        print(
            f"{name:16} {compile_s:9.1f} {cell(k1)} {cell(k2)} {cell(o1)} {cell(o2)} {a:7.2f} {b_txt}",
            flush=True,
        )
    g2 = f"{geomean(r2):7.2f}" if r2 else f"{'n/a':>7}"
    print(f"{'geomean':16} {'':9} {'':22} {'':22} {'':22} {'':22} {geomean(r1):7.2f} {g2}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
