"""Capacity test of the device farm with real processes.

    python benchmarks/rpc_load.py --devices 6 --clients 12 --cycles 20

Starts a tracker (``kiln tracker``, its own process), ``--devices`` device servers (``kiln serve``, one process
each, local launcher, x86-64 runners) on 127.0.0.1 with a token, over a few keys plus one contended key
("hot", one device, wanted by every client now and then), then ``--clients`` client processes that each run
``--cycles`` full cycles: lease a device, load the tiny model (upload on first use), run it on inputs of their
own and check the result, release. It reports:

- throughput (cycles per second over the whole run) and p50/p99 of the request->grant latency and of a whole
  cycle;
- errors (every failed cycle, with its message);
- double uses: two clients whose use of one device overlapped in time (from each client's first device call
  to its last within a lease; must be 0, the devices serve one lease holder at a time);
- the tracker's resident memory at the end.

Everything stays on loopback, every loop is bounded, and every process it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "rpc"))


def _client(tracker: str, token: str, index: int, cycles: int, keys: list[str]) -> None:
    """One client process: ``cycles`` lease -> load -> run -> release cycles; prints one JSON line per cycle."""
    import random

    import numpy as np

    import kiln.rpc
    import tinypkg

    rng = random.Random(index)
    pkg = tinypkg.build("x86_64-linux")
    with kiln.rpc.connect(tracker, token=token, client=f"load-{index}") as tr:
        for c in range(cycles):
            key = "hot" if rng.random() < 0.25 else rng.choice(keys)
            rec: dict[str, object] = {"client": index, "key": key}
            t0 = time.time()
            try:
                with tr.request(key, timeout=120) as dev:
                    rec["grant_s"] = time.time() - t0
                    rec["device"] = dev.address
                    m = dev.load(pkg)
                    rec["first_call"] = time.time()
                    for _ in range(3):
                        x = np.full((2, 4), index * 1000 + c, np.float32)
                        feeds = tinypkg.inputs(x)
                        got = m.run(feeds)["y"]
                        if not np.array_equal(got, tinypkg.reference(feeds)["y"]):
                            raise AssertionError("wrong result: another client's inputs or outputs?")
                    rec["last_call"] = time.time()
                rec["cycle_s"] = time.time() - t0
            except Exception as e:  # reported, never hidden
                rec["error"] = f"{type(e).__name__}: {e}"
            print(json.dumps(rec), flush=True)


@dataclass
class LoadResult:
    devices: int
    clients: int
    cycles: int = 0
    seconds: float = 0.0
    grants: list[float] = field(default_factory=list)
    cycle_times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    double_uses: list[str] = field(default_factory=list)
    tracker_rss_mb: float = 0.0
    hot_cycles: int = 0

    @property
    def throughput(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.double_uses

    def report(self) -> str:
        def pct(xs: list[float], q: float) -> float:
            xs = sorted(xs) or [0.0]
            return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

        g, c = self.grants, self.cycle_times
        return "\n".join(
            [
                f"device farm capacity: {self.devices} device server processes, {self.clients} client processes",
                f"  cycles (lease, load, 3 runs, release): {self.cycles} in {self.seconds:.1f} s = "
                f"{self.throughput:.1f} cycles/s ({self.hot_cycles} on the contended key)",
                f"  grant latency ms: p50 {statistics.median(g or [0]) * 1000:.1f}, p99 {pct(g, 0.99):.1f}",
                f"  cycle latency ms: p50 {statistics.median(c or [0]) * 1000:.1f}, p99 {pct(c, 0.99):.1f}",
                f"  errors: {len(self.errors)}, double uses seen by the devices: {len(self.double_uses)}",
                f"  tracker RSS at the end: {self.tracker_rss_mb:.1f} MiB",
            ]
        )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(
    devices: int = 6, clients: int = 12, cycles: int = 20, keys: int = 2, timeout: float = 600
) -> LoadResult:
    import kiln.rpc
    from farmproc import FarmProcess

    token = secrets.token_hex(16)
    env = {"KILN_RPC_TOKEN": token}
    os.environ["KILN_RPC_TOKEN"] = token
    procs: list[FarmProcess] = []
    workers: list[subprocess.Popen[str]] = []
    result = LoadResult(devices, clients)
    try:
        tracker = FarmProcess("tracker", "--port", "0", "--heartbeat-interval", "0.5", env=env)
        procs.append(tracker)
        names = ["hot"] + [f"k{i % keys}" for i in range(devices - 1)]
        for k in names:
            procs.append(
                FarmProcess(
                    "serve",
                    "--tracker",
                    tracker.address,
                    "--key",
                    k,
                    "--target",
                    "x86_64-linux",
                    "--launcher",
                    "local",
                    "--port",
                    "0",
                    env=env,
                    new_session=True,
                )
            )
        tr = kiln.rpc.connect(tracker.address, token=token)
        end = time.monotonic() + 30
        while len(tr.devices()) < devices:
            if time.monotonic() > end:
                raise RuntimeError("the device servers did not register")
            time.sleep(0.05)
        keyset = ",".join(sorted(set(names) - {"hot"}))
        t0 = time.perf_counter()
        workers = [
            subprocess.Popen(
                [sys.executable, __file__, "--client", tracker.address, str(i), str(cycles), keyset],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
            for i in range(clients)
        ]
        records = []
        deadline = time.monotonic() + timeout
        for w in workers:
            try:
                stdout, stderr = w.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
                stdout, stderr = w.communicate()
            records += [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
            if w.returncode != 0:
                result.errors.append(f"client process exited with {w.returncode}: {stderr.strip()[-300:]}")
        result.seconds = time.perf_counter() - t0
        result.tracker_rss_mb = _rss_mb(tracker.proc.pid)
        if len(records) < clients * cycles:
            result.errors.append(
                f"only {len(records)} of {clients * cycles} cycles ended within {timeout:g} s"
            )
        uses: dict[str, list[tuple[float, float, int]]] = {}
        for r in records:
            if "error" in r:
                result.errors.append(f"client {r['client']}: {r['error']}")
                continue
            result.cycles += 1
            result.hot_cycles += r["key"] == "hot"
            result.grants.append(float(r["grant_s"]))  # type: ignore[arg-type]
            result.cycle_times.append(float(r["cycle_s"]))  # type: ignore[arg-type]
            uses.setdefault(str(r["device"]), []).append((r["first_call"], r["last_call"], r["client"]))  # type: ignore[arg-type]
        for dev, spans in uses.items():
            spans.sort()
            for (_, a1, ca), (b0, _, cb) in zip(spans, spans[1:], strict=False):
                if b0 < a1:
                    result.double_uses.append(
                        f"{dev}: clients {ca} and {cb} overlap by {(a1 - b0) * 1000:.1f} ms"
                    )
        return result
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        for p in reversed(procs):
            p.kill_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=6)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--cycles", type=int, default=20, help="cycles per client")
    ap.add_argument("--keys", type=int, default=2, help="device keys besides the contended 'hot' one")
    ap.add_argument("--json", action="store_true", help="print the result as JSON too")
    ap.add_argument(
        "--client", nargs=4, metavar=("TRACKER", "INDEX", "CYCLES", "KEYS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.client:  # one client process of a run
        tracker, index, cycles, keys = args.client
        _client(tracker, os.environ["KILN_RPC_TOKEN"], int(index), int(cycles), keys.split(","))
        return 0
    res = run(args.devices, args.clients, args.cycles, args.keys)
    print(res.report())
    for e in (res.double_uses + res.errors)[:10]:
        print("  !", e)
    if args.json:
        print(json.dumps({"cycles_per_s": res.throughput, "errors": len(res.errors)}))
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
