"""The printer's text of a small module with a graph function and a tensor function, pinned exactly: every
statement and expression form, attributes of each kind, strides, loop kinds and starts. The text is for
humans and tests, so a change to it is a deliberate change to this golden text."""

from __future__ import annotations

import numpy as np

from kiln.ir import (
    Buffer,
    Constant,
    GraphFunction,
    Module,
    Node,
    TensorFunction,
    TensorType,
    Var,
    print_module,
    verify,
)
from kiln.ir import tensor as T

GOLDEN = """\
graph main(%x: float32[2, 3]) {
  %y: float32[2, 3] = call_tensor(%x, @w; func='scale_relu_0')
  %z: float32[6] = view(%y)
  %m: float32[1] = custom(%z; alpha=0.5, axes=[0], table=array[2, 2], tag='t')
  return %z, %m, @w
}

tensor scale_relu_0(in0: float32[2, 3], in1: float32[2, 3]) -> (out0: float32[2, 3]):  # ops: mul, relu
  acc: float32[3], strides=[1] = alloc(local)
  for i in range(2):
    for j in range(3):  # vectorized
      acc[j] = max((in0[i, j] * in1[i, j]), 0f)
    for k in range(1, 3):  # unrolled
      if (k < 2):
        out0[i, k] = select((acc[k] > 0f), exp(acc[k]), float32(int32(3)))
      else:
        out0[i, k] = (acc[k] + float64(0.25))
    out0[i, 0] = min(acc[0], float32(i))"""


def _module() -> Module:
    x = Var("x", TensorType((2, 3)))
    w = Constant("w", np.ones((2, 3), np.float32))
    y = Var("y", TensorType((2, 3)))
    z = Var("z", TensorType((6,)))
    m = Var("m", TensorType((1,)))
    attrs = {"tag": "t", "alpha": 0.5, "table": np.zeros((2, 2)), "axes": [0]}
    main = GraphFunction(
        "main",
        (x,),
        (
            Node("call_tensor", (x, w), (y,), {"func": "scale_relu_0"}),
            Node("view", (y,), (z,)),
            Node("custom", (z,), (m,), attrs),
        ),
        (z, m, w),
    )

    a, b, out = Buffer("in0", (2, 3)), Buffer("in1", (2, 3)), Buffer("out0", (2, 3))
    acc = Buffer("acc", (3,), strides=(1,), scope="local")
    i, j, k = T.LoopVar("i"), T.LoopVar("j"), T.LoopVar("k")
    zero = T.FloatImm(0.0)
    per_row = T.seq(
        T.For(j, T.IntImm(3), T.Store(acc, (j,), T.maximum(a[i, j] * b[i, j], zero)), "vectorized"),
        T.For(
            k,
            T.IntImm(2),
            T.IfThenElse(
                k < 2,
                T.Store(
                    out,
                    (i, k),
                    T.select(acc[k] > zero, T.call("exp", acc[k]), T.cast("float32", T.IntImm(3, "int32"))),
                ),
                T.Store(out, (i, k), acc[k] + T.FloatImm(0.25, "float64")),
            ),
            "unrolled",
            T.IntImm(1),
        ),
        T.Store(out, (i, 0), T.minimum(acc[0], T.Cast("float32", i))),
    )
    body = T.Allocate(acc, T.For(i, T.IntImm(2), per_row))
    kernel = TensorFunction("scale_relu_0", (a, b, out), body, 1, {"ops": ["mul", "relu"]})
    return Module({"main": main, kernel.name: kernel})


def test_printer_output_is_the_golden_text() -> None:
    mod = _module()
    verify(mod)  # well formed (the IR's structure; "custom" is no registered operator)
    assert print_module(mod) == GOLDEN


def test_printer_is_deterministic_and_is_the_module_str() -> None:
    first, second = _module(), _module()
    assert print_module(first) == print_module(second) == str(first)
