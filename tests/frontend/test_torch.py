"""PyTorch models through torch.export (kiln.frontend.from_torch), with torch itself as the oracle: a ResNet-style
and a MobileNet-style CNN, a transformer encoder with a padding mask (nn.TransformerEncoderLayer), a BERT-style
encoder with an additive mask, a decoder with rotary embeddings and causal grouped-query SDPA, and a hand-written
causal attention (tril + masked_fill). Each runs through ``interpret`` and compiled for x86-64; two light ones
run compiled for AArch64 under qemu-user (``slow``). Then half precision, symbolic sizes, the errors, ``.pt2``
files and ``kiln compile model.pt2``.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import running  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import kiln  # noqa: E402
from kiln.cli import main as cli_main  # noqa: E402
from kiln.device import InputError  # noqa: E402
from kiln.driver import load_model  # noqa: E402
from kiln.frontend import ModelLoadError, UnsupportedOperatorError, from_torch  # noqa: E402
from kiln.frontend.torch import from_exported_program, supported_operators_markdown  # noqa: E402
from kiln.ir import Module, Sym  # noqa: E402
from kiln.ops.interpreter import interpret  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's pytree deprecations
NATIVE = "x86_64-linux"
QEMU = (pytest.mark.qemu, pytest.mark.slow)
RTOL, ATOL = 1e-4, 1e-5  # interpret (float64 references)
RTOL_C, ATOL_C = 1e-3, 1e-4  # compiled code


# ------------------------------------------------------------------------------------------------------ models
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Any) -> Any:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Any) -> Any:
        y = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, c // 4, 1)
        self.expand = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: Any) -> Any:
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3: 1x1 expansion, 3x3 depthwise, squeeze-excite, 1x1 projection, residual."""

    def __init__(self, c: int, expand: int, act: type[nn.Module]) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), act())
        self.depthwise = nn.Sequential(
            nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), act()
        )
        self.se = SqueezeExcite(h)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Any) -> Any:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class MobileNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 2, nn.ReLU6),
            InvertedResidual(16, 3, nn.Hardswish),
            InvertedResidual(16, 2, nn.SiLU),
        )
        self.pool = nn.AvgPool2d(2, ceil_mode=True)
        self.head = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Dropout(0.2), nn.Linear(64, 5))

    def forward(self, x: Any) -> Any:
        y = self.pool(self.blocks(self.stem(x)))
        return torch.softmax(self.head(torch.cat([y.mean((2, 3)), y.amax(dim=(2, 3))], 1)), -1)


class Encoder(nn.Module):
    """nn.TransformerEncoderLayer (post-norm, GELU) with a key padding mask built from an attention mask."""

    def __init__(self, vocab: int = 100, d: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(16, d)
        self.norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True, activation="gelu")
            for _ in range(2)
        )
        self.head = nn.Linear(d, 3)

    def forward(self, ids: Any, attention_mask: Any) -> Any:
        pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
        x = self.norm(self.tok(ids) + self.pos(pos))
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=attention_mask == 0)
        return self.head(x[:, 0])


class BertLayer(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads = heads
        self.ln1 = nn.LayerNorm(d, eps=1e-12)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.ln2 = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x: Any, additive_mask: Any) -> Any:
        b, t, d = x.shape

        def split(y: Any) -> Any:
            return y.view(b, t, self.heads, d // self.heads).permute(0, 2, 1, 3)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // self.heads) + additive_mask
        a = torch.matmul(F.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous().view(b, t, d)
        x = self.ln1(x + self.o(a))
        return self.ln2(x + self.ff(x))


class Bertish(nn.Module):
    """BERT-style: token, segment and learned position embeddings, an additive attention mask, two outputs."""

    def __init__(self, vocab: int = 100, d: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.seg = nn.Embedding(2, d)
        self.pos = nn.Parameter(torch.randn(1, 16, d) * 0.1)
        self.ln = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(d) for _ in range(2))
        self.pooler = nn.Linear(d, d)

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        t = input_ids.shape[1]
        x = self.ln(self.tok(input_ids) + self.seg(token_type_ids) + self.pos[:, :t])
        mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, mask)
        return x, torch.tanh(self.pooler(x[:, 0]))


class RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(d))

    def forward(self, x: Any) -> Any:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def rotate_half(x: Any) -> Any:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, t: int) -> tuple[Any, Any]:
        freqs = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]


