"""ATen operators one by one through kiln.frontend.from_torch, torch as the oracle: small modules that each
exercise a family (elementwise with torch's scalar and type-promotion rules, shapes, indexing, reductions,
linear algebra, convolutions, normalizations, pooling, resizing, attention), run through ``interpret`` and
compiled for x86-64."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import running  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import kiln  # noqa: E402
from kiln.frontend import from_torch  # noqa: E402
from kiln.ops.interpreter import interpret  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.export's pytree deprecations
    pytest.mark.filterwarnings("ignore:The tensor attributes"),  # torch's note on nn.LSTM's flat weights
]


class Fn(nn.Module):
    """A module around a function of its inputs, of fixed parameters ``s.<name>`` (tensors) and of submodules
    (given as factories, built here under the test's seed)."""

    def __init__(self, fn: Any, **params: Any) -> None:
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            if isinstance(v, torch.Tensor):
                self.register_parameter(k, nn.Parameter(v, requires_grad=False))
            else:
                setattr(self, k, v())

    def forward(self, *xs: Any) -> Any:
        return self.fn(self, *xs)


def r(*shape: int, lo: float = -2.0, hi: float = 2.0) -> Any:
    return torch.rand(*shape) * (hi - lo) + lo


def _bool_mask() -> Any:
    m = torch.rand(2, 1, 5, 6) > 0.3
    m[0, 0, 2] = False  # a fully masked row: zeros, as torch gives
    return m


def _scatter(x: Any, y: Any) -> Any:
    x = x.clone()
    x[:, 1:3] = y
    x[2] = 0.5
    return x


torch.manual_seed(0)  # the inputs below
CASES: dict[str, tuple[Any, ...]] = {
    # elementwise, with torch's scalar handling and type promotion
    "arith_scalars": (lambda s, x: (x + 1) * 2 - 0.5 / (x.abs() + 1) + 3 - x, [r(2, 3)]),
    "sub_alpha": (lambda s, x, y: torch.sub(x, y, alpha=2) + torch.add(x, y, alpha=0.5), [r(2, 3), r(3)]),
    "rsub": (lambda s, x: 1 - x, [r(4)]),
    "int_promotion": (
        lambda s, i, x: i * x + i / 2 + (i // 3) + i % 3,
        [torch.randint(-9, 9, (2, 4)), r(2, 4)],
    ),
    "floor_divide_neg": (
        lambda s, i: torch.div(i, 4, rounding_mode="floor") + torch.div(i, 4, rounding_mode="trunc"),
        [torch.randint(-20, 20, (8,))],
    ),
    "float_div_modes": (
        lambda s, x: torch.div(x, 0.7, rounding_mode="floor") + torch.fmod(x, 0.7) + torch.remainder(x, 0.7),
        [r(8, lo=-5, hi=5)],
    ),
    "pow_variants": (
        lambda s, x: (
            x.pow(2)
            + x.abs().pow(0.5)
            + x.abs().add(1).pow(-1)
            + x.abs().pow(1.7)
            + torch.pow(2.0, x)
            + x.abs().add(1).rsqrt()
        ),
        [r(3, 4)],
    ),
    "compare_logic": (
        lambda s, x, y: ((x > 0) & (y <= 0.5)) | (x == y) ^ (x != 0.25) | ~(x >= y),
        [r(3, 4), r(3, 4)],
    ),
    "unary_math": (
        lambda s, x: (
            x.exp()
            + x.sin()
            + x.cos()
            + x.tanh()
            + x.sigmoid()
            + x.erf()
            + x.floor()
            + x.ceil()
            + x.round()
            + x.sign()
            + x.atan()
            + torch.trunc(x)
            + x.abs().log1p()
            + x.expm1()
            + x.abs().add(0.1).log2()
            + torch.square(x)
        ),
        [r(3, 5)],
    ),
    "activations": (
        lambda s, x: (
            F.relu(x)
            + F.relu6(3 * x)
            + F.hardtanh(x, -0.5, 0.7)
            + F.leaky_relu(x, 0.1)
            + F.elu(x, 0.8)
            + F.selu(x)
            + F.gelu(x)
            + F.gelu(x, approximate="tanh")
            + F.silu(x)
            + F.hardswish(x)
            + F.hardsigmoid(x)
            + F.mish(x)
            + F.softplus(x)
            + F.softplus(x, beta=2.0)
            + F.logsigmoid(x)
            + F.celu(x)
        ),
        [r(4, 6, lo=-6, hi=6)],
    ),
    "prelu": (lambda s, x: F.prelu(x, s.w), [r(2, 3, 4, 4)], {"w": torch.tensor([0.1, -0.2, 0.3])}),
    "clamp": (
        lambda s, x, lo: x.clamp(-1, 1) + x.clamp(min=lo) + x.clamp(max=0.3) + torch.clamp_min(x, 0.1),
        [r(3, 4), r(4)],
    ),
    "clamp_int": (lambda s, i: i.clamp(-3, 3), [torch.randint(-9, 9, (6,))]),
    "where_masked_fill": (
        lambda s, x: torch.where(x > 0, x, 0.1 * x).masked_fill(x < -1, 5.0) + torch.where(x > 0.5, 1.0, 0.0),
        [r(3, 4)],
    ),
    "isnan_isinf": (
        lambda s, x: torch.where(torch.isnan(x) | torch.isinf(x), 0.0, x),
        [torch.tensor([1.0, float("nan"), float("inf"), -2.0])],
    ),
    "cast": (
        lambda s, x: (x * 3).to(torch.int32).to(torch.float32) + x.int().float() + (x > 0).float(),
        [r(8)],
    ),
    # shapes
    "views": (
        lambda s, x: (
            x.view(2, -1)
            .reshape(3, 2, 4)
            .flatten(0, 1)
            .unflatten(0, (2, 3))
            .unsqueeze(1)
            .squeeze(1)
            .permute(2, 0, 1)
            .transpose(0, 2)
            .contiguous()
        ),
        [r(2, 3, 4)],
    ),
    "t_mT": (lambda s, x: x[0].t() + x.mT[1], [r(2, 4, 4)]),
    "expand_repeat": (
        lambda s, x: (
            x.expand(2, 3, 4) + x.repeat(2, 1, 1) + x.repeat(1, 1, 1).expand_as(torch.empty(2, 3, 4))
        ),
        [r(1, 3, 4)],
    ),
    "repeat_more_dims": (lambda s, x: x.repeat(2, 3, 1), [r(3, 2)]),
    "cat_stack": (
        lambda s, x, y: torch.cat([x, y, x], 1) + torch.stack([x, y], 2).sum(2).repeat(1, 3),
        [r(2, 3), r(2, 3)],
    ),
    "split_chunk_unbind": (
        lambda s, x: (
            torch.cat(x.split(2, 1)[::-1], 1)
            + torch.cat(x.chunk(3, 1), 1)
            + torch.stack(x.unbind(0), 0)
            + torch.cat(x.split([1, 4, 1], 1), 1)
        ),
        [r(2, 6)],
    ),
    "slice_select_narrow": (
        lambda s, x: (
            x[:, 1:3]
            + x[:, ::2][:, :2]
            + x[0, None, 3:5]
            + x.narrow(1, 2, 2)
            + x[:, -2:]
            + x.select(1, -1)[:, None]
        ),
        [r(3, 5)],
    ),
    "flip_roll": (
        lambda s, x: (
            x.flip(1)
            + x.flip((0, 1))
            + torch.roll(x, 2, 1)
            + torch.roll(x, (1, -1), (0, 1))
            + torch.roll(x, 3)
        ),
        [r(3, 5)],
    ),
    "index_gather": (
        lambda s, x, i: x[:, i] + x.index_select(1, i) + x[i[1:]].sum(0)[:3],
        [r(4, 5), torch.tensor([4, 0, 2])],
    ),
    "gather_scatter": (
        lambda s, x, i: (
            torch.gather(x, 1, i),
            x.scatter(1, i, 0.5),
            x.scatter(0, i[:2] % 3, x[1:] * 2),
            x.scatter_add(1, i, torch.ones(3, 5)),
            x.scatter_reduce(1, i, x[:, :2], "amax"),
            torch.sort(x, 1)[0],
            torch.sort(x, 0, descending=True)[1],
            x.argsort(1),
        ),
        [torch.randperm(15).reshape(3, 5).float(), torch.tensor([[0, 4], [2, 2], [1, 3]])],
    ),
    "glu_selu_einsum": (
        lambda s, x: (
            F.glu(x, -1).sum()
            + F.selu(x)
            + torch.einsum("ij,kj->ik", x, x)[:, :4]
            + torch.cumsum(x, 0)
            + torch.cumprod(x, 1)
        ),
        [r(4, 4)],
    ),
    "advanced_indexing": (
        lambda s, x, i, j: (
            x[i, j],
            x[:, i, j],
            x[i[:, None], :, j],
            x[torch.arange(2), :, j[:2]],
            x[..., i],
            x[1, i, 0],
        ),
        [r(3, 4, 5), torch.tensor([0, 2, -1]), torch.tensor([1, 3, 0])],
    ),
    "bicubic_upsample": (lambda s, x: F.interpolate(x, scale_factor=2, mode="bicubic"), [r(1, 2, 4, 5)]),
    "embedding": (
        lambda s, i: F.embedding(i, s.w) * 2,
        [torch.randint(0, 10, (2, 7))],
        {"w": torch.randn(10, 4)},
    ),
    "pad_modes": (
        lambda s, x: (
            F.pad(x, (1, 2, 2, 1))
            + F.pad(x, (1, 2, 2, 1), value=0.5)[..., :, :]
            + F.pad(x, (1, 2, 2, 1), mode="reflect")
            + F.pad(x, (1, 2, 2, 1), mode="replicate")
            + F.pad(x, (1, 2, 2, 1), mode="circular")
        ),
        [r(1, 2, 5, 6)],
    ),
    "pad_crop": (lambda s, x: F.pad(x, (-1, 2)), [r(2, 5)]),
    "tril_triu": (lambda s, x: torch.tril(x) + torch.triu(x, 1) + torch.tril(x, -1), [r(2, 4, 5)]),
    "pixel_shuffle": (lambda s, x: F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2) + x, [r(1, 8, 3, 4)]),
    "arange_full": (
        lambda s, x: (
            x
            + torch.arange(4.0) * torch.ones(3, 4)
            + torch.full((3, 4), 2.5)
            + torch.zeros_like(x)
            + torch.ones_like(x) * torch.arange(3)[:, None]
        ),
        [r(3, 4)],
    ),
    "full_like_of_input": (lambda s, x: torch.full_like(x, 7) - x, [r(3, 4)]),
    "slice_scatter": (lambda s, x, y: _scatter(x, y), [r(4, 5), r(4, 2)]),
    # reductions
    "reductions": (
        lambda s, x: (
            x.mean()
            + x.sum(1, keepdim=True)
            + x.amax(0)
            + x.amin((0, 1))
            + x.max()
            + x.std(1, keepdim=True)
            + x.var(0, unbiased=False)
            + x.prod(1, keepdim=True)
            + torch.logsumexp(x, 1, keepdim=True)
            + x.norm(dim=1, keepdim=True)
        ),
        [r(3, 4)],
    ),
    "var_mean": (
        lambda s, x: torch.var_mean(x, (1, 2), keepdim=True)[0] * torch.var_mean(x, 2)[1][..., None],
        [r(2, 3, 4)],
    ),
    "max_dim_argmax": (
        lambda s, x: (
            x.max(1)[0],
            x.max(1, keepdim=True)[1],
            x.min(0)[1],
            x.argmax(),
            x.argmin(1, keepdim=True),
        ),
        [torch.randperm(20).reshape(4, 5).float()],
    ),
    "any_all": (lambda s, x: (x > 0).any(1) & (x > -1).all(1) | (x > 1.5).any(), [r(4, 5)]),
    "sum_int": (lambda s, i: i.sum(1) + (i > 0).sum(), [torch.randint(-5, 5, (3, 4))]),
    "cumsum_topk": (
        lambda s, x: (x.cumsum(1), *torch.topk(x, 3, 1), torch.topk(x, 2, 0, largest=False)[0]),
        [torch.randperm(30).reshape(5, 6).float()],
    ),
    "softmaxes": (lambda s, x: F.softmax(x, 1) + F.log_softmax(x, -1) + F.softmax(x, 0), [r(3, 4, 5)]),
    # linear algebra
    "matmuls": (
        lambda s, a, b, v: (
            a @ b,
            torch.bmm(a, b),
            torch.mm(a[0], b[0]),
            a[0] @ v,
            v @ b[1],
            torch.baddbmm(a @ b, a, b, beta=0.5, alpha=2),
            torch.addmm(v[:3, None], a[0], b[0]),
            torch.einsum("bij,bjk->bik", a, b),
            F.linear(a, s.w),
            F.linear(a, s.w, s.b),
        ),
        [r(2, 3, 4), r(2, 4, 5), r(4)],
        {"w": torch.randn(6, 4), "b": torch.randn(6)},
    ),
    "matmul_broadcast": (lambda s, a, b: a @ b, [r(2, 1, 3, 4), r(5, 4, 2)]),
    # convolution, normalization, pooling
    "conv_variants": (
        lambda s, x: (
            F.conv2d(x, s.w, s.b, stride=2, padding=1).sum()
            + F.conv2d(x, s.w, None, padding="same", dilation=2).mean()
            + F.conv2d(x, s.w, padding="valid").sum()
        ),
        [r(1, 4, 9, 8)],
        {"w": torch.randn(6, 4, 3, 3), "b": torch.randn(6)},
    ),
    "conv_grouped_asym": (
        lambda s, x: F.conv2d(x, s.w, stride=(2, 1), padding=(1, 0), groups=2, dilation=(1, 2)),
        [r(2, 4, 7, 9)],
        {"w": torch.randn(6, 2, 3, 2)},
    ),
    "conv1d": (
        lambda s, x: F.conv1d(x, s.w, s.b, stride=2, padding=2, dilation=2) + 0,
        [r(2, 3, 17)],
        {"w": torch.randn(5, 3, 3), "b": torch.randn(5)},
    ),
    "conv_transpose": (
        lambda s, x: F.conv_transpose2d(x, s.w, s.b, stride=2, padding=1, output_padding=1),
        [r(1, 4, 5, 6)],
        {"w": torch.randn(4, 3, 3, 3), "b": torch.randn(3)},
    ),
    "conv_transpose1d_groups": (
        lambda s, x: F.conv_transpose1d(x, s.w, stride=3, groups=2),
        [r(1, 4, 5)],
        {"w": torch.randn(4, 2, 4)},
    ),
    "norms": (
        lambda s, x: (
            F.group_norm(x, 2, s.g, s.b)
            + F.group_norm(x, 4)
            + F.layer_norm(x, (5, 5))
            + F.layer_norm(x, (5,), s.ln, None)
            + F.instance_norm(x)
            + F.rms_norm(x, (5,), s.ln)
            + F.rms_norm(x, (5,), eps=1e-3)
        ),
        [r(2, 4, 5, 5)],
        {"g": torch.randn(4), "b": torch.randn(4), "ln": torch.randn(5)},
    ),
    "batch_norm_1d": (
        lambda s, x: F.batch_norm(x, s.m, s.v, s.g, s.b, eps=1e-3) + F.batch_norm(x, s.m, s.v),
        [r(3, 4)],
        {"m": torch.randn(4), "v": torch.rand(4) + 0.5, "g": torch.randn(4), "b": torch.randn(4)},
    ),
    "pools": (
        lambda s, x: (
            F.max_pool2d(x, 3, 2, 1),
            F.max_pool2d(x, 2, ceil_mode=True),
            F.avg_pool2d(x, 3, 2, 1),
            F.avg_pool2d(x, 3, 2, 1, count_include_pad=False, ceil_mode=True),
            F.max_pool2d(x, (2, 3), (1, 2), dilation=(2, 1)),
            F.adaptive_avg_pool2d(x, (3, 2)),
            F.adaptive_avg_pool2d(x, (4, 3)),
            F.adaptive_avg_pool2d(x, (5, 5)),
            F.adaptive_max_pool2d(x, 1),
            F.adaptive_avg_pool2d(x, 1),
        ),
        [r(2, 3, 9, 8)],
    ),
    "pool_unbatched": (lambda s, x: F.max_pool2d(x, 2), [r(3, 6, 6)]),
    "upsample": (
        lambda s, x: (
            F.interpolate(x, scale_factor=2),
            F.interpolate(x, size=(7, 9)),
            F.interpolate(x, scale_factor=2, mode="bilinear"),
            F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True),
            F.interpolate(x, size=(7, 5), mode="nearest-exact"),
            F.interpolate(x, scale_factor=0.5, mode="bilinear"),
        ),
        [r(1, 2, 4, 6)],
    ),
    # attention
    "sdpa_masks": (
        lambda s, q, k, v, bm, fm: (
            F.scaled_dot_product_attention(q, k, v),
            F.scaled_dot_product_attention(q, k, v, attn_mask=bm),
            F.scaled_dot_product_attention(q, k, v, attn_mask=fm),
            F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3),
        ),
        [r(2, 3, 5, 4), r(2, 3, 6, 4), r(2, 3, 6, 4), _bool_mask(), r(5, 6)],
    ),
    "sdpa_gqa_causal": (
        lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        [r(1, 4, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)],
    ),
    "mha": (
        lambda s, x, pad: s.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0],
        [r(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])],
        {"attn": lambda: nn.MultiheadAttention(8, 2, batch_first=True)},
    ),
    "transformer_decoder_layer": (
        lambda s, x, mem: s.dec(
            x, mem, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5), tgt_is_causal=True
        ),
        [r(2, 5, 16), r(2, 7, 16)],
        {"dec": lambda: nn.TransformerDecoderLayer(16, 2, 32, batch_first=True, norm_first=True)},
    ),
    # recurrent layers: torch unrolls them over the (static) sequence
    "lstm_gru": (
        lambda s, x: s.lstm(x)[0] + s.gru(x)[0],
        [r(2, 3, 4)],
        {"lstm": lambda: nn.LSTM(4, 8, batch_first=True), "gru": lambda: nn.GRU(4, 8, batch_first=True)},
    ),
}


