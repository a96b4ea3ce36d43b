"""A small schedule search: measure candidate schedule records on a device, keep the best per operator instance.

``kiln tune model.onnx --target T --device local|TRACKER/KEY --trials N`` (or :func:`tune`) works on whole-model
variants, with each kernel's time read from the device's profiler:

1. Compile the model with the target's default schedules, recording which kernel is which operator instance
   (:func:`kiln.ops.schedule.record_instances`; GEMM-based convolutions and matmuls, pooling).
2. Each trial takes the next untried candidate record of every instance (:func:`candidates`: register tiles
   that fit the vector registers, most promising first by a rough prior; packing, im2col block sizes, pooling
   loop kinds) and compiles the whole model once
   with all of them: one compile measures a candidate for every layer. The variant's outputs must match the
   default's, or the trial is dropped.
3. The default and the variant run side by side on the device, alternating, ``rounds`` profiled runs each;
   an instance's time is the minimum over rounds of its kernels' summed time in a run (on a shared
   machine other processes only add time), and its candidate is
   judged by the ratio to the default measured in the same rounds (the machine's load drifts between trials,
   a ratio within one trial does not).
4. Per instance, the best candidate that beats its default by more than ``margin`` goes into the schedule
   file. A final compile with all of them is timed against the default, whole-model and interleaved
   (:attr:`TuneResult.default_s`, :attr:`TuneResult.tuned_s`), and written into the file's ``tuning`` entry.

Where the device is remote the caller passes ``open_device`` (package -> :class:`kiln.device.Executable`,
e.g. a leased farm device's ``load``); this module knows nothing of RPC.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import driver
from .ir.types import np_dtype
from .ops.schedule import ScheduleFile, parse_instance_key, record_instances
from .targets import Target, get_target
from .targets.schedule import Schedule

Opener = Callable[[Any], Any]  # Package -> Executable


@dataclass
class InstanceResult:
    """What the search found for one operator instance (times in seconds per run)."""

    key: str
    kernels: list[str]
    default_s: float = 0.0
    best_s: float = 0.0
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # {} = the default won
    tried: int = 0


@dataclass
class TuneResult:
    schedule: ScheduleFile
    instances: list[InstanceResult]
    default_s: float
    tuned_s: float
    trials: int
    failed_trials: int = 0

    @property
    def ratio(self) -> float:
        return self.tuned_s / self.default_s if self.default_s else 1.0


def _vector_registers(t: Target) -> int:
    """Vector (or float) registers of the target: 32 on AArch64, RISC-V and AVX-512, else 16."""
    if t.arch.startswith(("aarch64", "riscv")) or t.vector_bits >= 512:
        return 32
    return 16


def _gemm_dims(
    op: str, inputs: list[tuple[str, tuple[int, ...]]], attrs: Mapping[str, Any]
) -> tuple[int, int, int]:
    """(M, N, K) of the GEMM an instance lowers to (per image and group for conv2d)."""
    if op == "matmul":
        a, b = inputs[0][1], inputs[1][1]
        m = a[-2] if len(a) > 1 else 1
        n = b[-1] if len(b) > 1 else 1
        return m, n, a[-1]
    w = inputs[1][1]
    oh, ow = _conv_out(inputs, attrs)
    return w[0] // attrs.get("groups", (1,))[0], oh * ow, w[1] * w[2] * w[3]


def _conv_out(inputs: list[tuple[str, tuple[int, ...]]], attrs: Mapping[str, Any]) -> tuple[int, int]:
    x, w = inputs[0][1], inputs[1][1]
    (sh, sw), pads, (dh, dw) = attrs["strides"], attrs["pads"], attrs["dilations"]
    oh = (x[2] + pads[0] + pads[2] - dh * (w[2] - 1) - 1) // sh + 1
    ow = (x[3] + pads[1] + pads[3] - dw * (w[3] - 1) - 1) // sw + 1
    return oh, ow


def _tile_score(m: int, n: int, mr: int, nr: int, lanes: int) -> float:
    """A rough prior for a register tile: multiply-adds per value loaded into registers (``mr x v`` vectors of
    accumulators fed by ``mr`` broadcasts and ``v`` vector loads), discounted for the share of C computed in
    edge tiles. Only orders the candidates; the device decides."""
    nc = min(nr, n)
    v = -(-nc // lanes)
    intensity = mr * v / (mr + v)
    full = (m // mr * mr) * (n // nc * nc) / max(1, m * n)
    return intensity * (full + 0.6 * (1.0 - full))


def candidates(key: str, target: Target, rng: random.Random | None = None) -> list[dict[str, dict[str, Any]]]:
    """The candidate records of one instance, as changes to the target's default (the default itself
    excluded), most promising first: GEMM register tiles ``mr x nr`` whose accumulators leave 3 vector
    registers free, ordered by :func:`_tile_score` (with ``rng`` jitter), each also with packing always/never
    and, for im2col convolutions, other block sizes (a little later in the order); for pooling, the loop
    kinds."""
    op, inputs, attrs = parse_instance_key(key)
    base = target.schedule_for(key)
    jitter = rng or random.Random(0)
    scored: list[tuple[float, dict[str, dict[str, Any]]]] = []
    if op in ("max_pool2d", "avg_pool2d"):  # integer average pooling: float pooling has no schedule
        for vec, unroll in itertools.product((False, True), repeat=2):
            scored.append((jitter.random(), {"pool": {"vectorize": vec, "unroll_taps": unroll}}))
    else:
        m, n, k = _gemm_dims(op, inputs, attrs)
        lanes = target.vector_lanes_f32
        budget = _vector_registers(target) - 3
        im2col = op == "conv2d" and not (
            inputs[1][1][2] == inputs[1][1][3] == 1 and attrs["strides"] == (1, 1) and not any(attrs["pads"])
        )
        blocks = [base.conv2d.col_block_bytes]
        if im2col:
            blocks += [b for b in (128 << 10, 256 << 10, 1 << 20, 2 << 20) if b != blocks[0]]
        for mr in range(1, 13):
            for v in range(1, 7):
                nr = v * lanes if lanes > 1 else 2 * v
                if mr * v > budget or mr > 2 * max(m, 1) or (nr > n and nr - lanes >= n):
                    continue
                score = _tile_score(m, n, mr, nr, lanes) * (0.9 + 0.2 * jitter.random())
                for pack, block in itertools.product(("auto", "always", "never"), blocks):
                    c: dict[str, dict[str, Any]] = {"gemm": {"mr": mr, "nr": nr, "pack": pack}}
                    if block != blocks[0]:
                        c["conv2d"] = {"col_block_bytes": block}
                    changed = (pack != "auto") + (block != blocks[0])
                    scored.append((score * 0.85**changed, c))
    scored.sort(key=lambda sc: -sc[0])
    out: list[dict[str, dict[str, Any]]] = []
    seen = {_effect(op, inputs, attrs, base, target)}
    for _, c in scored:
        effect = _effect(op, inputs, attrs, base.with_changes(c), target)
        if (
            effect not in seen
        ):  # a record that makes the same loop nest as one already listed is not a candidate
            seen.add(effect)
            out.append(base.with_changes(c).diff(base))
    return out


def _effect(
    op: str, inputs: list[tuple[str, tuple[int, ...]]], attrs: Mapping[str, Any], s: Schedule, t: Target
) -> tuple[Any, ...]:
    """What of a record reaches the loop nest of this instance (two records with the same effect generate
    the same code): pooling's loop kinds; the GEMM's tile, its packing decisions and its im2col blocks."""
    if op in ("max_pool2d", "avg_pool2d"):
        return (s.pool.vectorize, s.pool.unroll_taps)
    from .ops.conv2d import rows_per_block

    m, n, k = _gemm_dims(op, inputs, attrs)
    g = s.gemm
    rows, pack_hint = 0, True
    if op == "conv2d":
        w = inputs[1][1]
        if not (w[2] == w[3] == 1 and attrs["strides"] == (1, 1) and not any(attrs["pads"])):  # im2col
            oh, ow = _conv_out(inputs, attrs)
            rows = rows_per_block(k, oh, ow, schedule=s.conv2d)
            n = rows * ow  # the GEMM's columns per block
            pack_hint = k >= s.conv2d.pack_min_k
    nc = min(g.nr, n)
    if m < g.mr and n >= g.stream_min_tiles * nc:
        return ("stream", g.stream_columns, g.unroll_rows, g.vectorize_columns)
    packs = []
    for count in (m // g.mr, 1 if m % g.mr else 0):
        if count:
            auto = pack_hint and count >= g.pack_min_row_tiles and k >= g.pack_min_k
            packs.append(auto if g.pack == "auto" else g.pack == "always")
    return ("tiles", g.mr, nc, tuple(packs), rows, g.unroll_rows, g.vectorize_columns)


def _kernel_times(prof: Any) -> dict[str, float]:
    per: dict[str, float] = {}
    for c in prof.calls:
        per[c.name] = per.get(c.name, 0.0) + prof.seconds(c)
    return per


def _side_by_side(
    a: Any, b: Any, rounds: int, groups: Mapping[str, list[str]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Each group's summed kernel time per run (:func:`_low` over ``rounds`` alternating profiled runs), on
    ``a`` and on ``b``."""
    runs: tuple[list[dict[str, float]], list[dict[str, float]]] = ([], [])
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            runs[i].append(_kernel_times((a, b)[i].profile()))
    out = []
    for side in runs:
        out.append({g: _low(sum(t.get(k, 0.0) for k in ks) for t in side) for g, ks in groups.items()})
    return out[0], out[1]


