"""Library dispatch for handgemm (handgemm.c): rewrites that find the subgraphs the library implements and
replace each with a ``call_extern`` of its C function. kiln compiles handgemm.c for the target, links it into
the package, and the profiler shows each call as its own kernel.

Put the rewrites into a pipeline: ``default_pipeline(target, extra=[matmul_nt, conv_bias_relu])`` places each
where it declares (``matmul_nt`` before ``fold-constants``, while the transposes of the weights are still in
the graph; ``conv_bias_relu`` just before ``legalize``). The pipeline prints, and parses back, as
``...,handgemm_dispatch:matmul_nt,...``.
"""

from __future__ import annotations

from pathlib import Path

from kiln.transform.dispatch import OUT, CLibrary, ExternCall, rewrite
from kiln.transform.patterns import Match, const, op, var

HERE = Path(__file__).parent
HANDGEMM = CLibrary("handgemm", sources=[HERE / "handgemm.c"], headers=[HERE / "handgemm.h"])

_W_T = op("transpose", const("w"), perm=[1, 0])  # a weight stored (out, in), used transposed


@rewrite(
    op("add", op("matmul", var("a"), _W_T), const("b")), op("matmul", var("a"), _W_T), phase="after_import"
)
def matmul_nt(m: Match) -> ExternCall | None:
    """matmul(a, transpose(w)) (+ b): handgemm_nt_f32 (a's leading dimensions are rows of one product)."""
    a, w, b = m["a"], m["w"], m.get("b")
    if a.type.dtype != "float32" or w.type.dtype != "float32" or a.type.ndim < 2:
        return None
    n, k = w.type.static_shape
    if b is not None and (b.type.numel != n or b.type.shape[-1:] != (n,)):
        return None  # only a bias per output feature
    rows = a.type.numel // k
    return HANDGEMM.call("handgemm_nt_f32", a, w, b, OUT, rows, n, k)


def _conv_ok(node: object) -> bool:
    at = node.attrs  # type: ignore[attr-defined]
    pads = tuple(at.get("pads", (0, 0, 0, 0)))
    return (
        int(at.get("groups", 1)) == 1
        and tuple(at.get("dilations", (1, 1))) == (1, 1)
        and pads[:2] == pads[2:]
    )


_CONV = op("conv2d", var("x"), const("w"), bind="conv", where=_conv_ok)
_CONV_B = op("conv2d", var("x"), const("w"), const("b"), bind="conv", where=_conv_ok)


@rewrite(op("relu", _CONV_B), op("relu", op("add", _CONV, const("b"))))
def conv_bias_relu(m: Match) -> ExternCall | None:
    """relu(conv2d(x, w) + b) with a bias per channel: handgemm_conv2d_bias_relu_f32."""
    x, w, b = m["x"], m["w"], m["b"]
    conv = m.node("conv")
    k = w.type.static_shape[0]
    if x.type.dtype != "float32" or b.type.numel != k or b.type.shape not in ((k,), (1, k, 1, 1)):
        return None
    n, c, h, wd = x.type.static_shape
    _, _, r, s = w.type.static_shape
    oh, ow = conv.outputs[0].type.static_shape[2:]
    sh, sw = conv.attrs.get("strides", (1, 1))
    ph, pw = tuple(conv.attrs.get("pads", (0, 0, 0, 0)))[:2]
    return HANDGEMM.call(
        "handgemm_conv2d_bias_relu_f32", x, w, b, OUT, n, c, h, wd, k, r, s, sh, sw, ph, pw, oh, ow
    )
