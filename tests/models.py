"""Real models for end-to-end tests and benchmarks, with onnxruntime as the numerical oracle.

* the ONNX "light" models shipped inside the onnx wheel, and a variant of each with seeded random weights
  (every ConstantOfShape weight replaced by an initializer; BatchNorm variances positive) that also exposes the
  pre-softmax logits as an extra output: the originals' weights are all 0.02, so their softmax is nearly
  uniform and a wrong kernel could still "match";
* light variants of the large light models (:data:`LIGHT_VARIANTS`): their first layers, up to a chosen
  tensor, on a smaller image, with random weights: the family's structure at a few percent of the cost, for
  the emulated targets;
* small PyTorch-built models for the tests (ResNet-18-style, MobileNetV2-style, MLP, 2-layer transformer
  encoder, :data:`TORCH_MODELS`) and the benchmark set's real-size ones (:data:`BENCH_MODELS`: ResNet-18,
  MobileNetV2, EfficientNet-B0-, ConvNeXt-Tiny- and ViT-B/16-style nets at 224x224, a 6-layer encoder with an
  attention mask, an MLP at batch 1 and 64), with fixed seeds, exported to ONNX here.

Files are cached per process in a temporary directory, removed when the process exits.
"""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))
# The light models with 1-20 GFLOPs or 100-550 MB of weights: compiling, running or interpreting one takes tens
# of seconds natively and minutes under emulation (the tests run them natively, in the slow tier).
LARGE_LIGHT_MODELS = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "vgg19",
    "zfnet512",
)
TORCH_MODELS = ("resnet18ish", "mobilenetv2ish", "mlp", "transformer")
ORT_MAX_IR = 9


