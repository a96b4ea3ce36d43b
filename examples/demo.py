"""kiln end to end: compile SqueezeNet (from the onnx package) for three instruction sets and run it on
emulated and native devices leased from a local device farm.

    python examples/demo.py [--model PATH.onnx] [--targets x86_64-linux,aarch64-linux,riscv64-linux]

What happens: a tracker and one device server per target start on 127.0.0.1 (x86-64 runs natively, the
others under qemu-user); the model is compiled for each target; each package is uploaded to a device leased
from the tracker, run, compared with onnxruntime and timed there. A table shows compile time, latency and
the largest difference from onnxruntime per target.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

import kiln
import kiln.rpc
import kiln.targets

DEFAULT_MODEL = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
DEFAULT_TARGETS = "x86_64-linux,aarch64-linux,riscv64-linux"


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


def reference(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs), strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]

    from rich.console import Console
    from rich.table import Table

    con = Console()
    mod = kiln.load_model(str(args.model))
    rng = np.random.default_rng(0)
    inputs = {p.name: rng.standard_normal(p.type.static_shape).astype("float32") for p in mod.main.params}
    want = reference(args.model, inputs)

    table = Table(title=f"{args.model.name} through a local kiln device farm")
    for col in ("target", "runs via", "compile s", "latency ms (median)", "max |error| vs onnxruntime"):
        table.add_column(col)
    with contextlib.ExitStack() as stack:
        tracker = stack.enter_context(
            farm_process("tracker", "--host", "127.0.0.1", "--port", "0", "--insecure")
        )
        con.print(f"tracker on {tracker}")
        for t in targets:
            stack.enter_context(
                farm_process(
                    "serve",
                    "--tracker",
                    tracker,
                    "--key",
                    t,
                    "--target",
                    t,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--insecure",
                )
            )
        client = kiln.rpc.connect(tracker)
        deadline = time.monotonic() + 30
        while {d.key for d in client.devices()} < set(targets) and time.monotonic() < deadline:
            time.sleep(0.2)
        for t in targets:
            t0 = time.perf_counter()
            pkg = kiln.compile(mod, t)
            compile_s = time.perf_counter() - t0
            with client.request(t, timeout=120) as dev:
                m = dev.load(pkg)
                got = m.run(inputs)
                err = max(float(np.abs(got[k] - want[k]).max()) for k in want)
                latency = float(np.median(m.time(number=3, repeat=3))) * 1e3
                via = "native" if kiln.targets.get_target(t).runs_natively() else "qemu-user"
                table.add_row(t, via, f"{compile_s:.1f}", f"{latency:.2f}", f"{err:.2e}")
            con.print(f"[green]done[/green] {t}")
        client.close()
    con.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
