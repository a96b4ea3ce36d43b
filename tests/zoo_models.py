"""A zoo of small but real models, one per family people bring to kiln from the wild, with seeded random weights
and onnxruntime as the numerical oracle (tests/e2e/test_model_zoo.py).

Each family has a full variant (run natively) and a *light* one (smaller image, fewer channels and layers: the
same operators and structure at a fraction of the cost, for the targets run under qemu-user):

* ``dbnet``: an OCR text detector in the style of DBNet: a strided convolution backbone, a feature pyramid whose
  top-down path upsamples with transposed convolutions (kernel 3, stride 2, output_padding 1), and a head that
  upsamples twice more (kernel 2, stride 2) to probability and threshold maps (sigmoids) and the differentiable
  binarization 1 / (1 + exp(-50 (P - T))).
* ``vad``: a voice activity detector in the style of Silero VAD, written with onnx.helper: inputs ``input`` (a
  chunk of audio), ``state`` (the LSTM's h and c) and ``sr`` (the sample rate, an int64 scalar) that drives an
  ``If``: 16 kHz convolves the whole chunk with stride 8, 8 kHz the first half with stride 4 (same number of
  frames); then a convolution, an LSTM started from the state, and a sigmoid head; outputs ``output`` (the
  speech probability) and ``stateN`` (the new state).
* ``segnet``: a segmentation net in the style of DeepLabV3+: dilated convolutions, a decoder that upsamples
  bilinearly with align_corners=True to meet the low-level features, and a final bilinear Resize to the input
  size with align_corners=False (half-pixel coordinates).
* ``vit``: a vision transformer: patch convolution, class token, learned position embedding, pre-norm encoder
  layers, a classifier on the class token.
* ``bert``: a BERT-style encoder written out the way Hugging Face's is: ``input_ids`` (int64) through word and
  position embeddings (Gather), an ``attention_mask`` (int64, 0 = padding) turned into an additive bias of
  float32's lowest value, per-head attention with explicit reshapes, erf GELU, post-norm; outputs the last
  hidden state and the tanh pooler.
* ``efficientnet`` (MBConv with squeeze-excitation and SiLU), ``mobilenetv3`` (hardswish, squeeze-excitation
  with hardsigmoid), ``regnet`` (RegNetY: group convolutions, squeeze-excitation), ``convnext`` (7x7 depthwise,
  LayerNorm over channels both as nn.LayerNorm channels-last and written out channels-first, GELU, layer
  scale): small nets of their blocks.

PyTorch models are exported with the legacy TorchScript exporter at opset 17, like tests/models.py.
:func:`zoo_path` gives the ONNX file (cached per process), :func:`zoo_feeds` the inputs to run it on.
"""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import cache_dir

TORCH_ZOO = ("dbnet", "segnet", "vit", "bert", "efficientnet", "mobilenetv3", "regnet", "convnext")
ZOO = ("dbnet", "vad", "segnet", "vit", "bert", "efficientnet", "mobilenetv3", "regnet", "convnext")
VAD_RATES = (16000, 8000)
BERT_VOCAB = 96