def _low(values: Any) -> float:
    """The fastest sample: other processes only ever add time to a kernel (preempting it, evicting its
    cache), so on a shared machine the minimum over rounds is the best estimate of the kernel's own speed."""
    return min(values, default=0.0)


def _whole_model(a: Any, b: Any, rounds: int, min_repeat_ms: int) -> tuple[float, float]:
    """Median seconds per run of ``a`` and ``b``, timed alternately (one repeat of at least
    ``min_repeat_ms`` each, ``rounds`` times)."""
    ta: list[float] = []
    tb: list[float] = []
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            (ta, tb)[i].extend((a, b)[i].time(number=1, repeat=1, min_repeat_ms=min_repeat_ms))
    return statistics.median(ta), statistics.median(tb)


def _random_inputs(pkg: Any, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for spec in pkg.manifest["inputs"]:
        dt = np_dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        out[spec["name"]] = (
            rng.standard_normal(shape).astype(dt) if dt.kind == "f" else rng.integers(0, 4, shape).astype(dt)
        )
    return out


def _same_outputs(want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> bool:
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape:
            return False
        if w.dtype.kind == "f":
            scale = float(np.max(np.abs(w))) if w.size else 0.0
            if not np.allclose(g, w, rtol=1e-3, atol=1e-4 * max(scale, 1.0), equal_nan=True):
                return False
        elif not np.array_equal(g, w):
            return False
    return True


def _measure_variant(
    mod: Any,
    t: Target,
    sf: ScheduleFile,
    groups: Mapping[str, list[str]],
    dflt: Any,
    want: Mapping[str, np.ndarray],
    feed: Mapping[str, np.ndarray],
    opener: Opener,
    rounds: int,
    compile_kw: Mapping[str, Any],
) -> tuple[dict[str, float], dict[str, float]]:
    """Compile the variant ``sf``, check its outputs against the default's, and profile it side by side with
    the default: per instance, the default's and the variant's time."""
    with record_instances() as seen:
        pkg = driver.compile(mod, t, schedule=sf, **compile_kw)
    with opener(pkg) as var:
        if not _same_outputs(want, var.run(feed)):
            raise ValueError("outputs differ from the default schedule's")
        var_groups = {k: [n for n, kk in seen.items() if kk == k] for k in groups}
        both = {**groups, **{f"variant:{k}": ks for k, ks in var_groups.items()}}
        d, v = _side_by_side(dflt, var, rounds, both)
    return {k: d[k] for k in groups}, {k: v[f"variant:{k}"] for k in groups}


def tune(
    model: Any,
    target: Target | str,
    *,
    trials: int = 8,
    open_device: Opener | None = None,
    shapes: Mapping[str, tuple[int | str, ...]] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    rounds: int = 9,
    margin: float = 0.03,
    seed: int = 0,
    min_repeat_ms: int = 100,
    log: Callable[[str], None] | None = None,
    **compile_kw: Any,
) -> TuneResult:
    """Search schedules for ``model`` on ``target`` with ``trials`` whole-model variants (see the module
    docstring); ``open_device`` loads a package on the device (default: ``pkg.open_session()``, native or
    under QEMU). Returns the schedule file (save it with ``result.schedule.save(path)``) and the figures."""
    say = log or (lambda _msg: None)
    t = get_target(target)
    opener: Opener = open_device or (lambda pkg: pkg.open_session())
    mod = driver.load_model(model, shapes, compile_kw.pop("name", None), compile_kw.pop("custom_ops", None))
    t0 = time.perf_counter()
    with record_instances() as seen:
        default_pkg = driver.compile(mod, t, **compile_kw)
    groups: dict[str, list[str]] = {}
    for kernel, key in sorted(seen.items()):
        groups.setdefault(key, []).append(kernel)
    say(f"default compiled in {time.perf_counter() - t0:.1f}s: {len(groups)} tunable instance(s)")
    rng = random.Random(seed)
    pools = {key: candidates(key, t, rng)[::-1] for key in groups}  # popped from the end: best first
    results = {key: InstanceResult(key, ks) for key, ks in groups.items()}
    default_samples: dict[str, list[float]] = {key: [] for key in groups}
    best_ratio = dict.fromkeys(groups, 1.0)
    failed = done = 0
    with opener(default_pkg) as dflt:
        feed = dict(inputs) if inputs is not None else _random_inputs(default_pkg, seed)
        want = dflt.run(feed)
        for trial in range(trials):
            choice = {key: pool.pop() for key, pool in pools.items() if pool}
            if not choice:
                say("every candidate has been tried")
                break
            t0 = time.perf_counter()
            try:
                d, v = _measure_variant(
                    mod,
                    t,
                    ScheduleFile(instances=choice, target=t.name),
                    groups,
                    dflt,
                    want,
                    feed,
                    opener,
                    rounds,
                    compile_kw,
                )
            except Exception as e:  # a failed variant must not end a long search: report and go on
                failed += 1
                say(f"trial {trial + 1}/{trials}: dropped ({type(e).__name__}: {e})")
                continue
            done += 1
            better = 0
            for key, r in results.items():
                default_samples[key].append(d[key])
                if key not in choice or not d[key]:
                    continue
                r.tried += 1
                if v[key] / d[key] < best_ratio[key]:
                    best_ratio[key], r.best, r.default_s, r.best_s = (
                        v[key] / d[key],
                        choice[key],
                        d[key],
                        v[key],
                    )
                    better += 1
            say(
                f"trial {trial + 1}/{trials}: compiled and measured in {time.perf_counter() - t0:.1f}s, "
                f"{better} instance(s) improved"
            )
        chosen = {k: r.best for k, r in results.items() if r.best and best_ratio[k] < 1.0 - margin}
        if chosen:  # confirm the winners together, in a fresh side-by-side run; drop those that do not hold
            sf = ScheduleFile(instances=chosen, target=t.name)
            d, v = _measure_variant(mod, t, sf, groups, dflt, want, feed, opener, 2 * rounds, compile_kw)
            lost = [k for k in chosen if d[k] and v[k] / d[k] >= 1.0 - margin / 2]
            for k in lost:
                say(f"not confirmed, dropped: {k} ({v[k] / d[k]:.3f}x)")
                del chosen[k]
        for k, r in results.items():
            if k not in chosen:
                r.best = {}
                r.default_s = r.best_s = statistics.median(default_samples[k]) if default_samples[k] else 0.0
        sf = ScheduleFile(instances=chosen, target=t.name)
        if chosen:
            tuned_pkg = driver.compile(mod, t, schedule=sf, **compile_kw)
            with opener(tuned_pkg) as tuned:
                if not _same_outputs(want, tuned.run(feed)):
                    raise RuntimeError("the tuned schedules change the model's outputs")
                default_s, tuned_s = _whole_model(dflt, tuned, 2 * rounds, min_repeat_ms)
        else:
            default_s = tuned_s = statistics.median(
                dflt.time(number=1, repeat=rounds, min_repeat_ms=min_repeat_ms)
            )
    sf.tuning = {
        "model": str(mod.main.attrs.get("model_name", mod.main.name)),
        "trials": done,
        "seed": seed,
        "default_ms": round(default_s * 1e3, 4),
        "tuned_ms": round(tuned_s * 1e3, 4),
        "instances": {
            k: {"default_us": round(r.default_s * 1e6, 2), "tuned_us": round(r.best_s * 1e6, 2)}
            for k, r in sorted(results.items())
            if k in chosen
        },
    }
    say(
        f"{len(chosen)} of {len(results)} instance(s) tuned; whole model {default_s * 1e3:.3f} ms -> "
        f"{tuned_s * 1e3:.3f} ms ({tuned_s / default_s if default_s else 1.0:.3f}x)"
    )
    return TuneResult(sf, sorted(results.values(), key=lambda r: r.key), default_s, tuned_s, done, failed)


__all__ = ["InstanceResult", "TuneResult", "candidates", "tune"]
