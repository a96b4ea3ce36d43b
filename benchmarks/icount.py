"""Instruction counts under QEMU: kiln's vector builds against a scalar reference of the same work, one table.

    python benchmarks/icount.py [--models cnn,encoder,mlp]

Each model is compiled for aarch64-linux and riscv64-linux-rvv and for a scalar reference that does the same
work: riscv64-linux (the same ISA without RVV) and, for aarch64, ``aarch64-linux-novec``: aarch64-linux with
``vector_bits = 0`` (written to a temporary ``KILN_TARGET_PATH`` directory), so kiln emits no SIMD code of
its own; LLVM's auto-vectorizer still runs with NEON, as it does for every kiln build. Each package runs once
under QEMU user mode with kiln's count plugin (``Package.count_instructions``, one thread, seeded inputs).
Columns: the kernels' guest instructions in millions (exact, the same every run) for kiln and the reference,
their ratio (below 1: fewer instructions than the reference), and kiln's three largest kernels.

The models are small enough to emulate: a ResNet basic block (64 channels, 28x28), one transformer encoder
layer (128 wide, 4 heads, 32 tokens), an MLP (256-512-512-10, batch 8) and a smaller one (64-128-10, batch 4:
fewer rows than a register tile).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kiln.frontend import nn
from kiln.ir import Module

TARGETS = {"aarch64-linux": "aarch64-linux-novec", "riscv64-linux-rvv": "riscv64-linux"}
TARGET_DIR = Path(__file__).resolve().parents[1] / "targets"


class BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


class EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ff(x))


MODELS: dict[str, Callable[[], Module]] = {
    "cnn": lambda: BasicBlock(64).export({"x": (1, 64, 28, 28)}, name="resnet_block"),
    "encoder": lambda: EncoderLayer(128, 4).export({"x": (1, 32, 128)}, name="encoder_layer"),
    "mlp": lambda: nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    ).export({"x": (8, 256)}, name="mlp"),
    "mlp_small": lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).export(
        {"x": (4, 64)}, name="mlp_small"
    ),
}


def write_novec_target(directory: Path) -> None:
    """aarch64-linux without kiln's SIMD code (``vector_bits = 0``, default schedules) as ``aarch64-linux-novec``."""
    text = (TARGET_DIR / "aarch64-linux.toml").read_text().split("\n[", 1)[0]  # the target, not its schedules
    text = text.replace('name = "aarch64-linux"', 'name = "aarch64-linux-novec"')
    text = text.replace("vector_bits = 128", "vector_bits = 0")
    (directory / "aarch64-linux-novec.toml").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    args = ap.parse_args()
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="kiln-icount-targets-") as tdir:
        write_novec_target(Path(tdir))
        os.environ["KILN_TARGET_PATH"] = os.pathsep.join(
            filter(None, [tdir, os.environ.get("KILN_TARGET_PATH")])
        )
        import kiln  # after KILN_TARGET_PATH is set

        print(
            f"{'model':<8} {'target':<18} {'kiln Minstr':>11} {'ref Minstr':>10} {'ratio':>6}  top kernels (Minstr)"
        )
        for name in names:
            mod = MODELS[name]()
            for target, reference in TARGETS.items():
                counts = []
                for t in (target, reference):
                    pkg = kiln.compile(mod, t)
                    rng = np.random.default_rng(0)
                    inputs = {
                        s["name"]: rng.standard_normal(s["shape"]).astype(s["dtype"])
                        for s in pkg.manifest["inputs"]
                    }
                    counts.append(pkg.count_instructions(inputs))
                ours, ref = counts
                top = ", ".join(f"{k} {c / 1e6:.2f}" for k, c in ours.top(3))
                print(
                    f"{name:<8} {target:<18} {ours.kernel_total / 1e6:>11.2f} {ref.kernel_total / 1e6:>10.2f} "
                    f"{ours.kernel_total / ref.kernel_total:>6.2f}  {top}",
                    flush=True,
                )
        print("reference: riscv64-linux-rvv vs riscv64-linux (no RVV); aarch64-linux vs aarch64-linux-novec")


if __name__ == "__main__":
    main()