# ---------------------------------------------------------------------------------------------- PyTorch models
def _torch_zoo(name: str, light: bool):  # noqa: ANN202, C901, PLR0915  (one definition per family)
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    torch.manual_seed(1000 + TORCH_ZOO.index(name) * 2 + int(light))

    def conv_bn(
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        groups: int = 1,
        act: type | None = nn.ReLU,
        dil: int = 1,
    ) -> nn.Sequential:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, dil * (k // 2), dilation=dil, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)

    class SE(
        nn.Module
    ):  # squeeze-excitation; ``gate`` is Sigmoid (EfficientNet, RegNetY) or Hardsigmoid (V3)
        def __init__(self, ch: int, squeeze: int, act: type, gate: type) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, squeeze, 1), act(), nn.Conv2d(squeeze, ch, 1), gate()
            )

        def forward(self, x):  # noqa: ANN001, ANN202
            return x * self.body(x)

    class DBNet(nn.Module):
        def __init__(self, chans: tuple[int, int, int], inner: int) -> None:
            super().__init__()
            c1, c2, c3 = chans
            self.stem = nn.Sequential(conv_bn(3, c1 // 2, 3, 2), conv_bn(c1 // 2, c1, 3, 2))  # 1/4
            self.s2 = conv_bn(c1, c2, 3, 2)  # 1/8
            self.s3 = nn.Sequential(conv_bn(c2, c3, 3, 2), conv_bn(c3, c3, 3))  # 1/16
            self.lat = nn.ModuleList(nn.Conv2d(c, inner, 1) for c in chans)
            self.up = nn.ModuleList(
                nn.ConvTranspose2d(inner, inner, 3, 2, 1, output_padding=1) for _ in range(2)
            )
            self.smooth = conv_bn(inner, inner, 3)
            q = inner // 4

            def head() -> nn.Sequential:
                return nn.Sequential(
                    conv_bn(inner, q, 3),
                    nn.ConvTranspose2d(q, q, 2, 2),
                    nn.BatchNorm2d(q),
                    nn.ReLU(),
                    nn.ConvTranspose2d(q, 1, 2, 2),
                    nn.Sigmoid(),
                )

            self.prob, self.thresh = head(), head()

        def forward(self, x):  # noqa: ANN001, ANN202
            f1 = self.stem(x)
            f2 = self.s2(f1)
            f3 = self.s3(f2)
            p3 = self.lat[2](f3)
            p2 = self.lat[1](f2) + self.up[1](p3)
            p1 = self.lat[0](f1) + self.up[0](p2)
            feat = self.smooth(p1)
            p, t = self.prob(feat), self.thresh(feat)
            return torch.cat([p, t, torch.reciprocal(1 + torch.exp(-50 * (p - t)))], dim=1)

    class SegNet(nn.Module):
        def __init__(self, c: int, classes: int) -> None:
            super().__init__()
            self.low = nn.Sequential(conv_bn(3, c, 3, 2), conv_bn(c, c, 3, 2))  # 1/4
            self.high = nn.Sequential(conv_bn(c, 2 * c, 3, 2), conv_bn(2 * c, 2 * c, 3, dil=2))  # 1/8
            self.aspp = nn.ModuleList(
                [conv_bn(2 * c, c, 1), conv_bn(2 * c, c, 3, dil=2), conv_bn(2 * c, c, 3, dil=3)]
            )
            self.project = conv_bn(3 * c, c, 1)
            self.reduce = conv_bn(c, c // 2, 1)
            self.decode = conv_bn(c + c // 2, c, 3)
            self.classify = nn.Conv2d(c, classes, 1)

        def forward(self, x):  # noqa: ANN001, ANN202
            low = self.low(x)
            high = self.high(low)
            y = self.project(torch.cat([m(high) for m in self.aspp], dim=1))
            y = F.interpolate(y, size=low.shape[2:], mode="bilinear", align_corners=True)
            y = self.classify(self.decode(torch.cat([y, self.reduce(low)], dim=1)))
            return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)

    class ViT(nn.Module):
        def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, classes: int) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, dim, patch, patch)
            tokens = (image // patch) ** 2 + 1
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
            self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.5)
            layer = nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):  # noqa: ANN001, ANN202
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
            return self.head(self.norm(self.blocks(t))[:, 0])

    class BertLayer(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads, self.hd = heads, dim // heads
            self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim, eps=1e-12)
            self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def split(self, t):  # noqa: ANN001, ANN202
            b, s, _ = t.shape
            return t.view(b, s, self.heads, self.hd).permute(0, 2, 1, 3)

        def forward(self, h, bias):  # noqa: ANN001, ANN202
            q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (self.hd**0.5) + bias
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).flatten(2)
            h = self.ln1(h + self.o(ctx))
            return self.ln2(h + self.ff2(F.gelu(self.ff1(h))))

    class Bert(nn.Module):
        def __init__(self, seq: int, dim: int, depth: int, heads: int) -> None:
            super().__init__()
            self.words = nn.Embedding(BERT_VOCAB, dim)
            self.positions = nn.Embedding(seq, dim)
            self.types = nn.Embedding(2, dim)
            self.ln = nn.LayerNorm(dim, eps=1e-12)
            self.layers = nn.ModuleList(BertLayer(dim, heads) for _ in range(depth))
            self.pool = nn.Linear(dim, dim)

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN202
            pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
            h = self.words(input_ids) + self.positions(pos) + self.types(torch.zeros_like(input_ids))
            h = self.ln(h)
            bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
            for layer in self.layers:
                h = layer(h, bias)
            return h, torch.tanh(self.pool(h[:, 0]))

    class MBConv(nn.Module):  # EfficientNet: expand, depthwise, squeeze-excitation, project; SiLU
        def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
            super().__init__()
            hid = cin * expand
            layers: list[nn.Module] = [conv_bn(cin, hid, 1, act=nn.SiLU)] if expand != 1 else []
            layers += [
                conv_bn(hid, hid, k, stride, groups=hid, act=nn.SiLU),
                SE(hid, max(1, cin // 4), nn.SiLU, nn.Sigmoid),
            ]
            self.body = nn.Sequential(*layers, conv_bn(hid, cout, 1, act=None))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):  # noqa: ANN001, ANN202
            y = self.body(x)
            return x + y if self.residual else y

    class Bneck(nn.Module):  # MobileNetV3
        def __init__(self, cin: int, hid: int, cout: int, k: int, stride: int, se: bool, act: type) -> None:
            super().__init__()
            layers: list[nn.Module] = [conv_bn(cin, hid, 1, act=act)] if hid != cin else []
            layers.append(conv_bn(hid, hid, k, stride, groups=hid, act=act))
            if se:
                layers.append(SE(hid, max(8, hid // 4), nn.ReLU, nn.Hardsigmoid))
            self.body = nn.Sequential(*layers, conv_bn(hid, cout, 1, act=None))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):  # noqa: ANN001, ANN202
            y = self.body(x)
            return x + y if self.residual else y

    class YBlock(nn.Module):  # RegNetY: 1x1, 3x3 group convolution, squeeze-excitation, 1x1, residual
        def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                conv_bn(cin, cout, 1),
                conv_bn(cout, cout, 3, stride, groups=cout // group_width),
                SE(cout, max(1, cin // 4), nn.ReLU, nn.Sigmoid),
                conv_bn(cout, cout, 1, act=None),
            )
            self.short = (
                conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
            )

        def forward(self, x):  # noqa: ANN001, ANN202
            return torch.relu(self.body(x) + self.short(x))

    class ChannelsFirstLayerNorm(nn.Module):  # ConvNeXt's own LayerNorm over the channels of NCHW
        def __init__(self, ch: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.rand(ch) + 0.5)
            self.bias = nn.Parameter(torch.randn(ch) * 0.1)

        def forward(self, x):  # noqa: ANN001, ANN202
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]

    class ConvNeXtBlock(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.gamma = nn.Parameter(torch.rand(dim) * 0.5 + 0.1)  # layer scale

        def forward(self, x):  # noqa: ANN001, ANN202
            y = self.norm(self.dw(x).permute(0, 2, 3, 1))
            y = self.gamma * self.pw2(F.gelu(self.pw1(y)))
            return x + y.permute(0, 3, 1, 2)

    def classifier(cin: int, classes: int = 10) -> list[nn.Module]:
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]

    size = 32 if light else 64
    image = torch.randn(1, 3, size, size)
    examples: tuple = (image,)
    if name == "dbnet":
        model: nn.Module = DBNet((4, 8, 16), 8) if light else DBNet((8, 16, 32), 16)
    elif name == "segnet":
        model = SegNet(8 if light else 16, 5)
    elif name == "vit":
        model = ViT(size, 8, 32, 1, 2, 10) if light else ViT(size, 8, 64, 2, 4, 10)
    elif name == "bert":
        seq = 8 if light else 16
        model = Bert(seq, *((32, 1, 2) if light else (64, 2, 4)))
        examples = tuple(torch.from_numpy(v) for v in _bert_feed(seq, 0).values())
    elif name == "efficientnet":
        blocks = [MBConv(16, 16, 3, 1, 1), MBConv(16, 24, 3, 2, 4)]
        if not light:
            blocks += [MBConv(24, 24, 5, 1, 4), MBConv(24, 32, 5, 2, 4)]
        cout = 24 if light else 32
        model = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.SiLU), *blocks, conv_bn(cout, 64, 1, act=nn.SiLU), *classifier(64)
        )
    elif name == "mobilenetv3":
        hs, re = nn.Hardswish, nn.ReLU
        blocks = [Bneck(16, 16, 16, 3, 2, True, re), Bneck(16, 48, 24, 3, 2, False, re)]
        if not light:
            blocks += [Bneck(24, 64, 24, 5, 1, True, hs), Bneck(24, 72, 32, 5, 2, True, hs)]
        cout = 24 if light else 32
        model = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=hs),
            *blocks,
            conv_bn(cout, 96, 1, act=hs),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(96, 64),
            hs(),
            nn.Linear(64, 10),
        )
    elif name == "regnet":
        blocks = [YBlock(16, 32, 2, 8)]
        if not light:
            blocks += [YBlock(32, 32, 1, 8), YBlock(32, 64, 2, 16)]
        cout = 32 if light else 64
        model = nn.Sequential(conv_bn(3, 16, 3, 2), *blocks, *classifier(cout))
    elif name == "convnext":
        d1, d2 = (16, 32) if light else (32, 64)
        model = nn.Sequential(
            nn.Conv2d(3, d1, 4, 4),
            ChannelsFirstLayerNorm(d1),
            *(ConvNeXtBlock(d1) for _ in range(1 if light else 2)),
            ChannelsFirstLayerNorm(d1),
            nn.Conv2d(d1, d2, 2, 2),
            ConvNeXtBlock(d2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.LayerNorm(d2, eps=1e-6),
            nn.Linear(d2, 10),
        )
    else:
        raise KeyError(name)
    model.eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(
                mod, nn.BatchNorm2d
            ):  # running statistics and affine parameters that are not identity
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)
            elif isinstance(mod, nn.MultiheadAttention):  # TransformerEncoder's layers start as copies of one
                mod._reset_parameters()
            elif isinstance(mod, nn.Linear):
                mod.reset_parameters()
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)
    return model, examples


