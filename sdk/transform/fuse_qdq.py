"""fuse-qdq: compute quantized convolutions and matrix products in integers.

A QDQ graph (onnxruntime's ``quantize_static`` in QDQ format, and the QOperator operators as the importer
spells them) computes a quantized layer in float: ``DequantizeLinear`` on the 8-bit input and weights, a
float ``conv2d``/``matmul`` (plus a bias, a ReLU or a clip), ``QuantizeLinear`` on the result. The importer
turns those into ``cast/sub/mul`` (dequantize) and ``div/round/add/clip/cast`` (quantize) chains, leaving the
dequantize chains of constant 8-bit weights unfolded for this pass. It matches

    q = quantize(act(op(dequantize(xq), dequantize(Wq)) [+ bias]), ys, yz)

with ``op`` a ``conv2d`` or a ``matmul`` with a constant right operand, ``xq`` an int8/uint8 value quantized
per tensor, ``Wq`` constant int8/uint8 weights quantized per tensor or per output channel (possibly
transposed or reshaped on the way), ``act`` nothing, ``relu`` or a constant ``clip``, and ``ys``/``yz``
per tensor, and rewrites it to

    acc = op(xq, Wq', B)                       int32 accumulation of the 8-bit operands
    q = cast(clip(round(float(acc) * M) + yz, lo, hi))     one requantize, fused into op's epilogue
                                                   (the rounding as float adds, _requantize)

where ``M = xs * ws / ys`` (per output channel), the bias ``B`` is in accumulator units and absorbs the input
zero point (``-xz * sum(Wq')`` per output channel; a convolution's padding reads ``xz`` through
``pad_value``), a nonzero weight zero point is subtracted from the constant weights (``Wq'`` int16), and the
activation becomes the clip bounds (``relu``: ``lo >= yz``). Rounding is half to even and saturating, as
``QuantizeLinear``'s. A ``matmul`` of two 8-bit values computed at run time (a transformer's attention)
becomes ``A @ B - zb * rowsum(A) - za * colsum(B) + K * za * zb`` in int32 (the sums are products with a
vector of ones), followed by the same requantize.

Expects: the graph as imported, before ``fold-constants``. Guarantees: the same results up to one step of
the output quantization (the float model rounds differently). Removes: the matched float nodes (what
only they used); unmatched dequantize/quantize chains stay and run in float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Constant, Module, Node, Value, Var
from ..ops import get_op
from .eliminate_dead_code import eliminate_dead_code
from .pipeline import register_pass

_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_LAYOUT = ("transpose", "reshape")
_MAGIC = 1.5 * 2**23  # float32 values from 2**23 to 2**24 are the integers: adding it rounds to one


@dataclass
class _Graph:
    producer: dict[Value, Node]
    users: dict[Value, list[Node]]
    outputs: set[int]

    def node(self, v: Value, *ops: str) -> Node | None:
        n = self.producer.get(v) if isinstance(v, Var) else None
        return n if n is not None and n.op in ops else None

    def private(self, v: Value) -> bool:
        """``v`` is used by one node only and is not a graph output (its producer may go)."""
        return len(self.users.get(v, [])) == 1 and id(v) not in self.outputs


def _scalar(v: Value) -> float | None:
    return float(v.data.reshape(-1)[0]) if isinstance(v, Constant) and v.data.size == 1 else None


def _other(n: Node, v: Value) -> Value:
    return n.inputs[1] if n.inputs[0] is v else n.inputs[0]


@dataclass
class _Quantize:
    y: Value  # the float value quantized
    scale: float
    zero: float
    dtype: str
    lo: float
    hi: float


def _quantize(g: _Graph, n: Node) -> _Quantize | None:
    """``cast(clip(round(div(y, s)) [+ zp]), dtype)`` with per-tensor ``s`` and ``zp`` (QuantizeLinear)."""
    dtype = n.attrs.get("to")
    if n.op != "cast" or dtype not in _RANGE:
        return None
    clip = g.node(n.inputs[0], "clip")
    if (
        clip is None
        or len(clip.inputs) != 1
        or (clip.attrs.get("min"), clip.attrs.get("max")) != _RANGE[dtype]
    ):
        return None
    zero = 0.0
    r = g.node(clip.inputs[0], "add", "round")
    if r is not None and r.op == "add":
        rv = next((v for v in r.inputs if g.node(v, "round") is not None), None)
        zp = _scalar(_other(r, rv)) if rv is not None else None
        if rv is None or zp is None or not g.private(rv):
            return None
        zero, r = zp, g.node(rv, "round")
    d = g.node(r.inputs[0], "div") if r is not None else None
    s = _scalar(d.inputs[1]) if d is not None else None
    if d is None or s is None or not s > 0:
        return None
    lo, hi = _RANGE[dtype]
    return _Quantize(d.inputs[0], s, zero, dtype, float(lo), float(hi))


def _dequantize_var(g: _Graph, v: Value) -> tuple[Var, float, int] | None:
    """``mul(cast(xq) [- zp], s)`` of an 8-bit value ``xq`` with per-tensor ``s`` and ``zp``."""
    m = g.node(v, "mul")
    if m is None:
        return None
    for t in m.inputs:
        s = _scalar(_other(m, t))
        c, zp = g.node(t, "cast"), 0.0
        sub = g.node(t, "sub")
        if sub is not None and _scalar(sub.inputs[1]) is not None:
            c, zp = g.node(sub.inputs[0], "cast"), _scalar(sub.inputs[1])  # type: ignore[assignment]
        if c is None or s is None or not s > 0 or not isinstance(c.inputs[0], Var):
            continue
        if c.inputs[0].type.dtype in _RANGE and float(zp).is_integer():
            return c.inputs[0], s, int(zp)
    return None


def _dequantize_const(g: _Graph, v: Value) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Constant 8-bit weights behind ``v``: ``(wq, scale, zero point)``, all of ``v``'s shape, through the
    dequantize chain ``mul(cast(Wq) [- zp], s)`` and any transposes and reshapes after it."""
    n = g.node(v, "mul", *_LAYOUT)
    if n is None:
        return None
    if n.op in _LAYOUT:
        inner = _dequantize_const(g, n.inputs[0]) if len(n.inputs) == 1 else None
        if inner is None:
            return None
        ref = get_op(n.op).reference
        return tuple(ref([a], n.attrs)[0] for a in inner)  # type: ignore[return-value]
    for t in n.inputs:
        s = _other(n, t)
        c, zp = g.node(t, "cast"), np.zeros(())
        sub = g.node(t, "sub")
        if sub is not None and isinstance(sub.inputs[1], Constant):
            c, zp = g.node(sub.inputs[0], "cast"), sub.inputs[1].data
        if c is None or not isinstance(s, Constant) or not isinstance(c.inputs[0], Constant):
            continue
        wq = c.inputs[0].data
        if wq.dtype.name not in _RANGE or not np.all(np.asarray(zp) == np.round(zp)):
            continue
        shape = wq.shape
        return (
            wq,
            np.broadcast_to(s.data, shape).astype(np.float64),
            np.broadcast_to(zp, shape).astype(np.int64),
        )
    return None