@functools.cache
def cache_dir() -> Path:
    """A temporary directory for this process's model files (over 1 GB with VGG-19), removed at exit."""
    d = Path(tempfile.mkdtemp(prefix="kiln-models-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def light_path(name: str) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx"


def _random_weight(rng: np.random.Generator, shape: tuple[int, ...], role: str) -> np.ndarray:
    if role == "bn_var":
        return rng.uniform(0.5, 1.5, shape).astype("f4")
    if role == "bn_scale":
        return rng.uniform(0.3, 0.8, shape).astype("f4")
    if len(shape) >= 2:  # LeCun-normal: activations stay O(1) even through residual stacks
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype("f4")
    return (rng.standard_normal(shape) * 0.1).astype("f4")


def _randomize_weights(g: onnx.GraphProto, seed: int) -> None:
    """Replace every ConstantOfShape weight of the light model graph ``g`` by a seeded random initializer."""
    rng = np.random.default_rng(seed)
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    roles: dict[str, str] = {}
    for n in g.node:
        if n.op_type == "BatchNormalization":
            roles[n.input[1]] = "bn_scale"
            roles[n.input[4]] = "bn_var"
        elif n.op_type == "Mul" and "bn" in n.input[1] and "_s" in n.input[1]:
            roles[n.input[1]] = "bn_scale"
    keep, new_inits = [], []
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in inits:
            shape = tuple(int(d) for d in inits[n.input[0]])
            w = _random_weight(rng, shape, roles.get(n.output[0], "weight"))
            new_inits.append(numpy_helper.from_array(w, n.output[0]))
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)


@functools.cache
def light_random_path(name: str, seed: int = 0) -> Path:
    """The light model with seeded random weights and its pre-softmax logits as a second output."""
    m = onnx.load(str(light_path(name)))
    g = m.graph
    _randomize_weights(g, seed)
    softmax = [n for n in g.node if n.op_type == "Softmax"]
    if softmax:  # (DenseNet-121 ends in its logits already)
        g.output.append(
            onnx.helper.make_tensor_value_info(softmax[-1].input[0], onnx.TensorProto.FLOAT, None)
        )
    path = cache_dir() / f"{name}_random{seed}.onnx"
    onnx.save(m, str(path))
    return path


# Light variants of the large light models, for the emulated targets: the random-weights model up to the tensor
# named here (everything that computes it, nothing after it) on an image of the given size. They keep their
# family's structure (inception modules with LRN; dense blocks with their transitions; stacks of 3x3
# convolutions) at a few percent of the FLOPs, so a run under qemu-user takes seconds instead of minutes; the
# full models run natively.
LIGHT_VARIANTS: dict[str, tuple[str, int]] = {
    "inception_v1": ("r137", 96),  # stem, LRNs, inception 3a-5b (not the 7x7 average pool or the classifier)
    "densenet121": ("r293", 64),  # stem, dense blocks 1-2 and their transitions
    "vgg19": ("r18", 32),  # blocks 1-3: eight 3x3 convolutions and three max pools
}


@functools.cache
def light_variant_path(name: str, seed: int = 0) -> Path:
    """The light variant of the large light model ``name`` (see :data:`LIGHT_VARIANTS`), with seeded random
    weights (drawn for the part that is kept only: VGG-19's classifier alone holds 120 M weights)."""
    cut, size = LIGHT_VARIANTS[name]
    m = onnx.load(str(light_path(name)))
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    needed: set[str] = set()
    todo = [cut]
    while todo:
        t = todo.pop()
        if t and t not in needed:
            needed.add(t)
            if t in producer:
                todo.extend(producer[t].input)
    nodes = [n for n in g.node if any(o in needed for o in n.output)]
    part = onnx.helper.make_graph(
        nodes, f"{g.name}_light", [], [], [t for t in g.initializer if t.name in needed]
    )
    _randomize_weights(part, seed)
    used = {i for n in part.node for i in n.input}
    weights = [t for t in part.initializer if t.name in used]
    constants = set(producer) | {t.name for t in g.initializer}
    images = [vi for vi in g.input if vi.name in needed and vi.name not in constants]
    assert len(images) == 1 and len(images[0].type.tensor_type.shape.dim) == 4, (
        f"{name}: {len(images)} inputs"
    )
    dims = images[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = size  # N x C x size x size
    del part.initializer[:]
    part.initializer.extend(weights)
    part.input.extend(images)
    part.output.append(onnx.helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None))
    variant = onnx.helper.make_model(part, opset_imports=m.opset_import, ir_version=m.ir_version)
    path = cache_dir() / f"{name}_light{seed}.onnx"
    onnx.save(variant, str(path))
    return path


# ------------------------------------------------------------------------------------------------ PyTorch models
def _torch_model(name: str):  # noqa: ANN202
    import torch
    from torch import nn

    torch.manual_seed({"resnet18ish": 1, "mobilenetv2ish": 2, "mlp": 3, "transformer": 4}[name])

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x):  # noqa: ANN001, ANN202
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.short(x))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hid = cin * expand
            self.use_res = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, hid, 1, bias=False),
                nn.BatchNorm2d(hid),
                nn.ReLU6(),
                nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
                nn.BatchNorm2d(hid),
                nn.ReLU6(),
                nn.Conv2d(hid, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )

        def forward(self, x):  # noqa: ANN001, ANN202
            y = self.body(x)
            return x + y if self.use_res else y

    if name == "resnet18ish":
        model = nn.Sequential(
            nn.Conv2d(3, 16, 7, 2, 3, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            Block(16, 16, 1),
            Block(16, 16, 1),
            Block(16, 32, 2),
            Block(32, 32, 1),
            Block(32, 64, 2),
            Block(64, 64, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )
        example = torch.randn(1, 3, 64, 64)
    elif name == "mobilenetv2ish":
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 6),
            InvertedResidual(24, 24, 1, 6),
            InvertedResidual(24, 32, 2, 6),
            InvertedResidual(32, 32, 1, 6),
            nn.Conv2d(32, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, 10),
        )
        example = torch.randn(1, 3, 64, 64)
    elif name == "mlp":
        model = nn.Sequential(
            nn.Linear(64, 128),
            nn.GELU(),
            nn.Linear(128, 128),
            nn.Tanh(),
            nn.Linear(128, 10),
            nn.Softmax(dim=-1),
        )
        example = torch.randn(4, 64)
    elif name == "transformer":
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, activation="gelu")
        model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        example = torch.randn(1, 16, 64)
    else:
        raise KeyError(name)
    model.eval()
    with torch.no_grad():  # BatchNorm running statistics that are not the identity
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return model, example


@functools.cache
def torch_onnx_path(name: str) -> Path:
    """Export the PyTorch model ``name`` (one of :data:`TORCH_MODELS` or :data:`BENCH_MODELS`) to ONNX (legacy
    TorchScript exporter, opset 17) and cache it."""
    import torch

    model, examples = _bench_model(name) if name in BENCH_MODELS else _torch_model(name)
    if not isinstance(examples, tuple):
        examples = (examples,)
    names = ["x", "mask"][: len(examples)]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, examples, buf, dynamo=False, opset_version=17, input_names=names, output_names=["y"]
        )
    path = cache_dir() / f"{name}.onnx"
    path.write_bytes(buf.getvalue())
    return path


# ------------------------------------------------------------------------- real-size PyTorch models (benchmarks)
# The benchmark set's own networks at their published sizes (ImageNet 224x224, 1000 classes), written here from
# their papers' layer tables with seeded random weights; "-style" where a detail is simplified (no stochastic
# depth or dropout: inference). Each is also an end-to-end test (tests/e2e/test_bench_models.py, slow).
BENCH_MODELS = (
    "resnet18",
    "mobilenetv2",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b16",
    "encoder6",
    "mlp_b1",
    "mlp_b64",
)
ENCODER_SEQ = 128  # encoder6: tokens per sequence; its mask input keeps the first 3/4 of them


