"""kiln.frontend.nn module classes: parameters named by their paths (as torch.nn names them), composition
(Sequential, ModuleList, user modules), each layer against NumPy (through the interpreter), export's input
specs and output names, binding weights from NumPy dicts and safetensors files (and its errors), the exported
module's text round trip and a native compile."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import kiln
from kiln.frontend import nn
from kiln.ir import TensorType, parse_module, print_module, structural_equal, verify
from kiln.ir.printer import constant_table
from kiln.ops import type_rule
from kiln.ops.interpreter import interpret

RNG = np.random.default_rng(0)


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype("float32")


def _run(model: nn.Module, *inputs: np.ndarray, **kw) -> np.ndarray:  # noqa: ANN003
    mod = model.export([TensorType(a.shape, str(a.dtype)) for a in inputs], **kw)
    verify(mod, infer=type_rule)
    return interpret(mod, {f"input{i}": a for i, a in enumerate(inputs)})["output"]


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, axes: tuple[int, ...] = (-1,)) -> np.ndarray:
    mu, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w + b


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------ names, composition
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 6))
        self.extra = nn.ModuleList([nn.Linear(6, 6, bias=False)])
        self.scale = nn.Parameter(np.full(6, 2.0, "float32"))
        self.shared = self.extra[0]  # the same module twice: its parameters count once

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return self.shared(self.body(self.conv(x))) * self.scale


def test_parameters_are_named_by_their_path_as_torch_orders_them() -> None:
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [  # a module's own first, then its children's
        "scale",
        "conv.weight",
        "conv.bias",
        "body.2.weight",
        "body.2.bias",
        "extra.0.weight",
    ]
    assert net.body[2].weight.shape == (6, 100) and len(net.body) == 3
    assert "(body): Sequential(" in repr(
        net
    ) and "Linear(in_features=100, out_features=6, bias=True)" in repr(net)
    mod = net.export({"x": (1, 3, 5, 5)})
    assert mod.main.attrs["parameters"] == tuple(net.state_dict())
    consts = {c.name for c in mod.main.constants()}
    assert set(net.state_dict()) <= consts
    # node names carry the module path (profiles and errors name the layer)
    assert any(n.name.startswith("body.2.matmul") for n in mod.main.nodes)


def test_a_composed_model_computes_what_numpy_does() -> None:
    net = Net()
    x = _x(1, 3, 5, 5)
    sd = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((1, 4, 5, 5))
    for i in range(5):
        for j in range(5):
            conv[0, :, i, j] = np.tensordot(sd["conv.weight"], xp[0, :, i : i + 3, j : j + 3], 3)
    conv += sd["conv.bias"][None, :, None, None]
    h = np.maximum(conv, 0).reshape(1, -1) @ sd["body.2.weight"].T + sd["body.2.bias"]
    want = (h @ sd["extra.0.weight"].T) * sd["scale"]
    np.testing.assert_allclose(_run(net, x), want, rtol=1e-4, atol=1e-5)


def test_state_dicts_load_strictly() -> None:
    net = Net()
    sd = {k: np.ones_like(v) for k, v in net.state_dict().items()}
    net.load_state_dict(sd)
    assert (net.conv.weight.data == 1).all()
    with pytest.raises(KeyError, match="missing scale"):
        net.load_state_dict({k: v for k, v in sd.items() if k != "scale"})
    with pytest.raises(KeyError, match="not parameters: bogus"):
        net.load_state_dict({**sd, "bogus": np.zeros(1)})
    net.load_state_dict({"scale": np.zeros(6)}, strict=False)
    assert net.scale.data.dtype == np.float32 and (net.scale.data == 0).all()
    with pytest.raises(ValueError, match=r"expected shape \[6\], got \[5\]"):
        net.load_state_dict({"scale": np.zeros(5)}, strict=False)


# ------------------------------------------------------------------------------------------------ each layer
def test_linear_and_activations() -> None:
    x = _x(2, 3, 8)
    lin = nn.Linear(8, 5)
    w, b = lin.weight.data, lin.bias.data
    np.testing.assert_allclose(_run(lin, x), x @ w.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_run(nn.Linear(8, 5, bias=False), x).shape, (2, 3, 5))
    erf = np.vectorize(math.erf)
    cases = [
        (nn.ReLU(), np.maximum(x, 0)),
        (nn.Sigmoid(), 1 / (1 + np.exp(-x))),
        (nn.Tanh(), np.tanh(x)),
        (nn.SiLU(), x / (1 + np.exp(-x))),
        (nn.GELU(), 0.5 * x * (1 + erf(x / math.sqrt(2)))),
        (nn.GELU("tanh"), 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
        (nn.LeakyReLU(0.2), np.where(x > 0, x, 0.2 * x)),
        (nn.Softmax(dim=1), np.exp(x) / np.exp(x).sum(1, keepdims=True)),
        (nn.Dropout(0.3), x),
        (nn.Identity(), x),
        (nn.Flatten(), x.reshape(2, 24)),
    ]
    for m, want in cases:
        np.testing.assert_allclose(_run(m, x), want, rtol=1e-5, atol=1e-5, err_msg=type(m).__name__)


@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        ({"kernel_size": 3, "padding": "same"}, (1, 4, 7, 6)),
        ({"kernel_size": (3, 1), "stride": 2, "padding": (1, 0)}, (1, 4, 7, 6)),
        ({"kernel_size": 3, "dilation": 2, "groups": 2, "bias": False}, (2, 4, 7, 7)),
    ],
)
def test_conv2d(kw: dict, shape: tuple[int, ...]) -> None:
    conv = nn.Conv2d(4, 6, **kw)
    x = _x(*shape)
    got = _run(conv, x)
    w = conv.weight.data.astype(np.float64)
    (pt, pl, pb, pr), (sh, sw), (dh, dw), g = conv.pads, conv.stride, conv.dilation, conv.groups
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oc, cg, kh, kw_ = w.shape
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw_ - 1) - 1) // sw + 1
    want = np.zeros((x.shape[0], oc, oh, ow))
    for o in range(oc):
        grp = o // (oc // g)
        for i in range(oh):
            for j in range(ow):
                patch = xp[
                    :,
                    grp * cg : (grp + 1) * cg,
                    i * sh : i * sh + dh * kh : dh,
                    j * sw : j * sw + dw * kw_ : dw,
                ]
                want[:, o, i, j] = (patch * w[o]).sum((1, 2, 3))
    if conv.bias is not None:
        want += conv.bias.data[None, :, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if kw.get("padding") == "same":
        assert got.shape[2:] == x.shape[2:]


def test_layer_norm_and_embedding() -> None:
    x = _x(2, 3, 4)
    ln = nn.LayerNorm((3, 4))
    ln.weight.data = _x(3, 4)
    np.testing.assert_allclose(_run(ln, x), _ln(x, ln.weight.data, 0, (-2, -1)), rtol=1e-4, atol=1e-5)
    plain = nn.LayerNorm(4, eps=1e-5, elementwise_affine=False)
    assert list(plain.named_parameters()) == []
    np.testing.assert_allclose(_run(plain, x), _ln(x, 1, 0), rtol=1e-4, atol=1e-5)
    emb = nn.Embedding(10, 3)
    ids = np.array([[1, 9, 0, 1]], np.int64)
    np.testing.assert_allclose(_run(emb, ids), emb.weight.data[ids])


def _mha_numpy(
    m: nn.MultiheadAttention, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None
):
    e, h = m.embed_dim, m.num_heads
    d = e // h
    w, b = m.in_proj_weight.data, m.in_proj_bias.data
    proj = [t @ w[i * e : (i + 1) * e].T + b[i * e : (i + 1) * e] for i, t in enumerate((q, k, v))]
    qh, kh, vh = (p.reshape(p.shape[0], p.shape[1], h, d).transpose(0, 2, 1, 3) for p in proj)
    s = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        s = s + (np.where(mask, -1e9, 0) if mask.dtype == bool else mask)
    a = (_softmax(s) @ vh).transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], e)
    return a @ m.out_proj.weight.data.T + m.out_proj.bias.data


def test_multihead_attention_self_cross_masked_and_sequence_first() -> None:
    m = nn.MultiheadAttention(8, 2)
    m.in_proj_bias.data = _x(24)
    m.out_proj.bias.data = _x(8)
    assert [n for n, _ in m.named_parameters()] == [
        "in_proj_weight",
        "in_proj_bias",
        "out_proj.weight",
        "out_proj.bias",
    ]
    q, kv = _x(2, 5, 8), _x(2, 3, 8)
    np.testing.assert_allclose(_run(m, q), _mha_numpy(m, q, q, q, None), rtol=1e-4, atol=1e-5)

    class Cross(nn.Module):
        def __init__(self, mask: np.ndarray) -> None:
            super().__init__()
            self.attn, self.mask = m, mask

        def forward(self, q: nn.Tensor, kv: nn.Tensor) -> nn.Tensor:
            return self.attn(q, kv, kv, attn_mask=self.mask)

    for mask in (np.triu(np.ones((5, 3), bool), 1), _x(5, 3)):
        want = _mha_numpy(m, q, kv, kv, mask)
        np.testing.assert_allclose(_run(Cross(mask), q, kv), want, rtol=1e-4, atol=1e-5)

    seq_first = nn.MultiheadAttention(8, 2, batch_first=False)
    seq_first.load_state_dict(m.state_dict())
    got = _run(seq_first, q.transpose(1, 0, 2))
    np.testing.assert_allclose(got.transpose(1, 0, 2), _mha_numpy(m, q, q, q, None), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- export, bind
class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: nn.Tensor, y: nn.Tensor) -> dict[str, nn.Tensor]:
        h = self.fc(x)
        return {"sum": h + y, "relu": h.relu()}


def test_export_input_specs_and_output_names() -> None:
    m = TwoHeads()
    mod = m.export({"x": ("N", 4), "y": TensorType((1, 3))})
    assert [p.name for p in mod.main.params] == ["x", "y"]
    assert str(mod.main.params[0].type) == "float32[N, 4]"
    assert [v.name for v in mod.main.outputs] == ["sum", "relu"]
    assert mod.main.attrs["model_name"] == "TwoHeads"

    class Pair(nn.Module):
        def forward(self, ids: nn.Tensor) -> tuple[nn.Tensor, nn.Tensor]:
            return ids * 2, ids + 1

    mod = Pair().export(((1, 3), "int64"), name="pair")
    assert [p.name for p in mod.main.params] == ["input"] and mod.main.params[0].type.dtype == "int64"
    assert [v.name for v in mod.main.outputs] == ["output0", "output1"] and mod.main.attrs["parameters"] == ()
    renamed = Pair().export([((1, 3), "int64")], output_names=["a", "b"])
    assert [v.name for v in renamed.main.outputs] == ["a", "b"]


def test_errors_outside_export_and_foreign_parameters() -> None:
    with pytest.raises(RuntimeError, match="export"):
        nn.Linear(2, 2)(np.zeros((1, 2)))

    class Bad(nn.Module):
        def forward(self, x: nn.Tensor) -> nn.Tensor:
            return x * nn.Parameter(np.ones(2, "float32"))  # never assigned to a module

    with pytest.raises(ValueError, match="does not belong"):
        Bad().export((1, 2))

    class NotTensor(nn.Module):
        def forward(self, x: nn.Tensor) -> int:
            return 3

    with pytest.raises(TypeError, match="not a kiln Tensor"):
        NotTensor().export((1, 2))
    with pytest.raises(AttributeError, match="super"):

        class NoInit(nn.Module):
            def __init__(self) -> None:
                self.fc = nn.Linear(2, 2)

        NoInit()


def test_bind_from_numpy_and_safetensors(tmp_path: Path) -> None:
    m = TwoHeads()
    mod = m.export({"x": (2, 4), "y": (1, 3)})
    x, y = _x(2, 4), _x(1, 3)
    w = {"fc.weight": _x(3, 4), "fc.bias": _x(3)}
    bound = nn.bind(mod, w)
    out = interpret(bound, {"x": x, "y": y})
    np.testing.assert_allclose(out["sum"], x @ w["fc.weight"].T + w["fc.bias"] + y, rtol=1e-5, atol=1e-6)
    assert not structural_equal(bound, mod)
    save_file(w, str(tmp_path / "w.safetensors"))
    from_file = nn.bind(mod, tmp_path / "w.safetensors")
    assert structural_equal(from_file, bound)
    assert structural_equal(
        m.export({"x": (2, 4), "y": (1, 3)}, weights=str(tmp_path / "w.safetensors")), bound
    )
    # the model itself loads and saves safetensors too
    m.load_state_dict(tmp_path / "w.safetensors")
    m.save_safetensors(tmp_path / "again.safetensors")
    assert structural_equal(nn.bind(mod, tmp_path / "again.safetensors"), bound)
    # float64 weights are converted to the parameter's dtype; wrong shapes and names fail
    assert (
        nn.bind(mod, {k: v.astype(np.float64) for k, v in w.items()}).main.constants()[0].data.dtype
        == np.float32
    )
    with pytest.raises(ValueError, match="fc.bias: expected shape"):
        nn.bind(mod, {**w, "fc.bias": np.zeros(4, np.float32)})
    with pytest.raises(KeyError, match="missing fc.bias"):
        nn.bind(mod, {"fc.weight": w["fc.weight"]})
    partly = nn.bind(mod, {"fc.weight": w["fc.weight"]}, strict=False)
    exported_bias = next(c.data for c in mod.main.constants() if c.name == "fc.bias")
    assert structural_equal(partly, nn.bind(mod, {**w, "fc.bias": exported_bias}))


def test_exported_models_round_trip_as_text_and_compile() -> None:
    net = Net()
    mod = net.export({"x": (1, 3, 5, 5)})
    text = print_module(mod)
    assert structural_equal(parse_module(text, constants=constant_table(mod)), mod)
    assert "@conv.weight" in text and "loc('body.2.matmul_0')" in text
    x = _x(1, 3, 5, 5)
    pkg = kiln.compile(mod, "x86_64-linux")
    with pkg.open_session() as s:
        got = s.run({"x": x})["output"]
    np.testing.assert_allclose(got, interpret(mod, {"x": x})["output"], rtol=1e-4, atol=1e-5)
