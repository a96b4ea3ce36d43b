"""Tuned schedules vs the target's defaults: one model compiled twice, timed side by side in one run.

    python benchmarks/schedules.py --model resnet50 --schedule resnet50.schedule.json
    python benchmarks/schedules.py --model resnet50 --tune 12      # run kiln tune first, then compare
    python benchmarks/schedules.py --model path/to/model.onnx --schedule s.json --rounds 21

``--model`` is one of the light models (random-weights variant) or PyTorch-built ones of tests/models.py, or an
.onnx path. Both packages are loaded at once and timed alternately by the runtime's own clock (TIME message),
``--rounds`` rounds of one repeat each lasting at least ``--min-repeat-ms``, so the machine's load drifts over
both alike; prints the median, the lower quartile and the spread of each, and the ratio tuned / default of the
medians (below 1: the tuned schedules are faster). ``--ort`` adds onnxruntime for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ort_timing import ort_latency  # noqa: E402

import kiln  # noqa: E402
import kiln.targets  # noqa: E402
import models  # noqa: E402  (tests/models.py builds the model files)
from kiln.tune import tune  # noqa: E402


def model_path(name: str) -> Path:
    if name.endswith(".onnx"):
        return Path(name)
    return models.torch_onnx_path(name) if name in models.TORCH_MODELS else models.light_random_path(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--target", default="native")
    ap.add_argument("--schedule", help="schedule file (from kiln tune); with --tune, where to write it")
    ap.add_argument("--tune", type=int, default=0, metavar="TRIALS", help="tune first, with this many trials")
    ap.add_argument("--rounds", type=int, default=15, help="alternating timing rounds (default 15)")
    ap.add_argument("--min-repeat-ms", type=int, default=200)
    ap.add_argument("--ort", action="store_true", help="also time onnxruntime (one thread)")
    args = ap.parse_args()
    target = kiln.targets.get_target(args.target).name
    path = model_path(args.model)
    x = models.inputs_for(path)
    sched = Path(args.schedule or f"{path.stem}.schedule.json")
    if args.tune:
        t0 = time.perf_counter()
        result = tune(str(path), target, trials=args.tune, log=lambda m: print(f"  tune: {m}", flush=True))
        result.schedule.save(sched)
        print(f"tuned in {time.perf_counter() - t0:.0f}s, wrote {sched}")
    default_pkg = kiln.compile(str(path), target)
    tuned_pkg = kiln.compile(str(path), target, schedule=sched)
    applied = tuned_pkg.manifest["schedule"]
    print(
        f"{args.model} on {target}: {applied['applied']} of {applied['instances']} tuned instance(s) applied"
    )
    times: dict[str, list[float]] = {"default": [], "tuned": []}
    with default_pkg.open_session() as d, tuned_pkg.open_session() as t:
        sessions = {"default": d, "tuned": t}
        want, got = d.run(x), t.run(x)
        for name, w in want.items():
            np.testing.assert_allclose(got[name], w, rtol=1e-3, atol=1e-4, err_msg=name)
        for r in range(args.rounds):
            for name in ("default", "tuned") if r % 2 == 0 else ("tuned", "default"):
                times[name] += sessions[name].time(number=1, repeat=1, min_repeat_ms=args.min_repeat_ms)
    print(
        f"{'schedules':10} {'median ms':>10} {'q25 ms':>9} {'min ms':>9} {'max ms':>9}   ({args.rounds} rounds)"
    )
    for name, ts in times.items():
        ms = sorted(v * 1e3 for v in ts)
        q25 = ms[(len(ms) - 1) // 4]
        print(f"{name:10} {statistics.median(ms):10.3f} {q25:9.3f} {ms[0]:9.3f} {ms[-1]:9.3f}")
    ratio = statistics.median(times["tuned"]) / statistics.median(times["default"])
    print(f"ratio tuned / default (medians): {ratio:.3f}")
    if args.ort:
        o = ort_latency(path, x, 3, 5)
        print(f"onnxruntime (1 thread): {o * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
