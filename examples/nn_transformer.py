"""A small transformer language model built with kiln.frontend.nn module classes (as one would with
torch.nn), its weights bound from a safetensors file, compiled for several targets and checked against a NumPy
implementation written independently of kiln.

    python examples/nn_transformer.py [--targets x86_64-linux,aarch64-linux,riscv64-linux]

The model: token and learned position embeddings, two pre-norm blocks (causal multi-head self-attention and a
GELU MLP, each with a residual connection), a final layer norm and a linear head giving next-token logits.
Targets other than the host's run under qemu-user.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import transformer_numpy
from transformer_numpy import causal_attention, gelu, largest_difference, layer_norm

import kiln
from kiln.frontend import nn
from kiln.ir import Module as IRModule

VOCAB, SEQ, DIM, HEADS, LAYERS = 64, 8, 32, 4, 2


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: nn.Tensor, mask: np.ndarray) -> nn.Tensor:
        x = x + self.attn(self.ln1(x), attn_mask=mask)
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(np.zeros((SEQ, DIM), "float32"))
        self.blocks = nn.ModuleList([Block(DIM, HEADS) for _ in range(LAYERS)])
        self.ln = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, ids: nn.Tensor) -> nn.Tensor:
        x = self.tok(ids) + self.pos
        causal = np.triu(np.ones((SEQ, SEQ), bool), 1)  # True: may not attend (a later token)
        for block in self.blocks:
            x = block(x, causal)
        return self.head(self.ln(x))


def random_weights(model: nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights for every parameter (as a trained checkpoint would give them), by parameter path."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape)
        if ".ln" in f".{name}" and name.endswith("weight"):  # layer norm scales near 1
            out[name] = (1 + 0.1 * noise).astype("float32")
        else:
            out[name] = (0.5 * noise / math.sqrt(p.shape[-1])).astype("float32")
    return out


def build(weights_file: Path) -> IRModule:
    """The exported model with its parameters bound from a safetensors file."""
    model = TinyLM()
    mod = model.export({"ids": ((1, SEQ), "int64")}, name="tiny_lm", output_names=["logits"])
    return nn.bind(mod, weights_file)


def numpy_reference(ids: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """The same model in float64 NumPy, from the weights by name (nothing from kiln)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}

    def ln(x: np.ndarray, p: str) -> np.ndarray:
        return layer_norm(x, w[f"{p}.weight"], w[f"{p}.bias"])

    def linear(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[f"{p}.weight"].T + w[f"{p}.bias"]

    def attention(x: np.ndarray, p: str) -> np.ndarray:
        q, k, v = np.split(x @ w[f"{p}.in_proj_weight"].T + w[f"{p}.in_proj_bias"], 3, axis=-1)
        q, k, v = (t.reshape(SEQ, HEADS, DIM // HEADS).transpose(1, 0, 2) for t in (q, k, v))
        a = causal_attention(q, k, v)
        return linear(a.transpose(1, 0, 2).reshape(SEQ, DIM), f"{p}.out_proj")

    x = w["tok.weight"][ids[0]] + w["pos"]
    for i in range(LAYERS):
        b = f"blocks.{i}"
        x = x + attention(ln(x, f"{b}.ln1"), f"{b}.attn")
        x = x + linear(gelu(linear(ln(x, f"{b}.ln2"), f"{b}.mlp.0")), f"{b}.mlp.2")
    return linear(ln(x, "ln"), "head")[None]


def run(target: str, seed: int = 0) -> float:
    """Compile the model for ``target`` and run it once; returns the largest difference from NumPy."""
    from safetensors.numpy import save_file

    weights = random_weights(TinyLM(), seed)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tiny_lm.safetensors"
        save_file(weights, str(path))
        pkg = kiln.compile(build(path), target)
    ids = np.random.default_rng(seed + 1).integers(0, VOCAB, (1, SEQ)).astype("int64")
    return largest_difference(pkg, {"ids": ids}, "logits", numpy_reference(ids, weights))


def main(argv: list[str] | None = None) -> None:
    transformer_numpy.main(__doc__, run, argv, banner=str(TinyLM()))


if __name__ == "__main__":
    main()
