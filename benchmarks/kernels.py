"""Single-kernel speed: convolutions and matmuls from the benchmark models, kiln vs onnxruntime, one thread.

    python benchmarks/kernels.py [--target native]

Each case is one operator (Conv+Relu or MatMul) built with onnx.helper and seeded random weights, compiled by
kiln and run by onnxruntime in this process. Prints the median time and GFLOP/s of both (kiln timed by the
runtime's own clock, onnxruntime around ``session.run``).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from ort_timing import ort_latency

import kiln
import kiln.targets

# (oc, ic, hw, k): ResNet-50 / VGG-19 layers; (m, k, n): square, in-cache and batch-1 fully connected shapes
CONVS = [(256, 256, 14, 3), (64, 64, 56, 3), (512, 512, 7, 3), (2048, 512, 7, 1), (1024, 256, 14, 1)]
MATMULS = [(1024, 1024, 1024), (192, 256, 192), (1, 4096, 4096), (1, 25088, 4096)]


def conv_model(oc: int, ic: int, hw: int, k: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((oc, ic, k, k)) / np.sqrt(ic * k * k)).astype("f4"), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[k // 2] * 4),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ic, hw, hw])
    return _model(nodes, x, w)


def matmul_model(m: int, k: int, n: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype("f4"), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], x, w)


def _model(nodes: list, x: onnx.ValueInfoProto, w: onnx.TensorProto) -> onnx.ModelProto:
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(
        helper.make_graph(nodes, "k", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 13)]
    )
    m.ir_version = 8
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="native")
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    target = kiln.targets.get_target(args.target).name
    print(
        f"{'case':28} {'kiln ms':>9} {'GFLOP/s':>8} {'ort ms':>9} {'GFLOP/s':>8}   (target {target}, 1 thread)"
    )
    cases = [
        (f"conv oc{oc} ic{ic} {hw}x{hw} k{k}", conv_model(oc, ic, hw, k), 2 * oc * ic * k * k * hw * hw)
        for oc, ic, hw, k in CONVS
    ]
    cases += [(f"matmul {m}x{k}x{n}", matmul_model(m, k, n), 2 * m * k * n) for m, k, n in MATMULS]
    for name, model, flops in cases:
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        feed = {"x": np.random.default_rng(1).standard_normal(shape).astype("f4")}
        with kiln.compile(model, target).open_session() as s:
            s.set_inputs(feed)
            k = statistics.median(s.time(number=args.number, repeat=args.repeat))
        o = ort_latency(model.SerializeToString(), feed, args.number, args.repeat)
        print(
            f"{name:28} {k * 1e3:9.3f} {flops / k / 1e9:8.1f} {o * 1e3:9.3f} {flops / o / 1e9:8.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