def _per_axis(a: np.ndarray, axis: int) -> np.ndarray | None:
    """``a`` as one value per index of ``axis`` if it is constant along every other axis."""
    moved = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
    return moved[:, 0] if np.all(moved == moved[:, :1]) else None


def _bias(c: Value, channels: int, nd: int, axis: int) -> np.ndarray | None:
    """A constant added per output channel (``axis`` of a rank-``nd`` result), as a vector."""
    if not isinstance(c, Constant) or c.data.ndim > nd:
        return None
    d = c.data.reshape((1,) * (nd - c.data.ndim) + c.data.shape)
    if any(s != 1 for i, s in enumerate(d.shape) if i != axis % nd) or d.shape[axis % nd] not in (
        1,
        channels,
    ):
        return None
    return np.broadcast_to(d.reshape(-1), (channels,)).astype(np.float64)


def _rewrite(g: _Graph, q_node: Node, q: _Quantize) -> list[Node] | None:
    y, lo, hi = q.y, q.lo, q.hi
    act = g.node(y, "relu", "clip")
    if act is not None and len(act.inputs) == 1 and g.private(act.inputs[0]):
        a_lo = 0.0 if act.op == "relu" else float(act.attrs.get("min", -np.inf))
        a_hi = np.inf if act.op == "relu" else float(act.attrs.get("max", np.inf))
        # quantizing is monotonic: clipping before it is clipping the quantized value at the bounds' images
        lo = max(lo, float(np.round(a_lo / q.scale)) + q.zero) if np.isfinite(a_lo) else lo
        hi = min(hi, float(np.round(a_hi / q.scale)) + q.zero) if np.isfinite(a_hi) else hi
        y = act.inputs[0]
    extra: Value | None = None
    add = g.node(y, "add")
    if add is not None and g.private(y):
        core_v = next((v for v in add.inputs if g.node(v, "conv2d", "matmul") is not None), None)
        if core_v is not None:
            extra, y = _other(add, core_v), core_v
    core = g.node(y, "conv2d", "matmul")
    if core is None or not g.private(y) or y.type.dtype != "float32":
        return None
    x = _dequantize_var(g, core.inputs[0])
    if x is None:
        return None
    w = _dequantize_const(g, core.inputs[1])
    if w is None:
        other = _dequantize_var(g, core.inputs[1]) if core.op == "matmul" and extra is None else None
        return _two_operands(q_node, q, lo, hi, x, other) if other is not None else None
    xq, xs, xz = x
    wq, ws, wz = w
    conv = core.op == "conv2d"
    red: tuple[int, ...]
    if conv:
        axis, red = 0, (1, 2, 3)  # OIHW: per output channel, summed over the rest
    elif wq.ndim == 2 and core.inputs[0].type.ndim >= 1:
        axis, red = 1, (0,)
    else:
        return None
    ws_c = _per_axis(ws, axis)
    channels = wq.shape[axis]
    if ws_c is None or not np.all(ws_c > 0):
        return None
    wide = wq.astype(np.int64) - wz
    nd = y.type.ndim
    out_axis = 1 if conv else nd - 1
    bias = np.zeros(channels)
    for c in [v for v in (core.inputs[2:] if conv else ()) if v is not None] + (
        [extra] if extra is not None else []
    ):
        b = _bias(c, channels, nd if c is extra else 1, out_axis if c is extra else 0)
        if b is None:
            return None
        bias += b
    acc_bias = np.round(bias / (xs * ws_c)).astype(np.int64) - xz * wide.sum(axis=red)
    if np.abs(acc_bias).max(initial=0) >= 2**31 or np.abs(wide).sum(axis=red).max() * 255 >= 2**31:
        return None
    w_int = wq if not np.any(wz) else wide.astype(np.int16)
    name = q_node.outputs[0].name
    mk = _Maker(name, q_node.name)
    wc = Constant(f"{name}_wq", w_int)
    if conv:
        attrs = dict(core.attrs)
        if xz:
            attrs["pad_value"] = xz
        acc = mk.node("conv2d", [xq, wc, Constant(f"{name}_bias", acc_bias.astype(np.int32))], **attrs)
    else:
        acc = mk.node("matmul", [xq, wc])
        if np.any(acc_bias):
            acc = mk.node("add", [acc, Constant(f"{name}_bias", acc_bias.astype(np.int32))])
    shape = [1] * nd
    shape[out_axis] = channels
    return _requantize(mk, acc, (xs * ws_c / q.scale).astype(np.float32).reshape(shape), q, lo, hi, q_node)


