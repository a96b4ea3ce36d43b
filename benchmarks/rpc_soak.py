"""Soak test of the device farm: clients working while faults are injected at random. Bounded; not in the suite.

    python benchmarks/rpc_soak.py --minutes 10

Starts a tracker that keeps its state in SQLite (``--state``), ``--devices`` device servers and ``--clients``
client processes, all on 127.0.0.1. Each client loops until the end: lease a device, load the tiny model,
run it three times checking the result, release; it reports every cycle (result or error) as a JSON line.
Meanwhile, every few seconds, one fault at random:

- ``kill-device``: SIGKILL a device server (only the server: its runners must die with it) and start it again
  on the same port and cache directory;
- ``restart-tracker``: SIGKILL the tracker and start it again over the same state file;
- ``kill-runner``: SIGKILL one runner process of a device;
- ``kill-client``: SIGKILL a client process in the middle of whatever it does, and start a new one.

At the end it checks, and prints with the counts:

- no lease was ever used twice at once on a device (clients' first-to-last call spans on a device never
  overlap);
- every call ended with a result or a clear error (a RemoteError with a status code and a message, or a
  timeout the client set); no client hung past the end;
- no orphan runner outlived its killed server by more than ``ORPHAN_GRACE_S``;
- memory and disk stayed bounded: the tracker's and device servers' RSS and the farm's files on disk,
  sampled all along, stay under fixed bounds.

Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "rpc"))

ORPHAN_GRACE_S = 5.0
MAX_RSS_MB = 400.0
MAX_DISK_MB = 200.0


def client_loop(tracker: str, index: int, until: float) -> None:
    """One client process: cycles until ``until`` (epoch seconds); one JSON line per cycle."""
    import numpy as np

    import kiln.rpc
    import tinypkg
    from kiln.rpc.client import RemoteError

    pkg = tinypkg.build("x86_64-linux")
    tr = kiln.rpc.connect(tracker, client=f"soak-{index}")
    n = 0
    while time.time() < until:
        n += 1
        rec: dict[str, object] = {"client": index, "pid": os.getpid()}
        try:
            with tr.request("x86", timeout=20) as dev:
                rec["device"] = dev.address
                m = dev.load(pkg, timeout=10)
                rec["first_call"] = time.time()
                for _ in range(3):
                    feeds = tinypkg.inputs(np.full((2, 4), index * 10000 + n, np.float32))
                    if not np.array_equal(m.run(feeds)["y"], tinypkg.reference(feeds)["y"]):
                        raise AssertionError("wrong result")
                rec["last_call"] = time.time()
            rec["ok"] = True
        except RemoteError as e:
            rec["error"] = e.code.name if e.code is not None else "NONE"
            rec["clear"] = bool(str(e).strip()) and e.code is not None
            rec["msg"] = str(e)[:200]
        except Exception as e:
            rec["error"] = type(e).__name__
            rec["clear"] = False
            rec["msg"] = str(e)[:200]
        print(json.dumps(rec), flush=True)
        if "error" in rec:
            time.sleep(0.2)  # a client backs off after a failure instead of spinning


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _disk_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total / 2**20


def soak(minutes: float, devices: int, clients: int, seed: int, fault_every: float) -> int:
    from farmproc import FarmProcess

    rng = random.Random(seed)
    token = secrets.token_hex(16)
    os.environ["KILN_RPC_TOKEN"] = token
    work = Path(tempfile.mkdtemp(prefix="kiln-soak-"))
    db = work / "tracker.db"
    end = time.time() + minutes * 60
    faults: collections.Counter[str] = collections.Counter()
    orphan_times: list[float] = []
    orphans_late = 0
    peak = {"tracker_rss": 0.0, "device_rss": 0.0, "disk": 0.0}

    def start_tracker(port: int = 0) -> FarmProcess:
        return FarmProcess(
            "tracker",
            "--port",
            str(port),
            "--state",
            str(db),
            "--heartbeat-interval",
            "0.3",
            "--lease-ttl",
            "3",
        )

    def start_device(i: int, port: int = 0) -> FarmProcess:
        return FarmProcess(
            "serve",
            "--tracker",
            f"127.0.0.1:{tracker_port}",
            "--key",
            "x86",
            "--target",
            "x86_64-linux",
            "--launcher",
            "local",
            "--port",
            str(port),
            "--cache-dir",
            str(work / f"dev{i}"),
            "--call-timeout",
            "10",
        )

    tracker = start_tracker()
    tracker_port = tracker.port
    devs = [start_device(i) for i in range(devices)]
    lines: list[str] = []
    lock = threading.Lock()

    def start_client(i: int) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, __file__, "--client", f"127.0.0.1:{tracker_port}", str(i), str(end)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

        def read() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                with lock:
                    lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        return p

    clients_p = [start_client(i) for i in range(clients)]
    next_client = clients
    try:
        while time.time() < end - 2:
            time.sleep(min(fault_every * rng.uniform(0.5, 1.5), max(0.0, end - 2 - time.time())))
            if time.time() >= end - 2:
                break
            peak["tracker_rss"] = max(peak["tracker_rss"], _rss_mb(tracker.proc.pid))
            peak["device_rss"] = max(peak["device_rss"], *(_rss_mb(d.proc.pid) for d in devs))
            peak["disk"] = max(peak["disk"], _disk_mb(work))
            fault = rng.choice(["kill-device", "restart-tracker", "kill-runner", "kill-client"])
            faults[fault] += 1
            if fault == "kill-device":
                i = rng.randrange(len(devs))
                d = devs[i]
                runners = _children(d.proc.pid)
                d.proc.send_signal(signal.SIGKILL)
                d.kill()
                t0 = time.monotonic()
                while any(_alive(r) for r in runners) and time.monotonic() - t0 < 30:
                    time.sleep(0.02)
                if runners:
                    orphan_times.append(time.monotonic() - t0)
                    if time.monotonic() - t0 > ORPHAN_GRACE_S:
                        orphans_late += 1
                devs[i] = start_device(i, d.port)
            elif fault == "restart-tracker":
                tracker.kill()
                tracker = start_tracker(tracker_port)
            elif fault == "kill-runner":
                runners = [r for d in devs for r in _children(d.proc.pid)]
                if runners:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(runners), signal.SIGKILL)
            else:
                i = rng.randrange(len(clients_p))
                clients_p[i].kill()
                clients_p[i].wait()
                clients_p[i] = start_client(next_client)
                next_client += 1
        hung = 0
        for p in clients_p:
            try:
                p.wait(timeout=max(5.0, end - time.time() + 60))
            except subprocess.TimeoutExpired:
                hung += 1
                p.kill()
        time.sleep(0.5)
        peak["tracker_rss"] = max(peak["tracker_rss"], _rss_mb(tracker.proc.pid))
        peak["disk"] = max(peak["disk"], _disk_mb(work))
    finally:
        for p in clients_p:
            if p.poll() is None:
                p.kill()
        for d in devs:
            d.kill()
        tracker.kill()

    records = [json.loads(line) for line in lines if line.startswith("{")]
    ok = [r for r in records if r.get("ok")]
    errors = collections.Counter(str(r["error"]) for r in records if "error" in r)
    unclear = [r for r in records if "error" in r and not r.get("clear")]
    spans: dict[str, list[tuple[float, float, int]]] = collections.defaultdict(list)
    for r in ok:
        spans[str(r["device"])].append((float(r["first_call"]), float(r["last_call"]), int(r["pid"])))
    double = 0
    for s in spans.values():
        s.sort()
        for (_, a1, pa), (b0, _, pb) in zip(s, s[1:], strict=False):
            if b0 < a1 and pa != pb:
                double += 1
    print(f"soak: {minutes:g} min, {devices} device servers, {clients} clients (seed {seed})")
    print(f"  faults injected: {dict(faults)} (total {sum(faults.values())})")
    print(f"  cycles: {len(records)} ended, {len(ok)} with results, errors by code: {dict(errors)}")
    print(f"  unclear errors: {len(unclear)}; clients hung past the end: {hung}")
    print(f"  leases used twice at once on a device: {double}")
    worst = max(orphan_times, default=0.0)
    print(
        f"  runners of killed servers: gone after at most {worst:.2f} s ({len(orphan_times)} kills with runners); "
        f"late: {orphans_late}"
    )
    print(
        f"  peak tracker RSS {peak['tracker_rss']:.0f} MiB, device server RSS {peak['device_rss']:.0f} MiB, "
        f"farm files on disk {peak['disk']:.1f} MiB"
    )
    for r in unclear[:5]:
        print("  ! unclear:", r)
    kinds = collections.Counter(
        " ".join(str(r["msg"]).split(":")[0:2])[:90] for r in records if "error" in r and r.get("clear")
    )
    for msg, n in kinds.most_common(6):
        print(f"  {n:6d} x {msg}")
    passed = (
        double == 0
        and not unclear
        and hung == 0
        and orphans_late == 0
        and peak["tracker_rss"] < MAX_RSS_MB
        and peak["device_rss"] < MAX_RSS_MB
        and peak["disk"] < MAX_DISK_MB
        and len(ok) > 0
    )
    print("  PASS" if passed else "  FAIL")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fault-every", type=float, default=3.0, metavar="S", help="mean seconds between faults")
    ap.add_argument("--client", nargs=3, metavar=("TRACKER", "INDEX", "UNTIL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        client_loop(args.client[0], int(args.client[1]), float(args.client[2]))
        return 0
    return soak(args.minutes, args.devices, args.clients, args.seed, args.fault_every)


if __name__ == "__main__":
    sys.exit(main())