def _torch_export(name: str, light: bool) -> bytes:
    import torch

    model, examples = _torch_zoo(name, light)
    inputs, outputs = (
        (["input_ids", "attention_mask"], ["hidden", "pooled"]) if name == "bert" else (["x"], ["y"])
    )
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, examples, buf, dynamo=False, opset_version=17, input_names=inputs, output_names=outputs
        )
    return buf.getvalue()


# -------------------------------------------------------------------------------------- the VAD (onnx.helper)
def _vad(light: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(20 + int(light))
    chunk, ch, hid = (256, 8, 16) if light else (512, 16, 32)
    frames = chunk // 8

    def weight(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype("f4")

    def bias(n: int) -> np.ndarray:
        return (rng.standard_normal(n) * 0.1).astype("f4")

    inits = {
        "w16": weight(ch, 1, 16),  # 16 kHz front end: kernel 16, stride 8 over the whole chunk
        "b16": bias(ch),
        "w8": weight(ch, 1, 8),  # 8 kHz: kernel 8, stride 4 over its first half
        "b8": bias(ch),
        "w_enc": weight(2 * ch, ch, 3),
        "b_enc": bias(2 * ch),
        "lstm_w": (rng.standard_normal((1, 4 * hid, 2 * ch)) / np.sqrt(2 * ch)).astype("f4"),
        "lstm_r": (rng.standard_normal((1, 4 * hid, hid)) / np.sqrt(hid)).astype("f4"),
        "lstm_b": bias(8 * hid).reshape(1, 8 * hid),
        "w_dec": weight(1, hid) * 4,  # decisive probabilities, not all near 1/2
        "b_dec": bias(1),
        "rate16": np.array(16000, np.int64),
        "one_axis": np.array([1], np.int64),
        "half": np.array([chunk // 2], np.int64),
        "zero": np.array([0], np.int64),
        "two": np.array([2], np.int64),
        "s0": np.array([0], np.int64),
        "s1": np.array([1], np.int64),
        "s2": np.array([2], np.int64),
        "dec_shape": np.array([1, hid], np.int64),
    }
    feats = helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, ch, frames])
    then_branch = helper.make_graph(
        [
            helper.make_node(
                "Conv", ["x3", "w16", "b16"], ["conv16"], kernel_shape=[16], strides=[8], pads=[4, 4]
            ),
            helper.make_node("Relu", ["conv16"], ["feats16"]),
        ],
        "sr16k",
        [],
        [helper.make_tensor_value_info("feats16", TensorProto.FLOAT, [1, ch, frames])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Slice", ["x3", "zero", "half", "two"], ["x_half"]),
            helper.make_node(
                "Conv", ["x_half", "w8", "b8"], ["conv8"], kernel_shape=[8], strides=[4], pads=[2, 2]
            ),
            helper.make_node("Relu", ["conv8"], ["feats8"]),
        ],
        "sr8k",
        [],
        [helper.make_tensor_value_info("feats8", TensorProto.FLOAT, [1, ch, frames])],
    )
    nodes = [
        helper.make_node("Unsqueeze", ["input", "one_axis"], ["x3"]),
        helper.make_node("Equal", ["sr", "rate16"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["feats"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Conv", ["feats", "w_enc", "b_enc"], ["enc"], kernel_shape=[3], pads=[1, 1]),
        helper.make_node("Relu", ["enc"], ["enc_relu"]),
        helper.make_node("Transpose", ["enc_relu"], ["seq"], perm=[2, 0, 1]),  # (frames, batch 1, 2 ch)
        helper.make_node("Slice", ["state", "s0", "s1"], ["h0"]),
        helper.make_node("Slice", ["state", "s1", "s2"], ["c0"]),
        helper.make_node(
            "LSTM", ["seq", "lstm_w", "lstm_r", "lstm_b", "", "h0", "c0"], ["y", "h1", "c1"], hidden_size=hid
        ),
        helper.make_node("Concat", ["h1", "c1"], ["stateN"], axis=0),
        helper.make_node("Reshape", ["h1", "dec_shape"], ["h_flat"]),
        helper.make_node("Relu", ["h_flat"], ["h_relu"]),
        helper.make_node("Gemm", ["h_relu", "w_dec", "b_dec"], ["logit"], transB=1),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, chunk]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, hid]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, hid]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
        value_info=[feats],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------------------------------------ the interface
@functools.cache
def zoo_path(name: str, light: bool = False) -> Path:
    """The ONNX file of zoo model ``name`` (one of :data:`ZOO`), full or light, cached per process."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; models: {', '.join(ZOO)}")
    data = _vad(light).SerializeToString() if name == "vad" else _torch_export(name, light)
    path = cache_dir() / f"zoo_{name}{'_light' if light else ''}.onnx"
    path.write_bytes(data)
    return path


def _bert_feed(seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(seq) < seq * 3 // 4).astype(np.int64).reshape(1, seq)  # the last quarter is padding
    return {"input_ids": rng.integers(0, BERT_VOCAB, (1, seq), dtype=np.int64), "attention_mask": mask}


def zoo_feeds(path: Path, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs to run zoo model ``path`` on: one feed, two for the VAD (one per sample rate, so both branches
    of its ``If`` run). Token ids are in the vocabulary and masks keep the first 3/4 of the tokens."""
    m = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in m.graph.input}
    if "input_ids" in shapes:
        return [_bert_feed(shapes["input_ids"][1], seed)]
    if "sr" in shapes:
        base = {
            "input": (rng.standard_normal(shapes["input"]) * 0.3).astype("f4"),
            "state": (rng.standard_normal(shapes["state"]) * 0.5).astype("f4"),
        }
        return [{**base, "sr": np.array(rate, np.int64)} for rate in VAD_RATES]
    return [{k: rng.standard_normal(s).astype("f4") for k, s in shapes.items()}]