def _two_operands(
    q_node: Node, q: _Quantize, lo: float, hi: float, a: tuple[Var, float, int], b: tuple[Var, float, int]
) -> list[Node] | None:
    """A matrix product of two 8-bit values computed at run time (attention): ``(A - za) @ (B - zb)`` as
    ``A @ B - zb * rowsum(A) - za * colsum(B) + K * za * zb``, the sums themselves products with a vector
    of ones (8-bit operands, int32 results), the corrections elementwise on the accumulator (its epilogue)."""
    (aq, as_, az), (bq, bs, bz) = a, b
    k = aq.type.shape[-1]
    if aq.type.ndim < 2 or bq.type.ndim < 2 or not isinstance(k, int):
        return None
    name = q_node.outputs[0].name
    mk = _Maker(name, q_node.name)
    acc = mk.node("matmul", [aq, bq])
    if bz:
        rows = mk.node("matmul", [aq, Constant(f"{name}_ones_k1", np.ones((k, 1), np.int8))])
        acc = mk.node("sub", [acc, mk.node("mul", [rows, Constant(f"{name}_zb", np.array(bz, np.int32))])])
    if az:
        cols = mk.node("matmul", [Constant(f"{name}_ones_1k", np.ones((1, k), np.int8)), bq])
        acc = mk.node("sub", [acc, mk.node("mul", [cols, Constant(f"{name}_za", np.array(az, np.int32))])])
    if az and bz:
        acc = mk.node("add", [acc, Constant(f"{name}_kzz", np.array(k * az * bz, np.int32))])
    return _requantize(mk, acc, np.array(as_ * bs / q.scale, np.float32), q, lo, hi, q_node)


