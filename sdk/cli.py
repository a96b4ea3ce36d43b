"""``kiln`` command line: targets, compile, tune, inspect, run, bench, profile (+ tracker, serve, devices; deploy
and probe for boards over SSH).

Every failure a user can cause prints one line ``kiln: error: ...`` and exits with status 1; ``--debug``
shows the traceback instead. Nothing half-written is left behind: packages and output files are written to a
temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .rpc.cli import add_remote_args, register

if TYPE_CHECKING:
    from .device import Executable
    from .package import Package


class CLIError(Exception):
    """A user error detected by the CLI itself."""


def _parse_shape(text: str) -> tuple[str, tuple[int | str, ...]]:
    """``NAME=1x3x224x224``; a dimension written ``?:512`` (or ``seq:512``) is known only at run time, at
    most 512 (dynamic shapes: docs/how-to/dynamic-shapes.md)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise CLIError(f"--shape expects NAME=DxDxD, got {text!r}")
    out: list[int | str] = []
    for d in (d.strip() for d in dims.split("x") if d.strip()):
        if ":" in d:
            label, _, bound = d.partition(":")
            if not bound.isdigit() or int(bound) < 1 or not (label == "?" or label.isidentifier()):
                raise CLIError(
                    f"--shape {text!r}: a run-time dimension is ?:MAX or NAME:MAX with MAX >= 1 (e.g. 1x?:512)"
                )
            out.append(d)
        elif d.isdigit():
            out.append(int(d))
        else:
            raise CLIError(
                f"--shape {text!r}: dimensions must be integers like 1x3x224x224, or ?:MAX for a size known "
                "at run time (e.g. 1x?:512)"
            )
    return name, tuple(out)


