"""Single-kernel speed, kiln vs onnxruntime, one thread: the convolutions and matmuls of the benchmark models and
the glue around them (softmax of attention, max and average pooling, LRN, layer norm, GELU).

    python benchmarks/kernels.py [--target native] [--cases softmax,maxpool] [--no-cold]

Each case is one operator (or GELU's five nodes, which kiln fuses into one kernel) built with onnx.helper and
seeded random weights, compiled by kiln and run by onnxruntime in this process. Columns:

* ``kiln ms`` / ``ort ms``: warm, the median over repeats of the mean of ``--number`` runs (kiln timed by the
  runtime's own clock, onnxruntime around ``session.run``);
* ``GFLOP/s`` and ``%peak``: kiln's own flop count of the package (the manifest's ``flops``: 2 per
  multiply-add, one per element and step for the rest) over the warm time, and that as a percentage of this
  core's FMA peak, measured first by an FMA loop built with kiln's zig toolchain for the same target;
* ``cold``: the median of single runs each after the caches were flushed (a 128 MiB buffer written and read by
  this process, with the runner pinned to the same core); kiln's time is the kernel time of a profiled run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from ort_timing import cold_times, ort_cold_times, ort_times

import kiln
import kiln.targets
from kiln.package import toolchain

# (oc, ic, hw, k): ResNet-50 / VGG-19 layers; (m, k, n): square, in-cache and batch-1 fully connected shapes
CONVS = [(256, 256, 14, 3), (64, 64, 56, 3), (512, 512, 7, 3), (2048, 512, 7, 1), (1024, 256, 14, 1)]
MATMULS = [(1024, 1024, 1024), (192, 256, 192), (1, 4096, 4096), (1, 25088, 4096)]

# An FMA loop: ACC independent vector accumulators (enough to cover the FMA latency on two ports), timed by
# the thread's CPU clock (time-sharing with other processes does not count); prints the best GFLOP/s of 40
# rounds.
FMA_C = r"""
#include <stdio.h>
#include <time.h>
typedef float vf __attribute__((vector_size(VBYTES)));
#define ACC 12
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
int main(void) {
    vf acc[ACC], m, a;
    for (int i = 0; i < (int)(sizeof(vf) / 4); i++) { m[i] = 0.999999f; a[i] = 1e-6f * i; }
    for (int k = 0; k < ACC; k++) acc[k] = a + (float)k;
    const long iters = 2000000;
    double best = 0;
    for (int round = 0; round < 40; round++) {
        double t0 = now();
        for (long i = 0; i < iters; i++) {
            for (int k = 0; k < ACC; k++) acc[k] = acc[k] * m + a;
        }
        double gf = 2.0 * iters * ACC * (sizeof(vf) / 4) / (now() - t0) / 1e9;
        if (gf > best) best = gf;
    }
    float s = 0;
    for (int k = 0; k < ACC; k++) s += acc[k][0];
    printf("%f %f\n", best, s);
    return 0;
}
"""


def fma_peak_gflops(target: kiln.targets.Target) -> float:
    """One core's FMA peak for ``target`` (GFLOP/s), measured by :data:`FMA_C` compiled with zig for it."""
    with tempfile.TemporaryDirectory(prefix="kiln-fma-") as tmp:
        src = Path(tmp) / "fma.c"
        src.write_text(FMA_C)
        exe = Path(tmp) / "fma"
        toolchain.run_tool(
            [
                *toolchain.zig(),
                "cc",
                *toolchain.target_flags(target),
                "-O2",
                f"-DVBYTES={target.vector_bits // 8}",
                "fma.c",
                "-o",
                str(exe),
            ],
            cwd=Path(tmp),
        )
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return float(out.split()[0])


# ------------------------------------------------------------------------------------------------------- cases
def _model(nodes: list, xs: list[tuple[str, list[int]]], weights: list[onnx.TensorProto], opset: int = 13):  # noqa: ANN202
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in xs]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(
        helper.make_graph(nodes, "k", ins, [y], weights), opset_imports=[helper.make_opsetid("", opset)]
    )
    m.ir_version = 8
    return m


def _weight(name: str, shape: tuple[int, ...], fan_in: int) -> onnx.TensorProto:
    rng = np.random.default_rng(0)
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype("f4"), name)


def conv_model(oc: int, ic: int, hw: int, k: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[k // 2] * 4),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    return _model(nodes, [("x", [1, ic, hw, hw])], [_weight("w", (oc, ic, k, k), ic * k * k)])


def matmul_model(m: int, k: int, n: int) -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [m, k])], [_weight("w", (k, n), k)])


def softmax_model(shape: list[int]) -> onnx.ModelProto:
    return _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [("x", shape)], [])


