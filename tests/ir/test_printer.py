"""The printer's text of a small module with a graph function and a tensor function, pinned exactly: every
statement and expression form, attributes of each kind (an array with its data, a graph attribute, node names
as ``loc``), constants declared with their data, duplicate names told apart (``%y~1``), buffer views
(``in1{float32[6]}``), strides, loop kinds and starts, module attributes. The text is for humans, tests and
the parser (tests/ir/test_roundtrip.py), so a change to it is a deliberate change to this golden text."""

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
const @w: float32[2, 3] = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]

graph main(%x: float32[2, 3]) [model_name='golden'] {
  %y: float32[2, 3] = call_tensor(%x, @w; func='scale_relu_0') loc('Kernel_0')
  %z: float32[6] = view(%y)
  %y~1: float32[6] = relu(%z)
  %m: float32[1] = custom(%y~1; alpha=0.5, axes=[0], table=array(float64[2, 2], [[0.0, 0.0], [0.0, 0.0]]), tag='t')
  return %z, %m, @w
}

tensor scale_relu_0(in0: float32[2, 3], in1: float32[2, 3]) -> (out0: float32[2, 3]) [flops=12]:  # ops: mul, relu
  acc: float32[3], strides=[1] = alloc(local)
  for i in range(2):
    for j in range(3):  # vectorized
      acc[j] = max((in0[i, j] * in1{float32[6]}[((i * 3) + j)]), 0f)
    for k in range(1, 3):  # unrolled
      if (k < 2):
        out0[i, k] = select((acc[k] > 0f), exp(acc[k]), float32(int32(3)))
      else:
        out0[i, k] = (acc[k] + float64(0.25))
    out0[i, 0] = min(acc[0], float32(i))

attr note = 'module attributes come last'"""


def _module() -> Module:
    x = Var("x", TensorType((2, 3)))
    w = Constant("w", np.ones((2, 3), np.float32))
    y = Var("y", TensorType((2, 3)))
    z = Var("z", TensorType((6,)))
    m = Var("m", TensorType((1,)))
    y2 = Var("y", TensorType((6,)))  # a second value named y
    attrs = {"tag": "t", "alpha": 0.5, "table": np.zeros((2, 2)), "axes": [0]}
    main = GraphFunction(
        "main",
        (x,),
        (
            Node("call_tensor", (x, w), (y,), {"func": "scale_relu_0"}, "Kernel_0"),
            Node("view", (y,), (z,)),
            Node("relu", (z,), (y2,)),
            Node("custom", (y2,), (m,), attrs),
        ),
        (z, m, w),
        {"model_name": "golden"},
    )

    a, b, out = Buffer("in0", (2, 3)), Buffer("in1", (2, 3)), Buffer("out0", (2, 3))
    acc = Buffer("acc", (3,), strides=(1,), scope="local")
    i, j, k = T.LoopVar("i"), T.LoopVar("j"), T.LoopVar("k")
    zero = T.FloatImm(0.0)
    per_row = T.seq(
        T.For(
            j,
            T.IntImm(3),
            T.Store(acc, (j,), T.maximum(a[i, j] * b.with_(shape=(6,))[i * 3 + j], zero)),
            "vectorized",
        ),
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
    kernel = TensorFunction("scale_relu_0", (a, b, out), body, 1, {"ops": ["mul", "relu"], "flops": 12})
    return Module({"main": main, kernel.name: kernel}, {"note": "module attributes come last"})


def test_printer_output_is_the_golden_text() -> None:
    mod = _module()
    verify(mod)  # well formed (the IR's structure; "custom" is no registered operator)
    assert print_module(mod) == GOLDEN


def test_printer_is_deterministic_and_is_the_module_str() -> None:
    first, second = _module(), _module()
    assert print_module(first) == print_module(second) == str(first)