def _build(name: str) -> tuple[nn.Module, tuple[Any, ...]]:
    torch.manual_seed(1)
    fn, inputs, *params = CASES[name]
    m = Fn(fn, **(params[0] if params else {}))
    return m.eval(), tuple(inputs)


def _check(name: str, run: Any, rtol: float, atol: float) -> None:
    module, example = _build(name)
    mod = from_torch(module, example)
    got = run(mod, {p.name: a.numpy() for p, a in zip(mod.main.params, example, strict=True)})
    with torch.no_grad():
        want = module(*example)
    want = want if isinstance(want, tuple) else (want,)
    names = ["output"] if len(want) == 1 else [f"output_{i}" for i in range(len(want))]
    assert sorted(got) == sorted(names)
    for k, w in zip(names, want, strict=True):
        w = w.numpy()
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, (
            name,
            k,
            got[k].dtype,
            got[k].shape,
            w.shape,
        )
        np.testing.assert_allclose(got[k], w, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{name}: {k}")


@pytest.mark.parametrize("name", CASES)
def test_interpret_matches_torch(name: str) -> None:
    _check(name, interpret, 1e-4, 1e-5)


@pytest.mark.parametrize("name", CASES)
def test_compiled_for_x86_64_matches_torch(name: str) -> None:
    _check(name, lambda mod, x: running.run(kiln.compile(mod, "x86_64-linux"), x), 1e-3, 1e-4)
