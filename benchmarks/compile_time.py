"""Compile time, ONNX file to saved package, split by phase, on a warm cache (ResNet-50 and SqueezeNet).

    python benchmarks/compile_time.py [--models resnet50,squeezenet] [--target native] [--rounds 3] [--cold]

Each model is compiled once to warm the caches (the runtime build, zig's libc, kiln's object cache), then
``--rounds`` more times; the table shows the median of each phase. ``--cold`` empties kiln's code and weights
caches before each compile (what a first compile of a model costs; the runtime stays built). Phases are the
driver's steps, timed by wrapping them (the driver itself is unchanged): ``import`` (a fresh interpreter
importing kiln's compile path), ``frontend`` (ONNX -> Module), ``passes`` (the pipeline), ``codegen`` (Module
-> objects: the module's cache key, and on a miss ``llvm-ir``, tensor functions and the entry -> LLVM IR, and
``llvm``, parse, O3 and object emission in parallel processes, per object cached), ``link`` (runtime + runner
+ libmodel.a) and ``package`` (the manifest, and writing the .kpkg). ``compile`` is the wall time of the whole
compile after import, as a ``kiln compile`` process spends it, and ``cpu`` the CPU seconds it used (this
process and zig; on a busy machine a steadier figure than wall time). :func:`compile_seconds` is the same
measurement for other benchmarks (``benchmarks/models.py`` prints its total).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import kiln  # noqa: E402
import kiln.codegen  # noqa: E402
import kiln.driver  # noqa: E402
import kiln.package  # noqa: E402
import kiln.targets  # noqa: E402
import models  # noqa: E402  (tests/models.py builds the model files)
from kiln.package.kpkg import Package  # noqa: E402
from kiln.package.toolchain import cache_dir  # noqa: E402

PHASES = ("frontend", "passes", "codegen", "llvm-ir", "llvm", "link", "package")
_IMPORT = (
    "import time; t = time.perf_counter(); "
    "import kiln, kiln.driver, kiln.frontend.onnx, kiln.codegen, kiln.package; "
    "print(time.perf_counter() - t)"
)


@contextlib.contextmanager
def _timed(times: dict[str, float]) -> Iterator[None]:
    """Wraps the driver's steps so that each adds its seconds to ``times[phase]``."""

    def wrap(owner: Any, attr: str, phase: str) -> Callable[[], None]:
        original = getattr(owner, attr, None)
        if original is None:  # an older kiln (the benchmark also measures those)
            return lambda: None

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                times[phase] = times.get(phase, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, original)

    undo = [
        wrap(kiln.driver, "load_model", "frontend"),
        wrap(kiln.driver, "compile_module", "passes"),
        wrap(kiln.codegen, "generate", "codegen"),
        wrap(kiln.codegen, "build_llvm_ir", "llvm-ir"),
        wrap(kiln.codegen, "compile_objects", "llvm"),
        wrap(kiln.package, "link_model", "link"),
    ]
    create = Package.__dict__["create"]
    undo.append(wrap(Package, "create", "package"))
    try:
        yield
    finally:
        for u in reversed(undo):
            u()
        Package.create = create  # type: ignore[method-assign]


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (zig)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import kiln's compile path."""
    out = subprocess.run([sys.executable, "-c", _IMPORT], check=True, capture_output=True, text=True)
    return float(out.stdout)


def compile_seconds(
    model: str | Path, target: str = "native", rounds: int = 1, *, cold: bool = False
) -> dict[str, float]:
    """Seconds per phase (median over ``rounds`` compiles after one warm-up), ``compile`` (the whole) and
    ``cpu``: compiling ``model`` (an ONNX file) for ``target`` and saving the package. ``import`` is not
    included. ``cold``: each compile starts without kiln's code and weights caches (the runtime stays built)."""
    samples: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="kiln-compile-time-") as tmp:
        for i in range(rounds + 1):
            if cold:
                for kind in ("objects", "modules", "weights"):
                    shutil.rmtree(cache_dir() / kind, ignore_errors=True)
            times: dict[str, float] = {}
            cpu0 = _cpu_seconds()
            t0 = time.perf_counter()
            with _timed(times):
                pkg = kiln.compile(str(model), target)
                t_save = time.perf_counter()
                pkg.save(Path(tmp) / "model.kpkg")
                times["package"] = times.get("package", 0.0) + time.perf_counter() - t_save
            times["compile"] = time.perf_counter() - t0
            times["cpu"] = _cpu_seconds() - cpu0
            times["kpkg MB"] = (Path(tmp) / "model.kpkg").stat().st_size / 1e6
            times["weights MB"] = pkg.manifest["weight_bytes"] / 1e6
            if i:  # the first compile warms the caches
                samples.append(times)
    return {k: statistics.median(s.get(k, 0.0) for s in samples) for k in samples[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="native", help="default: the best target this host runs natively")
    ap.add_argument("--models", default="resnet50,squeezenet")
    ap.add_argument("--rounds", type=int, default=3, help="timed compiles per model after the warm-up")
    ap.add_argument(
        "--cold", action="store_true", help="empty kiln's code and weights caches before each compile"
    )
    args = ap.parse_args()
    target = kiln.targets.get_target(args.target).name
    cols = ("import", *PHASES, "compile", "cpu", "kpkg MB", "weights MB")
    cache = "cold (no cached code or weights)" if args.cold else "warm cache"
    print(f"compile time in seconds, {cache}, median of {args.rounds} (target {target})")
    print(f"{'model':12}" + "".join(f"{c:>11}" for c in cols))
    for name in args.models.split(","):
        times = compile_seconds(models.light_random_path(name), target, args.rounds, cold=args.cold)
        times["import"] = import_seconds()
        print(f"{name:12}" + "".join(f"{times.get(c, 0.0):11.2f}" for c in cols), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