def _requantize(
    mk: _Maker, acc: Var, mult: np.ndarray, q: _Quantize, lo: float, hi: float, q_node: Node
) -> list[Node]:
    """``cast(clip(round(float(acc) * mult) + zero point, lo, hi))`` into ``q_node``'s result. The rounding
    (half to even) is float32 arithmetic's own: adding ``1.5 * 2**23`` (plus the zero point) leaves no bits
    for a fraction, and subtracting it back is exact (for results within +-2**22; beyond, the clip saturates
    either way). Two operations where a ``round`` is a dozen."""
    name = q_node.outputs[0].name
    f = mk.node("cast", [acc], to="float32")
    f = mk.node("mul", [f, Constant(f"{name}_multiplier", mult)])
    f = mk.node("add", [f, Constant(f"{name}_round_zero_point", np.array(_MAGIC + q.zero, np.float32))])
    f = mk.node("sub", [f, Constant(f"{name}_round", np.array(_MAGIC, np.float32))])
    f = mk.node("clip", [f], min=lo, max=hi)
    mk.nodes.append(Node("cast", (f,), q_node.outputs, {"to": q.dtype}, q_node.name))
    return mk.nodes


class _Maker:
    def __init__(self, base: str, loc: str) -> None:
        self.base, self.loc, self.nodes = base, loc, []  # type: ignore[var-annotated]

    def node(self, op: str, inputs: list[Value], **attrs: object) -> Var:
        (t,) = get_op(op).infer([v.type for v in inputs], attrs)
        out = Var(f"{self.base}_{op}{len(self.nodes)}", t)
        self.nodes.append(Node(op, tuple(inputs), (out,), attrs, self.loc))
        return out


@register_pass("fuse-qdq", "after_import")
def fuse_qdq(mod: Module) -> Module:
    main = mod.main
    producers: dict[Value, Node] = {v: n for v, n in main.producers().items()}
    g = _Graph(producers, main.users(), {id(v) for v in main.outputs})
    replaced: dict[int, list[Node]] = {}
    for n in main.nodes:
        q = _quantize(g, n)
        new = _rewrite(g, n, q) if q is not None else None
        if new is not None:
            replaced[id(n)] = new
    if not replaced:
        return mod
    nodes = [m for n in main.nodes for m in replaced.get(id(n), [n])]
    return eliminate_dead_code(mod.with_function(main.with_(nodes=tuple(nodes))))