class DecoderBlock(nn.Module):
    """Pre-norm (RMSNorm) decoder block: rotary embeddings, causal grouped-query SDPA, SwiGLU MLP."""

    def __init__(self, d: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * kv_heads * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, 64, bias=False), nn.Linear(d, 64, bias=False)
        self.down = nn.Linear(64, d, bias=False)
        self.rotary = Rotary(self.hd)

    def forward(self, x: Any) -> Any:
        b, t, d = x.shape
        y = self.norm1(x)
        q = self.q(y).view(b, t, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(y).view(b, t, 2, self.kv_heads, self.hd).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = self.rotary(t)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        y = self.norm2(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 64, d: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(DecoderBlock(d) for _ in range(2))
        self.norm = RMSNorm(d)

    def forward(self, ids: Any) -> Any:
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.emb.weight)  # tied output embedding


class ManualCausal(nn.Module):
    """Attention written out: chunk, q @ k^T, tril mask with masked_fill(-inf), softmax, bmm."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x: Any) -> Any:
        t = x.shape[1]
        q, k, v = self.qkv(x).chunk(3, -1)
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        scores = scores.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool)), float("-inf"))
        return torch.bmm(F.softmax(scores, -1), v)


def _batch_norm_statistics(m: nn.Module) -> nn.Module:
    """Running statistics and affine parameters that are not the identity."""
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
    return m


def _ids_and_mask() -> tuple[Any, Any]:
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, 6:] = 0
    return ids, mask


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[Any, ...]]]] = {
    "resnet": lambda: (_batch_norm_statistics(ResNetish()), (torch.randn(2, 3, 32, 32),)),
    "mobilenet": lambda: (_batch_norm_statistics(MobileNetish()), (torch.randn(1, 3, 30, 30),)),
    "encoder": lambda: (Encoder(), _ids_and_mask()),
    "bert": lambda: (Bertish(), (*_ids_and_mask(), torch.zeros(2, 9, dtype=torch.int64))),
    "decoder": lambda: (TinyLM(), (torch.randint(0, 64, (2, 11)),)),
    "manual_causal": lambda: (ManualCausal(), (torch.randn(2, 5, 16),)),
}


@functools.cache
def _model(name: str) -> tuple[nn.Module, tuple[Any, ...], Module, dict[str, np.ndarray]]:
    torch.manual_seed(sum(map(ord, name)))
    module, example = MODELS[name]()
    module.eval()
    mod = from_torch(module, example)
    inputs = {p.name: a.numpy() for p, a in zip(mod.main.params, example, strict=True)}
    return module, example, mod, inputs


def _expected(module: nn.Module, example: tuple[Any, ...]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = module(*example)
    outs = out if isinstance(out, tuple) else (out,)
    names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    return {n: o.numpy() for n, o in zip(names, outs, strict=True)}


def _compare(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float, atol: float, what: str
) -> None:
    assert sorted(got) == sorted(want), what
    for k, w in want.items():
        assert got[k].shape == w.shape and got[k].dtype == w.dtype, (what, k, got[k].dtype, got[k].shape)
        np.testing.assert_allclose(got[k], w, rtol=rtol, atol=atol, err_msg=f"{what}: {k}")


# ------------------------------------------------------------------------------------------- models vs torch
@pytest.mark.parametrize("name", MODELS)
def test_interpret_matches_torch(name: str) -> None:
    module, example, mod, inputs = _model(name)
    _compare(interpret(mod, inputs), _expected(module, example), RTOL, ATOL, name)


@pytest.mark.parametrize("name", MODELS)
def test_compiled_for_x86_64_matches_torch(name: str) -> None:
    module, example, mod, inputs = _model(name)
    got = running.run(kiln.compile(mod, NATIVE), inputs)
    _compare(got, _expected(module, example), RTOL_C, ATOL_C, f"{name} on {NATIVE}")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=QEMU, id=f"{n}-aarch64-linux") for n in ("decoder", "mobilenet")]
)
def test_compiled_for_aarch64_under_qemu_matches_torch(name: str) -> None:
    module, example, mod, inputs = _model(name)
    got = running.run(kiln.compile(mod, "aarch64-linux"), inputs)
    _compare(got, _expected(module, example), RTOL_C, ATOL_C, f"{name} on aarch64-linux")


def test_weights_and_buffers_become_constants() -> None:
    module, _, mod, _ = _model("resnet")
    main = mod.main
    assert [p.name for p in main.params] == ["x"]
    assert [v.name for v in main.outputs] == ["output"]
    consts = {c.name: c for c in main.constants()}
    state = module.state_dict()
    # parameters and buffers keep their state-dict names and values (the running statistics too)
    for key in ("stem.0.weight", "layer1.bn1.running_mean", "layer1.bn1.running_var", "layer2.down.0.weight"):
        np.testing.assert_array_equal(consts[key].data, state[key].numpy())
    ops = {n.op for n in main.nodes}
    assert ops <= {"conv2d", "batch_norm", "relu", "add", "max_pool2d", "reduce_mean", "reshape", "matmul"}
    # the linear layer's weight is transposed at import: a constant, no transpose node
    assert "transpose" not in ops
    # copies: training the module further does not change the imported weights
    assert not np.shares_memory(consts["stem.0.weight"].data, state["stem.0.weight"].numpy())


def test_outputs_are_named_and_may_be_inputs_duplicates_or_constants() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.arange(3.0))

        def forward(self, x: Any, *, scale: Any) -> Any:
            y = x * scale
            return x, y, y, self.table, torch.ones(2)

    x, scale = torch.randn(3), torch.tensor(2.0)
    mod = from_torch(Odd(), (x,), kwargs={"scale": scale})
    assert [p.name for p in mod.main.params] == ["x", "scale"]
    assert [v.name for v in mod.main.outputs] == [f"output_{i}" for i in range(5)]
    inputs = {"x": x.numpy(), "scale": scale.numpy()}
    with torch.no_grad():
        outs = Odd()(x, scale=scale)
    want = {f"output_{i}": o.numpy() for i, o in enumerate(outs)}
    _compare(interpret(mod, inputs), want, RTOL, ATOL, "interpret")
    _compare(running.run(kiln.compile(mod, NATIVE), inputs), want, RTOL_C, ATOL_C, NATIVE)


def test_constant_subgraphs_fold_at_import() -> None:
    """The rotary tables (arange, outer, cat, cos, sin of a buffer) and the causal mask are computed by torch
    at import: no arange, cos or sin is left for the compiled model."""
    _, _, mod, _ = _model("decoder")
    ops = {n.op for n in mod.main.nodes}
    assert not ops & {"cos", "sin", "range", "cast"}
    assert "where" in ops and "softmax" in ops  # the causal mask is applied to the scores


# ------------------------------------------------------------------------------------------ half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_weights_compute_in_float32(dtype: Any) -> None:
    torch.manual_seed(5)
    module = Encoder().eval()
    ids, mask = _ids_and_mask()
    half = copy.deepcopy(module).to(dtype)
    mod = from_torch(half, (ids, mask))
    assert all(c.data.dtype != np.float16 for c in mod.main.constants())  # widened at import
    out = mod.main.outputs[0].type.dtype
    assert out == ("float16" if dtype == torch.float16 else "float32")  # NumPy has no bfloat16
    got = interpret(mod, {"ids": ids.numpy(), "attention_mask": mask.numpy()})["output"]
    # the oracle: the same rounded weights, in float32 arithmetic
    with torch.no_grad():
        want = copy.deepcopy(half).float()(ids, mask).numpy()
        in_half = half(ids, mask).float().numpy()
    tol = 2e-3 if dtype == torch.float16 else 1e-5  # the float16 output is rounded once, at the end
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=tol, atol=tol)
    assert np.abs(got.astype(np.float32) - in_half).max() < 0.05  # and close to torch's half arithmetic


def test_float16_inputs_and_outputs_stay_float16_in_the_package() -> None:
    torch.manual_seed(6)
    module = _batch_norm_statistics(ResNetish()).eval().half()
    x = torch.randn(1, 3, 32, 32).half()
    mod = from_torch(module, (x,))
    assert mod.main.params[0].type.dtype == "float16" and mod.main.outputs[0].type.dtype == "float16"
    got = running.run(kiln.compile(mod, NATIVE), {"x": x.numpy()})["output"]
    with torch.no_grad():
        want = copy.deepcopy(module).float()(x.float()).numpy()
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------------------ symbolic sizes
def test_dynamic_batch_stays_symbolic_unless_bound() -> None:
    torch.manual_seed(7)
    module = ResNetish().eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    x = torch.randn(2, 3, 32, 32)
    mod = from_torch(module, (x,), dynamic_shapes={"x": {0: batch}})
    assert mod.main.params[0].type.shape == (Sym("x_d0"), 3, 32, 32)
    assert mod.main.outputs[0].type.shape == (Sym("x_d0"), 10)
    for n in (1, 3):
        xi = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            want = module(xi).numpy()
        np.testing.assert_allclose(interpret(mod, {"x": xi.numpy()})["output"], want, rtol=RTOL, atol=ATOL)
    bound = from_torch(module, (x,), dynamic_shapes={"x": {0: batch}}, shapes={"x": (3, 3, 32, 32)})
    assert bound.main.params[0].type.shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"axis 0 = 30 is outside the range \[1, 8\]"):
        from_torch(module, (x,), dynamic_shapes={"x": {0: batch}}, shapes={"x": (30, 3, 32, 32)})
    with pytest.raises(ValueError, match="exported with size 2 there"):
        from_torch(module, (x,), shapes={"x": (3, 3, 32, 32)})
    with pytest.raises(ValueError, match="unknown inputs"):
        from_torch(module, (x,), shapes={"y": (3, 3, 32, 32)})


def test_a_dynamic_batch_compiles_once_for_every_size_in_its_range() -> None:
    """Unbound, a size with a finite exported range is a run-time dimension with that bound: one package runs
    every batch size up to it, matching torch, and refuses a larger one."""
    torch.manual_seed(8)
    module = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    mod = from_torch(module, (torch.randn(2, 16),), dynamic_shapes={"input": {0: batch}})
    assert mod.attrs["dim_bounds"] == {"input_d0": 8}
    pkg = kiln.compile(mod, NATIVE)
    with pkg.open_session() as session:
        for n in (1, 5, 8):
            x = torch.randn(n, 16)
            with torch.no_grad():
                want = module(x).numpy()
            np.testing.assert_allclose(
                session.run({"input": x.numpy()})["output"], want, rtol=RTOL_C, atol=ATOL_C
            )
        with pytest.raises(InputError, match=r"dimension 0 is 9; the model was compiled for 1\.\.8"):
            session.run({"input": np.zeros((9, 16), np.float32)})


def test_dynamic_sequence_length_bound_at_import_compiles() -> None:
    """A decoder exported with a symbolic sequence length: unbound, the rotary tables and the causal mask
    cannot be built (the error says to bind it); bound to 13 tokens it compiles and matches torch."""
    module, _, _, _ = _model("decoder")
    seq = torch.export.Dim("seq", min=2, max=64)
    ep = torch.export.export(module, (torch.randint(0, 64, (1, 9)),), dynamic_shapes={"ids": {1: seq}})
    with pytest.raises(UnsupportedOperatorError, match=r"symbolic sizes ids_d1.*bind them with shapes="):
        from_exported_program(ep)
    mod = from_exported_program(ep, shapes={"ids": (1, 13)})
    ids = torch.randint(0, 64, (1, 13))
    got = running.run(kiln.compile(mod, NATIVE), {"ids": ids.numpy()})
    _compare(got, _expected(module, (ids,)), RTOL_C, ATOL_C, "decoder at 13 tokens")


# ---------------------------------------------------------------------------------------------------- errors
class Odd(nn.Module):
    def forward(self, x: Any) -> Any:
        y = torch.lgamma(x)
        return torch.special.bessel_j0(y) + torch.lgamma(y)


class WithOddOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.odd = Odd()

    def forward(self, x: Any) -> Any:
        return torch.atan2(self.odd(self.fc(x)), x)


def _line(fn: Any, text: str) -> int:
    import inspect

    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_unsupported_aten_operators_are_listed_with_their_source_lines() -> None:
    with pytest.raises(UnsupportedOperatorError) as err:
        from_torch(WithOddOps().eval(), (torch.randn(2, 4),))
    msg = str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI prints it on one line
    here = Path(__file__).name
    lgamma1 = _line(Odd.forward, "torch.lgamma(x)")
    bessel = _line(Odd.forward, "bessel_j0")
    atan2 = _line(WithOddOps.forward, "atan2")
    assert msg.startswith("unsupported aten operators: ")
    # every unsupported operator once, with each place it is used: file, line, source text, module path
    for op, line, module in (
        ("aten.lgamma.default", lgamma1, "module odd (Odd)"),
        ("aten.lgamma.default", bessel, "module odd (Odd)"),
        ("aten.special_bessel_j0.default", bessel, "module odd (Odd)"),
        ("aten.atan2.default", atan2, ""),
    ):
        assert msg.count(op) == 1, (op, msg)
        assert re.search(rf"{re.escape(op)} at [^;]*{re.escape(here)}:{line} in forward", msg), (
            op,
            line,
            msg,
        )
        assert module in msg
    assert "y = torch.lgamma(x)" in msg  # the source line itself
    assert "aten.linear" not in msg and "aten.add" not in msg  # supported operators are not listed


def test_supported_operator_used_in_an_unsupported_way_names_the_node() -> None:
    class Unfit(nn.Module):
        def forward(self, x: Any) -> Any:
            return F.adaptive_max_pool2d(x, (3, 3)) + F.avg_pool2d(x, 2, divisor_override=3)[..., :3, :3]

    with pytest.raises(UnsupportedOperatorError) as err:
        from_torch(Unfit().eval(), (torch.randn(1, 2, 8, 8),))
    msg = str(err.value)
    assert msg.startswith("operators used in ways kiln cannot import: ")
    assert "aten.adaptive_max_pool2d.default" in msg and "output size divides the input size" in msg
    assert "aten.avg_pool2d.default" in msg and "divisor_override" in msg
    assert f"{Path(__file__).name}:{_line(Unfit.forward, 'adaptive_max_pool2d')}" in msg


def test_training_mode_is_refused_with_a_hint() -> None:
    module = ResNetish().train()
    with pytest.raises(ValueError, match=r"mutates state: .*running_mean.*call module.eval\(\)"):
        from_torch(module, (torch.randn(2, 3, 32, 32),))
    with pytest.raises(UnsupportedOperatorError, match=r"dropout in training mode; call module.eval\(\)"):
        from_torch(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train(), (torch.randn(2, 4),))


def test_random_numbers_are_refused() -> None:
    class Noisy(nn.Module):
        def forward(self, x: Any) -> Any:
            return x + torch.randn_like(x)

    with pytest.raises(UnsupportedOperatorError, match="draws random numbers"):
        from_torch(Noisy(), (torch.randn(3),))


def test_export_failures_say_so() -> None:
    class DataDependent(nn.Module):
        def forward(self, x: Any) -> Any:
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(ValueError, match="torch.export could not export DataDependent"):
        from_torch(DataDependent(), (torch.randn(3),))


# -------------------------------------------------------------------------------------- .pt2 files, the CLI
@pytest.fixture(scope="module")
def pt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    module, example, _, _ = _model("mobilenet")
    path = tmp_path_factory.mktemp("pt2") / "mobilenet.pt2"
    torch.export.save(torch.export.export(module, example), str(path))
    return path, module


def test_pt2_file_loads_through_the_driver(pt2: tuple[Path, nn.Module]) -> None:
    path, module = pt2
    mod = load_model(path)
    assert mod.main.attrs["model_name"] == "mobilenet"
    x = torch.randn(1, 3, 30, 30)
    _compare(interpret(mod, {"x": x.numpy()}), _expected(module, (x,)), RTOL, ATOL, "mobilenet.pt2")


def test_kiln_compile_accepts_a_pt2_file(pt2: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, module = pt2
    out = tmp_path / "m.kpkg"
    assert cli_main(["compile", str(path), "--target", NATIVE, "-o", str(out)]) == 0
    pkg = kiln.load(out)
    x = torch.randn(1, 3, 30, 30)
    _compare(running.run(pkg, {"x": x.numpy()}), _expected(module, (x,)), RTOL_C, ATOL_C, "kiln compile .pt2")


def test_kiln_compile_binds_symbolic_sizes_of_a_pt2_file(tmp_path: Path) -> None:
    module, _, _, _ = _model("manual_causal")
    path = tmp_path / "attn.pt2"
    batch = torch.export.Dim("batch", max=16)
    torch.export.save(
        torch.export.export(module, (torch.randn(2, 5, 16),), dynamic_shapes={"x": {0: batch}}), str(path)
    )
    out = tmp_path / "attn.kpkg"
    assert cli_main(["compile", str(path), "-t", NATIVE, "--shape", "x=3x5x16", "-o", str(out)]) == 0
    x = torch.randn(3, 5, 16)
    got = running.run(kiln.load(out), {"x": x.numpy()})
    _compare(got, _expected(module, (x,)), RTOL_C, ATOL_C, "kiln compile --shape")


def test_a_file_that_is_not_a_program_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.pt2"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match="not an exported program"):
        load_model(bad)
    assert cli_main(["compile", str(bad), "-t", NATIVE, "-o", str(tmp_path / "x.kpkg")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: ") and "not an exported program" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------ packaging
def test_importing_kiln_frontend_does_not_import_torch() -> None:
    code = "import sys, kiln, kiln.frontend, kiln.driver; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_how_to_lists_every_supported_operator() -> None:
    """docs/how-to/import-from-pytorch.md carries the list of ATen operators generated from CONVERTERS."""
    doc = (Path(__file__).parents[2] / "docs" / "how-to" / "import-from-pytorch.md").read_text()
    block = re.search(r"<!-- aten-operators:begin -->\n(.*?)<!-- aten-operators:end -->", doc, re.S)
    assert block, "the generated operator list is missing from the how-to"
    expected = supported_operators_markdown()
    assert block.group(1) == expected, "regenerate the list in the how-to with:\n" + expected
