"""kiln end to end, on a model that has learned something: a small CNN trained here, in seconds, on the
handwritten digits that scikit-learn ships (1797 8x8 images, 10 classes), compiled for several instruction
sets and run on devices leased from a local device farm.

    python examples/demo.py [--targets x86_64-linux,aarch64-linux,mps2-an386] [--test-images N]

What happens:
1. The CNN (two 3x3 convolutions, global average pooling, a linear layer) is trained with PyTorch on 75% of
   the digits and exported to ONNX; onnxruntime gives the reference predictions on the held-out 25%.
2. A tracker and one device server per target start on 127.0.0.1 (x86-64 runs natively, the others under
   qemu-user, boards under qemu-system).
3. For each target the model is compiled, uploaded to a device leased from the tracker, and run on every
   held-out image there; the device's clock times single-image latency.
The table shows, per device: accuracy on the held-out digits, how many predictions equal onnxruntime's, the
largest difference from onnxruntime's logits, and the median latency measured on the device: wall time on the
host and under qemu-user (emulated, not what a real board would take); on the microcontroller boards
(Cortex-M4 mps2-an386, RV32 riscv32-virt) QEMU's -icount virtual time, one nanosecond per instruction.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import kiln
import kiln.rpc
import kiln.targets

DEFAULT_TARGETS = "x86_64-linux,aarch64-linux,riscv64-linux-rvv,mps2-an386,riscv32-virt"


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits, scaled to [0, 1], as (train_x, train_y, test_x, test_y); x is N x 1 x 8 x 8 float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[:, None]
    y = data.target.astype("int64")
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return train_x, train_y, test_x, test_y


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, out: Path, epochs: int = 40) -> Path:
    """Trains the CNN (deterministically, on the CPU) and exports it to ``out`` as ONNX (input ``image``
    1x1x8x8, output ``logits`` 1x10)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xs, ys = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for _ in range(epochs):
        for idx in torch.randperm(len(xs)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    model.eval()
    with warnings.catch_warnings():  # the legacy exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(out),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
        )
    return out


def onnxruntime_logits(model: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"image": img[None]})[0] for img in images])


def device_logits(module: kiln.device.Executable, images: np.ndarray) -> np.ndarray:
    return np.concatenate([module.run({"image": img[None]})["logits"] for img in images])


@contextlib.contextmanager
def farm_process(*args: str) -> Iterator[str]:
    """Start `kiln tracker|serve ...` on loopback; yield the address it listens on."""
    proc = subprocess.Popen([sys.executable, "-m", "kiln.cli", *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"listening on (\S+)", line)
            if m:
                yield m.group(1)
                break
        else:
            raise RuntimeError(f"kiln {' '.join(args)} exited before listening")
    finally:
        proc.terminate()
        proc.wait(10)


def launcher_name(target: kiln.targets.Target) -> str:
    if target.is_bare_metal:
        return "qemu-system"
    return "native" if target.runs_natively() else "qemu-user"


@dataclasses.dataclass
class DeviceResult:
    target: str
    runs_via: str
    compile_s: float
    accuracy: float
    same_as_reference: int
    max_logit_diff: float
    latency_ms: float


def evaluate(
    model: Path, targets: list[kiln.targets.Target], images: np.ndarray, labels: np.ndarray, want: np.ndarray
) -> Iterator[DeviceResult]:
    """Runs the model on every target through a local farm; yields one result per target."""
    with contextlib.ExitStack() as stack:
        tracker = stack.enter_context(
            farm_process("tracker", "--host", "127.0.0.1", "--port", "0", "--insecure")
        )
        for t in targets:
            serve = ["serve", "--tracker", tracker, "--key", t.name, "--target", t.name]
            stack.enter_context(farm_process(*serve, "--host", "127.0.0.1", "--port", "0", "--insecure"))
        client = stack.enter_context(kiln.rpc.connect(tracker))
        deadline = time.monotonic() + 60
        while {d.key for d in client.devices()} < {t.name for t in targets} and time.monotonic() < deadline:
            time.sleep(0.2)
        for t in targets:
            t0 = time.perf_counter()
            pkg = kiln.compile(str(model), t)
            compile_s = time.perf_counter() - t0
            with client.request(t.name, timeout=300) as dev, dev.load(pkg) as m:
                got = device_logits(m, images)
                latency = float(np.median(m.time(number=10, repeat=5))) * 1e3
            pred = got.argmax(1)
            yield DeviceResult(
                t.name,
                launcher_name(t),
                compile_s,
                float((pred == labels).mean()),
                int((pred == want.argmax(1)).sum()),
                float(np.abs(got - want).max()),
                latency,
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help="comma-separated kiln targets")
    ap.add_argument("--test-images", type=int, default=0, help="use only the first N held-out images")
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args(argv)
    targets = [kiln.targets.get_target(t) for t in args.targets.split(",") if t]

    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 140)
    train_x, train_y, test_x, test_y = digits()
    if args.test_images:
        test_x, test_y = test_x[: args.test_images], test_y[: args.test_images]
    tmp = Path(tempfile.mkdtemp(prefix="kiln-demo-"))
    t0 = time.perf_counter()
    model = train_classifier(train_x, train_y, tmp / "digits.onnx", epochs=args.epochs)
    want = onnxruntime_logits(model, test_x)
    ref_acc = float((want.argmax(1) == test_y).mean())
    con.print(
        f"trained a digits CNN in {time.perf_counter() - t0:.1f} s; onnxruntime gets {100 * ref_acc:.1f}% of "
        f"{len(test_y)} held-out digits right"
    )
    table = Table(title=f"digits CNN through a local kiln device farm ({len(test_y)} held-out images)")
    for col in ("target", "runs via", "compile s", "accuracy", "same as onnxruntime", "max |logit diff|",
                "latency ms (median)"):  # fmt: skip
        table.add_column(col)
    for r in evaluate(model, targets, test_x, test_y, want):
        table.add_row(
            r.target,
            r.runs_via,
            f"{r.compile_s:.1f}",
            f"{100 * r.accuracy:.1f}%",
            f"{r.same_as_reference}/{len(test_y)}",
            f"{r.max_logit_diff:.1e}",
            f"{r.latency_ms:.3f}",
        )
        con.print(f"[green]done[/green] {r.target}")
    con.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