def _console() -> Any:
    """A rich console that does not squeeze tables into 80 columns when output goes to a pipe or file."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


# ------------------------------------------------------------------------------------------------------ commands
def cmd_targets(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .targets import TargetError, emulator_available, list_targets, native_target

    try:
        caption = f"--target native is {native_target().name} on this host"
    except TargetError:
        caption = "no target runs natively on this host"
    from .targets.board import board_of

    table = Table(title="kiln targets", caption=caption)
    for col in ("name", "triple", "cpu / features", "vector bits", "OS", "memory", "runs via"):
        table.add_column(col)
    for t in list_targets():
        board = board_of(t)
        memory = f"flash {_kib(board.flash_bytes)}, RAM {_kib(board.ram_bytes)}" if board else "-"
        if t.runs_natively():
            via = "native"
        elif t.emulator:
            via = " ".join(t.emulator[: 3 if board else 1]) + (
                "" if emulator_available(t) else f" (install {t.emulator_package})"
            )
        else:
            via = "-"
        table.add_row(
            t.name, t.triple, f"{t.cpu} {t.features}".strip(), str(t.vector_bits), t.os, memory, via
        )
    _console().print(table)
    return 0


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def cmd_compile(args: argparse.Namespace) -> int:
    from . import driver

    shapes = dict(_parse_shape(s) for s in args.shape)
    for (
        text
    ) in args.max_shape:  # every dimension up to the given size: run-time where the model leaves it open
        name, dims = _parse_shape(text)
        if name in shapes:
            raise CLIError(f"input {name!r} has both --shape and --max-shape; give one")
        if not all(isinstance(d, int) and d >= 1 for d in dims):
            raise CLIError(f"--max-shape {text!r}: give the largest size of every dimension, like 1x512")
        shapes[name] = tuple(f"?:{d}" for d in dims)
    model = Path(args.model)
    if not model.is_file():
        raise CLIError(f"model file {model} does not exist")
    ctx = _pass_context(args)
    custom_ops = dict(_parse_custom_op(s) for s in args.custom_op)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pkg = driver.compile(
            str(model),
            args.target,
            shapes=shapes or None,
            pipeline=args.pipeline,
            name=args.name or model.stem,
            ctx=ctx,
            custom_ops=custom_ops or None,
            schedule=args.schedule,
            prefix=args.prefix,
            threads=args.threads,
        )
    for w in caught:
        print(f"kiln: warning: {w.message}", file=sys.stderr)
    if args.time_passes:
        print(ctx.timing_report(), file=sys.stderr)
    out = Path(args.output or model.with_suffix(".kpkg").name)
    pkg.save(out)
    m = pkg.manifest
    print(
        f"wrote {out} ({out.stat().st_size} bytes): target {m['target']['name']}, "
        f"arena {m['arena_bytes']} B, weights {m['weight_bytes']} B, code {m['code_bytes']} B"
    )
    if "schedule" in m:
        sched = m["schedule"]
        print(f"schedule {sched['source']}: {sched['applied']} of {sched['instances']} instance(s) applied")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import contextlib

    from . import tune

    shapes = dict(_parse_shape(s) for s in args.shape)
    model = Path(args.model)
    if not model.is_file():
        raise CLIError(f"model file {model} does not exist")
    if args.trials < 1:
        raise CLIError(f"--trials must be at least 1, got {args.trials}")
    out = Path(args.output or f"{model.stem}.schedule.json")
    with contextlib.ExitStack() as stack:
        opener = _tune_device(args, stack)
        result = tune.tune(
            str(model),
            args.target,
            trials=args.trials,
            open_device=opener,
            shapes=shapes or None,
            rounds=args.rounds,
            seed=args.seed,
            name=model.stem,
            log=lambda msg: print(f"kiln: {msg}", file=sys.stderr, flush=True),
        )
    result.schedule.save(out)
    tuned = [r for r in result.instances if r.best]
    print(
        f"wrote {out}: {len(tuned)} of {len(result.instances)} operator instance(s) tuned in {result.trials} "
        f"trial(s); whole model {result.default_s * 1e3:.3f} ms with the default schedules, "
        f"{result.tuned_s * 1e3:.3f} ms tuned ({result.ratio:.3f}x)"
    )
    for r in tuned:
        print(f"  {r.default_s * 1e6:10.1f} us -> {r.best_s * 1e6:10.1f} us  {r.key}  {r.best}")
    return 0


def _tune_device(args: argparse.Namespace, stack: Any) -> Any:
    """What ``kiln tune --device`` loads packages on: None (local: native or QEMU) or a farm device leased
    once for the whole search (``TRACKER_HOST:PORT/KEY``); each variant is unloaded when done."""
    if args.device == "local":
        return None
    tracker, sep, key = args.device.rpartition("/")
    if not sep or not tracker or not key or ":" not in tracker:
        raise CLIError(f"--device expects 'local' or TRACKER_HOST:PORT/KEY, got {args.device!r}")
    from .rpc.auth import load_token
    from .rpc.cli import _client_tls
    from .rpc.client import TrackerClient

    tls = _client_tls(args)
    tr = stack.enter_context(TrackerClient(tracker, token=load_token(None, args.token_file), tls=tls))

    def progress(status: Any) -> None:
        print(f"kiln: {status}", file=sys.stderr, flush=True)

    dev = stack.enter_context(tr.request(key, timeout=args.queue_timeout, progress=progress))

    def load(pkg: Any) -> Any:
        module = dev.load(pkg)
        module.add_cleanup(module.unload)
        return module

    return load


def _pass_context(args: argparse.Namespace) -> Any:
    from .transform import PassContext

    after = args.print_ir_after
    return PassContext(
        print_ir_after="all" if "all" in after else after, printer=lambda text: print(text, file=sys.stderr)
    )


def _parse_custom_op(text: str) -> tuple[str, str]:
    node, sep, impl = text.partition("=")
    if not sep or ":" not in node or ":" not in impl:
        raise CLIError(f"--custom-op expects DOMAIN:OpType=module:attribute, got {text!r}")
    return node, impl


def cmd_passes(args: argparse.Namespace) -> int:
    from .transform import all_passes, default_pipeline, target_hooks
    from .transform.pipeline import PHASES

    passes = sorted(all_passes().values(), key=lambda p: (PHASES.index(p.phase), p.name))
    width = max(len(p.name) for p in passes)
    for p in passes:
        print(f"{p.name:<{width}}  {p.phase:<14}  {p.doc}")
    if args.target:
        from .targets import get_target

        t = get_target(args.target)
        hooks = [(phase, h) for phase, hs in target_hooks(t).items() for h in hs]
        if hooks:
            print(f"\nhooks of {t.name}:")
            for phase, h in hooks:
                print(f"{h.text}  {phase} ({h.when})  {h.doc}")
        print(f"\ndefault pipeline for {t.name}:\n{default_pipeline(t)}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from .package.kpkg import Package

    pkg = Package.load(args.package)
    m = pkg.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    con = _console()
    con.print(
        f"[bold]{m['name']}[/bold]  target {m['target']['name']} ({m['target']['triple']})  "
        f"compiler {m.get('compiler', '?')}"
    )
    con.print(
        f"arena {m['arena_bytes']} B   weights {m['weight_bytes']} B   code {m['code_bytes']} B   "
        f"package sha256 {pkg.sha256[:16]}..."
    )
    io = Table("", "name", "dtype", "shape")
    dims = m.get("dims", [])
    for kind in ("inputs", "outputs"):
        for t in m[kind]:
            ks = t.get("dims") or [-1] * len(t["shape"])
            shape = [
                str(d) if k < 0 else f"{dims[k]['name']}<={d}" for d, k in zip(t["shape"], ks, strict=True)
            ]
            io.add_row(kind[:-1], t["name"], t["dtype"], "x".join(shape))
    con.print(io)
    if "memory" in m:
        _print_memory(con, m)
    con.print("operators: " + ", ".join(m.get("operators", [])))
    con.print(
        f"kernels ({len(m.get('kernels', []))}): "
        + ", ".join(m.get("kernels", [])[:12])
        + (" ..." if len(m.get("kernels", [])) > 12 else "")
    )
    files = Table("file", "bytes", "sha256")
    for f, meta in sorted(m["files"].items()):
        files.add_row(f, str(meta["size"]), meta["sha256"][:16] + "...")
    con.print(files)
    return 0


def _print_memory(con: Any, m: dict[str, Any]) -> None:
    """Flash and RAM of a board's firmware image, measured on the linked ELF (manifest ``memory``)."""
    from rich.table import Table

    table = Table(
        "memory", "total", "of the board", "used", "breakdown", title=f"board {m['target']['name']}"
    )
    for mem in ("flash", "ram"):
        r = m["memory"][mem]
        cats = ("code", "weights", "runtime") if mem == "flash" else ("arena", "io", "stack", "runtime")
        fits = "fits" if r["total"] <= r["limit"] else "DOES NOT FIT"
        table.add_row(
            "flash" if mem == "flash" else "RAM",
            f"{r['total']} B",
            f"{r['limit']} B",
            f"{r['percent']:.2f} % ({fits})",
            ", ".join(f"{c} {r[c]} B" for c in cats),
        )
    con.print(table)