def maxpool_model(c: int, hw: int, k: int, s: int, p: int) -> onnx.ModelProto:
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
    return _model([node], [("x", [1, c, hw, hw])], [])


def avgpool_model(c: int, hw: int, k: int, s: int, p: int) -> onnx.ModelProto:
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, count_include_pad=1
    )
    return _model([node], [("x", [1, c, hw, hw])], [])


def lrn_model(c: int, hw: int, size: int) -> onnx.ModelProto:
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=1e-4, beta=0.75, bias=1.0)
    return _model([node], [("x", [1, c, hw, hw])], [])


def layernorm_model(seq: int, d: int) -> onnx.ModelProto:
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)
    w = [_weight("g", (d,), 1), _weight("b", (d,), 1)]
    return _model([node], [("x", [1, seq, d])], w, opset=17)


def gelu_model(seq: int, d: int) -> onnx.ModelProto:
    """GELU as PyTorch exports it at opset 17: ``x * 0.5 * (1 + erf(x / sqrt(2)))``."""
    consts = [
        numpy_helper.from_array(np.array(np.sqrt(2.0), "f4"), "r2"),
        numpy_helper.from_array(np.array(1.0, "f4"), "one"),
        numpy_helper.from_array(np.array(0.5, "f4"), "half"),
    ]
    nodes = [
        helper.make_node("Div", ["x", "r2"], ["a"]),
        helper.make_node("Erf", ["a"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["p"]),
        helper.make_node("Mul", ["x", "p"], ["q"]),
        helper.make_node("Mul", ["q", "half"], ["y"]),
    ]
    return _model(nodes, [("x", [1, seq, d])], consts)


def cases() -> list[tuple[str, onnx.ModelProto]]:
    out = [(f"conv oc{oc} ic{ic} {hw}x{hw} k{k}", conv_model(oc, ic, hw, k)) for oc, ic, hw, k in CONVS]
    out += [(f"matmul {m}x{k}x{n}", matmul_model(m, k, n)) for m, k, n in MATMULS]
    out += [
        ("softmax 8x128x128", softmax_model([8, 128, 128])),
        ("softmax 12x197x197", softmax_model([12, 197, 197])),
        ("maxpool 64x112x112 k3s2p1", maxpool_model(64, 112, 3, 2, 1)),
        ("maxpool 96x55x55 k3s2", maxpool_model(96, 55, 3, 2, 0)),
        ("avgpool 256x28x28 k3s1p1", avgpool_model(256, 28, 3, 1, 1)),
        ("lrn 96x55x55 size5", lrn_model(96, 55, 5)),
        ("layernorm 128x384", layernorm_model(128, 384)),
        ("layernorm 197x768", layernorm_model(197, 768)),
        ("gelu 128x1536", gelu_model(128, 1536)),
    ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="native")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names (default: all)")
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache columns")
    args = ap.parse_args()
    tgt = kiln.targets.get_target(args.target)
    # one core for this process and the runners it starts, so flushing here flushes the runner's caches
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    peak = fma_peak_gflops(tgt)
    print(f"(target {tgt.name}, 1 thread; FMA peak of this core measured at {peak:.1f} GFLOP/s)")
    print(
        f"{'case':28} {'kiln ms':>9} {'GFLOP/s':>8} {'%peak':>6} {'ort ms':>9} {'ratio':>6}"
        f" {'kiln cold':>10} {'ort cold':>9}"
    )
    wanted = [w for w in args.cases.split(",") if w]
    for name, model in cases():
        if wanted and not any(w in name for w in wanted):
            continue
        feed = {
            vi.name: np.random.default_rng(1)
            .standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim])
            .astype("f4")
            for vi in model.graph.input
        }
        pkg = kiln.compile(model, tgt.name)
        flops = float(pkg.manifest.get("flops", 0))
        with pkg.open_session() as s:
            s.set_inputs(feed)
            k = statistics.median(s.time(number=args.number, repeat=args.repeat))
            kc = (
                statistics.median(cold_times(lambda: s.profile().total_s, args.repeat))
                if not args.no_cold
                else float("nan")
            )
        o = statistics.median(ort_times(model.SerializeToString(), feed, args.number, args.repeat))
        oc = (
            statistics.median(ort_cold_times(model.SerializeToString(), feed, args.repeat))
            if not args.no_cold
            else float("nan")
        )
        gf = flops / k / 1e9
        print(
            f"{name:28} {k * 1e3:9.3f} {gf:8.1f} {100 * gf / peak:5.1f}% {o * 1e3:9.3f} {k / o:6.2f}"
            f" {kc * 1e3:10.3f} {oc * 1e3:9.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
