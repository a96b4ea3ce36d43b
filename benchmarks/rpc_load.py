"""Load test of the device farm: many lightweight device servers, many clients leasing in a loop.

    python benchmarks/rpc_load.py --devices 100 --clients 20 --leases 50

Starts a tracker and ``--devices`` real device servers (gRPC, registered and heart-beating, no runner
processes: "lightweight") on 127.0.0.1, spread over a few keys plus one contended "hot" key with two devices.
``--clients`` threads, each with its own tracker connection, then lease a device, call it (Health, over the
leased address, with the token), and release it, ``--leases`` times. It checks that no device was ever held by
two clients at once (double lease), that every request was granted (no lost leases), that the tracker's
counters agree, and prints the throughput. Everything stays on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kiln.device import Launcher, Session

TOKEN = "kiln-load-test-token"


class NullLauncher(Launcher):
    """A launcher for servers that never run a package."""

    name = "null"

    def start(self, runnable: Path, *, timeout: float | None = 60.0) -> Session:
        raise RuntimeError("the load test's device servers run no packages")


@dataclass
class LoadResult:
    devices: int
    clients: int
    leases: int
    seconds: float
    double_leases: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    grant_latencies: list[float] = field(default_factory=list)
    tracker_granted: int = 0
    tracker_released: int = 0
    leases_left: int = 0
    busy_devices_left: int = 0

    @property
    def throughput(self) -> float:
        return self.leases / self.seconds if self.seconds else 0.0

    def report(self) -> str:
        lat = sorted(self.grant_latencies) or [0.0]
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
        return "\n".join(
            [
                f"device farm load: {self.devices} device servers, {self.clients} clients",
                f"  leases: {self.leases} in {self.seconds:.2f} s = {self.throughput:.0f} leases/s",
                f"  request->grant latency ms: median {statistics.median(lat) * 1000:.2f}, p90 {p(0.9):.2f}, "
                f"p99 {p(0.99):.2f}, max {lat[-1] * 1000:.2f}",
                f"  tracker: granted {self.tracker_granted}, released {self.tracker_released}, "
                f"leases left {self.leases_left}, devices still leased {self.busy_devices_left}",
                f"  double leases: {len(self.double_leases)}, errors: {len(self.errors)}",
            ]
        )

    @property
    def ok(self) -> bool:
        return (
            not self.double_leases
            and not self.errors
            and self.tracker_granted == self.tracker_released == self.leases
            and self.leases_left == 0
            and self.busy_devices_left == 0
        )


def run(
    devices: int = 100,
    clients: int = 20,
    leases: int = 50,
    keys: int = 4,
    heartbeat: float = 0.5,
    seed: int = 0,
) -> LoadResult:
    from kiln.rpc.auth import server_security
    from kiln.rpc.client import connect
    from kiln.rpc.servers import DeviceServer, TrackerServer
    from kiln.rpc.tracker import Tracker

    security = server_security(TOKEN)
    tracker = TrackerServer(
        Tracker(heartbeat_interval=heartbeat, liveness=10 * heartbeat, lease_ttl=30.0), security
    ).start()
    names = ["hot", "hot"] + [f"k{i % keys}" for i in range(devices - 2)]
    servers = [
        DeviceServer(
            key=k,
            target="x86_64-linux",
            launcher=NullLauncher(),
            security=security,
            tracker=tracker.address,
            tracker_token=TOKEN,
            retry_interval=0.1,
            max_workers=2,
        ).start()
        for k in names
    ]
    try:
        deadline = time.monotonic() + 30
        while len(tracker.tracker.devices()) < devices:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(tracker.tracker.devices())} of {devices} devices registered")
            time.sleep(0.05)
        holders: dict[str, int] = {}
        lock = threading.Lock()
        result = LoadResult(devices, clients, 0, 0.0)
        keyset = sorted(set(names))
        start = threading.Barrier(clients + 1)

        def client(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            with connect(tracker.address, token=TOKEN, client=f"load-{i}") as tr:
                start.wait()
                for _ in range(leases):
                    key = "hot" if rng.random() < 0.3 else rng.choice(keyset)
                    t0 = time.perf_counter()
                    try:
                        with tr.request(key, timeout=60, priority=rng.randint(0, 2)) as dev:
                            dt = time.perf_counter() - t0
                            with lock:
                                other = holders.get(dev.address)
                                if other is not None:
                                    result.double_leases.append(f"{dev.address}: clients {other} and {i}")
                                holders[dev.address] = i
                                result.grant_latencies.append(dt)
                            dev.health()
                            with lock:
                                if holders.get(dev.address) == i:
                                    del holders[dev.address]
                                result.leases += 1
                    except Exception as e:  # reported, never hidden
                        with lock:
                            result.errors.append(f"client {i}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        result.seconds = time.perf_counter() - t0
        stats = tracker.tracker.stats()
        result.tracker_granted = sum(k.leases_granted for k in stats.keys)
        result.tracker_released = sum(k.leases_released + k.leases_expired for k in stats.keys)
        result.leases_left = len(tracker.tracker.state.leases())
        result.busy_devices_left = sum(1 for d in tracker.tracker.devices() if d.state != "free")
        return result
    finally:
        for s in servers:
            s.stop(grace=None)
        tracker.stop(grace=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--leases", type=int, default=50, help="leases per client")
    ap.add_argument("--keys", type=int, default=4, help="device keys besides the contended 'hot' one")
    args = ap.parse_args(argv)
    res = run(args.devices, args.clients, args.leases, args.keys)
    print(res.report())
    for e in (res.double_leases + res.errors)[:10]:
        print("  !", e)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