def _load_inputs(args: argparse.Namespace, spec: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    from .ir.types import np_dtype

    given: dict[str, np.ndarray] = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep:
            if len(spec) != 1:
                raise CLIError(f"--input {item!r}: use NAME=FILE.npy (the model has {len(spec)} inputs)")
            name, path = spec[0]["name"], item
        try:
            given[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CLIError(f"--input {name}: cannot read {path}: {e}") from None
    names = [t["name"] for t in spec]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise CLIError(f"unknown input(s) {', '.join(unknown)}; the model's inputs are {', '.join(names)}")
    rng = np.random.default_rng(args.seed)
    for t in spec:
        if t["name"] in given:
            continue
        if not args.random_inputs:
            raise CLIError(
                f"missing input {t['name']!r} ({t['dtype']} {tuple(t['shape'])}); pass "
                f"--input {t['name']}=FILE.npy or --random-inputs"
            )
        dt = np_dtype(t["dtype"])
        if dt.kind == "f":
            given[t["name"]] = rng.standard_normal(t["shape"]).astype(dt)
        else:
            given[t["name"]] = rng.integers(0, 2, size=t["shape"]).astype(dt)
    return given


def _open(args: argparse.Namespace, pkg: Package) -> Executable:
    """The package loaded on its device: on a board over SSH with --ssh, on the farm with --tracker/--device,
    else local (native or QEMU)."""
    from .device.ssh import SshLauncher, options_from_args
    from .rpc.cli import open_remote

    ssh = options_from_args(args)
    threads = getattr(args, "threads", None)
    if threads is not None and (ssh is not None or getattr(args, "serial", None)):
        raise CLIError(
            f"--threads applies to runners on this host and on farm devices; for a board over SSH or a serial "
            f"line, compile the package with kiln compile --threads {threads}"
        )
    if getattr(args, "serial", None):
        from .device.serial import SerialLauncher

        return pkg.open_session(SerialLauncher(pkg.target, args.serial, args.baud))
    if ssh is None:
        return open_remote(args, pkg) or pkg.open_session(threads=threads)
    if getattr(args, "tracker", None) or getattr(args, "device", None):
        raise CLIError("--ssh runs on a board directly; give either --ssh or --tracker/--device")
    launcher = SshLauncher(pkg.target, ssh)
    try:
        session = pkg.open_session(launcher)
    except BaseException:
        launcher.close()
        raise
    session.add_cleanup(launcher.close)
    return session


def _write_outputs(outdir: Path, outputs: dict[str, np.ndarray]) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, arr in outputs.items():
        dest = outdir / (name.replace("/", "_").replace("\\", "_") + ".npy")
        fd, tmp = tempfile.mkstemp(dir=outdir, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(dest)
    return written


def cmd_run(args: argparse.Namespace) -> int:
    from .package.kpkg import Package

    pkg = Package.load(args.package)
    inputs = _load_inputs(args, pkg.manifest["inputs"])
    with _open(args, pkg) as sess:
        outputs = sess.run(inputs)
    if args.output:
        for p in _write_outputs(Path(args.output), outputs):
            print(f"wrote {p}")
    for name, arr in outputs.items():
        flat = arr.reshape(-1)
        head = np.array2string(flat[:6], precision=5, separator=", ")
        print(f"{name}: {arr.dtype} {tuple(arr.shape)} {head}{' ...' if flat.size > 6 else ''}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .package.kpkg import Package

    pkg = Package.load(args.package)
    inputs = _load_inputs(args, pkg.manifest["inputs"])
    if args.count:
        elsewhere = [f"--{a}" for a in ("ssh", "serial", "tracker", "device") if getattr(args, a, None)]
        if elsewhere or args.threads not in (None, 1):
            raise CLIError(
                "--count runs the package under QEMU user mode on this host, on one thread; drop "
                + ", ".join(elsewhere or ["--threads"])
            )
        counts = pkg.count_instructions(inputs)
        print(f"{pkg.manifest['name']} on {pkg.manifest['target']['name']}: guest instructions of one run")
        print(counts.table())
        return 0
    with _open(args, pkg) as sess:
        sess.run(inputs)
        times = np.asarray(
            sess.time(number=args.number, repeat=args.repeat, min_repeat_ms=args.min_repeat_ms)
        )
        clock = str(getattr(sess, "clock", "wall-clock time on the device"))
    ms = times * 1e3
    print(
        f"{pkg.manifest['name']} on {pkg.manifest['target']['name']}: median {np.median(ms):.3f} ms, "
        f"min {ms.min():.3f} ms, max {ms.max():.3f} ms ({args.repeat} repeats of {args.number} runs)"
    )
    board = pkg.manifest.get("board")
    if board and clock.startswith("virtual"):
        per_run = float(np.median(times)) * 1e9 / (1 << int(board.get("icount_shift", 0)))
        print(f"  = {per_run:.0f} instructions per run")
    print(f"  measured as: {clock}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .package.kpkg import Package

    pkg = Package.load(args.package)
    inputs = _load_inputs(args, pkg.manifest["inputs"])
    with _open(args, pkg) as sess:
        sess.run(inputs)
        prof = sess.profile()
    print(prof.table())
    if args.trace:
        prof.write_chrome_trace(args.trace)
        print(f"wrote Chrome trace {args.trace} (open it in https://ui.perfetto.dev)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .package.export import export_c_project
    from .package.kpkg import Package

    out = export_c_project([Package.load(p) for p in args.packages], args.output, format=args.format)
    print(f"wrote {args.format} {out}: make (or make TOOLCHAIN=gcc, or cmake) builds build/image.elf")
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    from .package.flash import flash
    from .package.kpkg import Package

    flash(Package.load(args.package), args.backend, probe=args.probe, dry_run=args.dry_run, keep=args.keep)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from .device.ssh import SshLauncher, options_from_args
    from .package.kpkg import RUNNER, Package

    pkg = Package.load(args.package)
    if RUNNER not in pkg.files:
        raise CLIError(f"package {pkg.name!r} for {pkg.manifest['target']['name']} has no runner to deploy")
    ssh = options_from_args(args)
    assert ssh is not None  # --ssh is required
    with SshLauncher(pkg.target, ssh) as launcher:
        remote = launcher.deploy(pkg.files[RUNNER])
    how = "uploaded" if remote.uploaded else "already there"
    print(
        f"kiln: {pkg.name} ({pkg.target.name}) on {remote.board}: {how}, {remote.size} bytes", file=sys.stderr
    )
    print(remote.path)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from .device.ssh import SshConnection, options_from_args, probe
    from .targets import list_targets

    ssh = options_from_args(args)
    assert ssh is not None  # --ssh is required
    emulators = {t.emulator[0] for t in list_targets() if t.emulator} | set(ssh.exec_prefix[:1])
    with SshConnection(ssh) as conn:
        board = probe(conn, ssh.remote_dir, sorted(emulators))
        status, out, _ = conn.run('ls -1 "$1"', board.remote_dir)
    cached = [n for n in out.split() if len(n) == 64] if status == 0 else []
    features = board.cpu_features
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "asimd", "asimddp", "sve", "neon", "vfpv4")
    shown = " ".join(f for f in wanted if f in features)
    free = "unknown" if board.free_bytes is None else f"{board.free_bytes / (1 << 20):.1f} MiB free"
    print(f"board       {board.label}")
    model = f", {board.model}" if board.model else ""
    print(f"system      {board.system} {board.machine}, {board.cpus} CPU(s){model}")
    print(f"cpu flags   {len(features)} in /proc/cpuinfo" + (f", including {shown}" if shown else ""))
    print(f"remote dir  {board.remote_dir}: {free}, {len(cached)} cached runner(s)")
    print("targets")
    for t, how, why in board.runnable_targets():
        print(f"  {t.name:22} {'runs: ' + how if how else 'no: ' + str(why)}")
    return 0


# ---------------------------------------------------------------------------------------------------- the parser
def _add_run_args(p: argparse.ArgumentParser) -> None:
    from .device.ssh import add_ssh_args

    p.add_argument("package", help="a .kpkg file made by kiln compile")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument(
        "--random-inputs", action="store_true", help="fill inputs not given with seeded random data"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--serial", metavar="PORT", help="a flashed board on this serial port or URL (e.g. /dev/ttyACM0)"
    )
    p.add_argument("--baud", type=int, default=115200, help="baud rate for --serial (default 115200)")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads for the model's parallel loops (0: one per online CPU, or per core of a farm device; "
        "default: the package's, from kiln compile --threads); runners on this host and farm devices "
        "(--tracker/--device: at most the device's cores)",
    )
    add_remote_args(p)
    add_ssh_args(p)


def _add_client_security(p: argparse.ArgumentParser) -> None:
    from .rpc.cli import _add_token_args

    _add_token_args(p, server=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description="Compile ML models for CPUs and microcontrollers.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("targets", help="list targets").set_defaults(fn=cmd_targets)

    c = sub.add_parser("compile", help="compile a model into a package")
    c.add_argument("model", help="an .onnx file, or a .pt2 file saved with torch.export.save")
    c.add_argument("--target", "-t", required=True)
    c.add_argument("--output", "-o", help="package path (default: MODEL.kpkg)")
    c.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=1x3x224x224",
        help="bind an input's symbolic dimensions; ?:MAX (or NAME:MAX) for a size known at run time, at most MAX",
    )
    c.add_argument(
        "--max-shape",
        action="append",
        default=[],
        metavar="NAME=1x512",
        help="the largest shape of an input: dimensions the model leaves open are known at run time, up to these",
    )
    c.add_argument("--pipeline", help="comma-separated pass list (default: the target's default pipeline)")
    c.add_argument("--name", help="model name (default: the file name)")
    c.add_argument(
        "--custom-op",
        action="append",
        default=[],
        metavar="DOMAIN:OpType=module:attr",
        help="import custom-domain ONNX nodes as a kiln operator (a module path or a file.py)",
    )
    c.add_argument(
        "--print-ir-after",
        action="append",
        default=[],
        metavar="PASS|all",
        help="print the IR after a pass (repeatable) or after every pass, to stderr",
    )
    c.add_argument("--time-passes", action="store_true", help="print the time of each pass, to stderr")
    c.add_argument(
        "--schedule",
        metavar="FILE.json",
        help="schedule records per operator instance (e.g. from kiln tune) over the target's defaults",
    )
    c.add_argument(
        "--prefix",
        metavar="NAME",
        help="prefix of the model's C symbols (default kiln_model); distinct prefixes let several models "
        "share one firmware (kiln export)",
    )
    c.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="the package's default number of threads for its parallel loops (default 1; 0: one per online "
        "CPU); kiln run/bench/profile --threads overrides it",
    )
    c.set_defaults(fn=cmd_compile)

    tu = sub.add_parser("tune", help="search GEMM/conv/pool schedules on a device; write a schedule file")
    tu.add_argument("model", help="an .onnx file")
    tu.add_argument("--target", "-t", required=True)
    tu.add_argument(
        "--device",
        default="local",
        metavar="local|TRACKER/KEY",
        help="where to measure: local (native or QEMU; default) or a device leased from a tracker, "
        "e.g. 127.0.0.1:9190/qemu-aarch64",
    )
    tu.add_argument("--trials", type=int, default=8, help="whole-model variants to measure (default 8)")
    tu.add_argument("--output", "-o", help="schedule file to write (default: MODEL.schedule.json)")
    tu.add_argument(
        "--shape", action="append", default=[], metavar="NAME=1x3x224x224", help="bind symbolic dimensions"
    )
    tu.add_argument(
        "--rounds", type=int, default=9, help="profiled runs per variant and per trial (default 9)"
    )
    tu.add_argument("--seed", type=int, default=0, help="seed of the candidate order and the random inputs")
    tu.add_argument("--queue-timeout", type=float, default=300.0, metavar="S", help="wait for a farm device")
    _add_client_security(tu)
    tu.set_defaults(fn=cmd_tune)

    ps = sub.add_parser("passes", help="list the passes (and a target's hooks and default pipeline)")
    ps.add_argument("--target", "-t", help="also show this target's hooks and default pipeline")
    ps.set_defaults(fn=cmd_passes)

    i = sub.add_parser("inspect", help="show a package's manifest")
    i.add_argument("package")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)

    r = sub.add_parser("run", help="run a package once")
    _add_run_args(r)
    r.add_argument("--output", "-o", metavar="DIR", help="write DIR/<output name>.npy for each output")
    r.set_defaults(fn=cmd_run)

    b = sub.add_parser("bench", help="time a package on its device")
    _add_run_args(b)
    b.add_argument("--number", type=int, default=10, help="runs per repeat")
    b.add_argument("--repeat", type=int, default=5)
    b.add_argument("--min-repeat-ms", type=int, default=0)
    b.add_argument(
        "--count",
        action="store_true",
        help="instead of timing, count the instructions of one run per kernel under QEMU user mode "
        "(exact, the same every run; targets this host emulates)",
    )
    b.set_defaults(fn=cmd_bench)

    pr = sub.add_parser("profile", help="per-kernel times and a Chrome trace")
    _add_run_args(pr)
    pr.add_argument("--trace", help="write a Chrome trace JSON (opens in Perfetto)")
    pr.set_defaults(fn=cmd_profile)

    ex = sub.add_parser("export", help="board packages as a C project (static libraries, runtime, Makefile)")
    ex.add_argument("packages", nargs="+", help="board .kpkg files (one firmware serves them all)")
    ex.add_argument("--format", default="c-project", choices=["c-project"])
    ex.add_argument("--output", "-o", required=True, metavar="DIR")
    ex.set_defaults(fn=cmd_export)

    fl = sub.add_parser("flash", help="put a board package's firmware on the board (or boot it under QEMU)")
    fl.add_argument("package", help="a .kpkg file for a board")
    fl.add_argument("--backend", "-b", default="qemu", choices=["qemu", "pyocd", "openocd"])
    fl.add_argument("--probe", metavar="ID", help="the debug probe's serial number (pyocd, openocd)")
    fl.add_argument("--dry-run", action="store_true", help="print the command and image, do not flash")
    fl.add_argument(
        "--keep", action="store_true", help="qemu: keep the emulated board running (Ctrl-C stops)"
    )
    fl.set_defaults(fn=cmd_flash)

    from .device.ssh import add_ssh_args

    d = sub.add_parser("deploy", help="upload a package's runner to a board over SSH; print its remote path")
    d.add_argument("package", help="a .kpkg file made by kiln compile")
    add_ssh_args(d, required=True)
    d.set_defaults(fn=cmd_deploy)

    pb = sub.add_parser("probe", help="what a board over SSH is and which kiln targets run there")
    add_ssh_args(pb, required=True)
    pb.set_defaults(fn=cmd_probe)

    register(sub)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can cause (bad files, options, devices, farm refusals): one line, no traceback."""
    import grpc

    from .device import DeviceError
    from .rpc.client import RemoteError

    return (CLIError, ValueError, OSError, KeyError, TypeError, grpc.RpcError, DeviceError, RemoteError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        return int(args.fn(args))
    try:
        return int(args.fn(args))
    except _user_errors() as e:
        msg = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
        print(f"kiln: error: {msg or type(e).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