def _bench_model(name: str):  # noqa: ANN202, C901, PLR0915  (one definition per network)
    import torch
    from torch import nn

    torch.manual_seed(100 + BENCH_MODELS.index(name))
    image = torch.randn(1, 3, 224, 224)

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):  # noqa: ANN202
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)

    class BasicBlock(nn.Module):  # ResNet-18/34
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None))
            self.short = (
                conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
            )

        def forward(self, x):  # noqa: ANN001, ANN202
            return torch.relu(self.body(x) + self.short(x))

    class MBConv(nn.Module):  # MobileNetV2 inverted residual; with squeeze-excitation and SiLU: EfficientNet
        def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, se: bool) -> None:
            super().__init__()
            hid = cin * expand
            act = nn.SiLU if se else nn.ReLU6
            layers: list[nn.Module] = [conv_bn(cin, hid, 1, act=act)] if expand != 1 else []
            layers.append(conv_bn(hid, hid, k, stride, groups=hid, act=act))
            self.expand = nn.Sequential(*layers)
            self.se = (
                nn.Sequential(
                    nn.AdaptiveAvgPool2d(1),
                    nn.Conv2d(hid, max(1, cin // 4), 1),
                    nn.SiLU(),
                    nn.Conv2d(max(1, cin // 4), hid, 1),
                    nn.Sigmoid(),
                )
                if se
                else None
            )
            self.project = conv_bn(hid, cout, 1, act=None)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):  # noqa: ANN001, ANN202
            y = self.expand(x)
            if self.se is not None:
                y = y * self.se(y)
            y = self.project(y)
            return x + y if self.residual else y

    class ChannelsLast(nn.Module):  # applies ``mod`` (a LayerNorm, an MLP) over the channels of NCHW
        def __init__(self, mod: nn.Module) -> None:
            super().__init__()
            self.mod = mod

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.mod(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class ConvNeXtBlock(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
            self.mlp = ChannelsLast(
                nn.Sequential(
                    nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
                )
            )
            self.gamma = nn.Parameter(torch.rand(dim, 1, 1) * 0.5 + 0.1)  # layer scale

        def forward(self, x):  # noqa: ANN001, ANN202
            return x + self.gamma * self.mlp(self.dw(x))

    class ViT(nn.Module):
        def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, patch: int = 16) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, dim, patch, patch)
            tokens = (224 // patch) ** 2 + 1
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(
                dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, 1000)

        def forward(self, x):  # noqa: ANN001, ANN202
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
            return self.head(self.norm(self.blocks(t))[:, 0])

    class Encoder(nn.Module):  # BERT-style: post-norm layers, GELU, an additive mask from a 0/1 key mask
        def __init__(self, dim: int = 384, depth: int = 6, heads: int = 6) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(
                dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)

        def forward(self, x, mask):  # noqa: ANN001, ANN202
            bias = ((1.0 - mask) * -10000.0).expand(x.shape[1], x.shape[1])  # (seq, seq): masked keys
            return self.norm(self.blocks(x, mask=bias))

    examples: object = image
    if name == "resnet18":
        stages: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        model = nn.Sequential(
            conv_bn(3, 64, 7, 2),
            nn.MaxPool2d(3, 2, 1),
            *stages,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(512, 1000),
        )
    elif name in ("mobilenetv2", "efficientnet_b0"):
        se = name == "efficientnet_b0"
        # (expand, out channels, repeats, stride, kernel) per stage
        table = (
            (
                (1, 16, 1, 1, 3),
                (6, 24, 2, 2, 3),
                (6, 40, 2, 2, 5),
                (6, 80, 3, 2, 3),
                (6, 112, 3, 1, 5),
                (6, 192, 4, 2, 5),
                (6, 320, 1, 1, 3),
            )
            if se
            else (
                (1, 16, 1, 1, 3),
                (6, 24, 2, 2, 3),
                (6, 32, 3, 2, 3),
                (6, 64, 4, 2, 3),
                (6, 96, 3, 1, 3),
                (6, 160, 3, 2, 3),
                (6, 320, 1, 1, 3),
            )
        )
        act = nn.SiLU if se else nn.ReLU6
        blocks: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=act)]
        cin = 32
        for t, c, n, s, k in table:
            for i in range(n):
                blocks.append(MBConv(cin, c, k, s if i == 0 else 1, t, se))
                cin = c
        blocks += [
            conv_bn(cin, 1280, 1, act=act),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(1280, 1000),
        ]
        model = nn.Sequential(*blocks)
    elif name == "convnext_tiny":
        dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), ChannelsLast(nn.LayerNorm(dims[0], eps=1e-6))]
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if i:
                layers += [
                    ChannelsLast(nn.LayerNorm(dims[i - 1], eps=1e-6)),
                    nn.Conv2d(dims[i - 1], dim, 2, 2),
                ]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        layers += [
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.LayerNorm(dims[-1], eps=1e-6),
            nn.Linear(dims[-1], 1000),
        ]
        model = nn.Sequential(*layers)
    elif name == "vit_b16":
        model = ViT()
    elif name == "encoder6":
        model = Encoder()
        examples = (torch.randn(1, ENCODER_SEQ, 384), _encoder_mask(torch))
    elif name in ("mlp_b1", "mlp_b64"):
        model = nn.Sequential(
            nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096), nn.GELU(), nn.Linear(4096, 1000)
        )
        examples = torch.randn(1 if name == "mlp_b1" else 64, 1024)
    else:
        raise KeyError(name)
    model.eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):  # running statistics that are not the identity
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
            elif isinstance(mod, nn.MultiheadAttention):  # TransformerEncoder's layers start as copies of one
                mod._reset_parameters()
            elif isinstance(mod, nn.Linear):
                mod.reset_parameters()
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)
    return model, examples


