"""kiln vs onnxruntime latency on x86-64, single-threaded, for the light models and the PyTorch-built ones.

    python benchmarks/models.py [--target native] [--models squeezenet,resnet50,...] [--repeat 5]

kiln's latency is measured by the runtime's own timer on the device (TIME message: median over repeats of the
mean of ``number`` runs); onnxruntime's by timing ``session.run`` in this process (same statistics). Ratio =
kiln / onnxruntime (below 1 means kiln is faster). Light models use their random-weights variants.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ort_timing import ort_latency  # noqa: E402

import kiln  # noqa: E402
import kiln.targets  # noqa: E402
import models  # noqa: E402  (tests/models.py builds the model files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="native", help="default: the best target this host runs natively")
    ap.add_argument("--models", default=",".join([*models.LIGHT_MODELS, *models.TORCH_MODELS]))
    ap.add_argument("--number", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    target = kiln.targets.get_target(args.target).name
    print(f"{'model':16} {'kiln ms':>10} {'onnxruntime ms':>15} {'ratio':>7}   (target {target}, 1 thread)")
    ratios = []
    for name in args.models.split(","):
        path = models.torch_onnx_path(name) if name in models.TORCH_MODELS else models.light_random_path(name)
        x = models.inputs_for(path)
        pkg = kiln.compile(str(path), target)
        with pkg.open_session() as sess:
            sess.run(x)
            k = statistics.median(sess.time(number=args.number, repeat=args.repeat))
        o = ort_latency(path, x, args.number, args.repeat)
        ratios.append(k / o)
        print(f"{name:16} {k * 1e3:10.3f} {o * 1e3:15.3f} {k / o:7.2f}", flush=True)
    print(f"{'geomean ratio':16} {'':10} {'':15} {float(np.exp(np.mean(np.log(ratios)))):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