def _encoder_mask(torch):  # noqa: ANN001, ANN202
    mask = torch.zeros(1, ENCODER_SEQ)
    mask[:, : ENCODER_SEQ * 3 // 4] = 1.0
    return mask


# ---------------------------------------------------------------------------------- models with dynamic axes
def _dynamic_model(name: str):  # noqa: ANN202
    """``bert_dyn``: a BERT-style encoder over token ids with an attention mask, whose sequence length is a
    dynamic axis (token and position embeddings, the position table sliced to the sequence length, explicit
    reshapes with -1: what exporters produce for sequence models); ``cnn_dyn``: a small CNN (strided conv with
    batch norm, max pool, grouped conv, 1x1 conv, average pool, global pool, classifier) whose image height
    and width are dynamic axes."""
    import math

    import torch
    from torch import nn

    torch.manual_seed({"bert_dyn": 7, "cnn_dyn": 8}[name])

    class Layer(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.h, self.d = heads, dim // heads
            self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x, bias):  # noqa: ANN001, ANN202
            b = x.shape[0]
            q, k, v = self.qkv(x).reshape(b, -1, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d) + bias, dim=-1) @ v
            x = self.n1(x + self.out(a.transpose(1, 2).reshape(b, -1, self.h * self.d)))
            return self.n2(x + self.ff(x))

    class Bert(nn.Module):
        def __init__(self, vocab: int = 100, dim: int = 64, heads: int = 4, depth: int = 2) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, dim)
            self.pos = nn.Parameter(torch.randn(1, DYNAMIC_SEQ_MAX, dim) * 0.1)
            self.layers = nn.ModuleList([Layer(dim, heads) for _ in range(depth)])

        def forward(self, ids, mask):  # noqa: ANN001, ANN202
            x = self.tok(ids) + self.pos[:, : ids.shape[1]]
            bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            return x

    if name == "bert_dyn":
        model: nn.Module = Bert()
        examples: tuple = (torch.randint(0, 100, (1, 16)), torch.ones(1, 16))
        names, axes = ["ids", "mask"], {"ids": {1: "seq"}, "mask": {1: "seq"}, "y": {1: "seq"}}
    else:
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(8, 16, 3, 1, 1, groups=2),
            nn.ReLU(),
            nn.Conv2d(16, 16, 1),
            nn.ReLU6(),
            nn.AvgPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 5),
        )
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.2, 0.2)
            model[1].running_var.uniform_(0.5, 1.5)
        examples = (torch.randn(1, 3, 32, 32),)
        names, axes = ["x"], {"x": {2: "h", 3: "w"}}
    return model.eval(), examples, names, axes


DYNAMIC_MODELS = ("bert_dyn", "cnn_dyn")
DYNAMIC_SEQ_MAX = 512  # bert_dyn: the position table's rows, the largest sequence length


@functools.cache
def dynamic_onnx_path(name: str) -> Path:
    """A model of :data:`DYNAMIC_MODELS` exported to ONNX with its dynamic axes (named ``seq``, ``h``, ``w``)."""
    import torch

    model, examples, names, axes = _dynamic_model(name)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            examples,
            buf,
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["y"],
            dynamic_axes=axes,
        )
    path = cache_dir() / f"{name}.onnx"
    path.write_bytes(buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------------- oracles
def inputs_for(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    rng = np.random.default_rng(seed)
    out = {}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.name == "mask":  # a key mask (encoder6): the first 3/4 of the tokens are real, the rest padding
            out[vi.name] = (np.arange(shape[-1]) < shape[-1] * 3 // 4).astype("f4").reshape(shape)
        else:
            out[vi.name] = rng.standard_normal(shape).astype("f4")
    return out


def onnxruntime_outputs(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs), strict=True))
