"""Benchmark: pod churn as a rolling update does it, on a node holding learned routes
(issue 17). ``noderouter-cni`` (through the daemon's CNI server) vs ``bridge`` +
``host-local``, same run, same node namespace.

    .venv/bin/python -m bench.bench_churn [--pods 200] [--wave 20] [--routes 5000] [--json]

Per plugin: ``--pods`` pods are started (``--wave`` at a time, timed apart as the
scale-out), then replaced ``--wave`` at a time: each wave runs its DELs of old pods
and ADDs of new pods interleaved (DEL old i, ADD new i, ...) with ``--wave`` calls in
flight, as a Deployment's rolling update with maxSurge = maxUnavailable = wave does.
Reported: the rolling update's total time, p50/p99 of its ADDs, its DELs and all its
calls, and for ours the time until the pod has connectivity — its /32 host route
present in the node namespace, seen by ``ip -ts monitor route`` there — beside the
ADD latency (the route is ADD's last step; the gap is the answer's way back to the
runtime). The reference's pods are reachable through its bridge as soon as its ADD
returns; it installs no per-pod route to watch.

The learned routes: ``--routes`` /32s via a ToR next hop on the node's uplink with
our route protocol (73), written with ``ip -batch`` — the kernel state the daemon
leaves for BGP-learned routes (``felix_like`` installs them the same way), without
running BGP: what they cost a CNI call is the size of the main table it works in.
Both plugins run beside them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.bench_cni import PLUGIN, REF_DIR, Bench, pct

ROUTE_LINE = re.compile(r"^\[([0-9T:.\-]+)\] (\d+\.\d+\.\d+\.\d+) dev (\S+) .*proto 73")


def add_learned_routes(node: str, tmp: str, count: int, dev: str = "nrup0") -> None:
    """``count`` /32 routes in ``node``'s main table via a ToR address on ``dev``."""
    if count <= 0:
        return
    if count > 250 * 64:
        raise ValueError(f"at most {250 * 64} learned routes fit 198.18.64.0/18 here")
    batch = os.path.join(tmp, "learned.batch")
    with open(batch, "w") as f:
        for i in range(count):
            f.write(f"route add 198.18.{64 + i // 250}.{1 + i % 250}/32 via 198.18.9.2 "
                    f"dev {dev} proto 73 onlink\n")
    subprocess.run(["ip", "-n", node, "-batch", batch], check=True, capture_output=True)


class RouteWatch:
    """``ip -ts monitor route`` in the node namespace: every time a pod /32 of ours
    (dev ``prefix``*, proto 73) appeared, by address (addresses are reused: a pod
    of a later wave may get an earlier pod's)."""

    def __init__(self, node: str, prefix: str) -> None:
        self.prefix = prefix
        self.events: dict[str, list[float]] = {}
        self.proc = subprocess.Popen(["ip", "-n", node, "-ts", "monitor", "route"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = ROUTE_LINE.match(line)
            if m and m.group(3).startswith(self.prefix):
                ts = datetime.datetime.fromisoformat(m.group(1)).timestamp()
                self.events.setdefault(m.group(2), []).append(ts)

    def seen_after(self, ip: str, after: float) -> float | None:
        """The first appearance of ``ip``'s route at or after ``after`` (wall clock)."""
        later = [t for t in self.events.get(ip, []) if t >= after]
        return min(later) if later else None

    def stop(self) -> None:
        self.proc.terminate()                 # our own child, by its PID
        self.proc.wait(timeout=10)
        self.thread.join(timeout=5)


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(pct(values, 50) * 1e3, 1),
            "p99_ms": round(pct(values, 99) * 1e3, 1), "max_ms": round(max(values) * 1e3, 1)}


class Churn:
    def __init__(self, bench: Bench, pods: int, wave: int) -> None:
        self.b = bench
        self.pods = pods
        self.wave = wave

    def call(self, exe: str, conf: str, command: str, i: int) -> dict[str, Any]:
        """One plugin call on pod slot ``i``: start (wall clock), latency, the IP."""
        b = self.b
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": f"churn{i:05d}",
               "CNI_NETNS": b.pods[i], "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR}
        start = time.time()
        t0 = time.perf_counter()
        res = subprocess.run(["ip", "netns", "exec", b.node, exe], input=conf, env=env,
                             capture_output=True, text=True, timeout=120)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"{os.path.basename(exe)} {command} #{i} failed: "
                               f"{res.stdout.strip()[:400]} {res.stderr.strip()[-400:]}")
        ip = None
        if command == "ADD":
            ip = json.loads(res.stdout)["ips"][0]["address"].split("/")[0]
        return {"command": command, "start": start, "seconds": dt, "ip": ip}

    def run_plugin(self, exe: str, conf: str, watch: RouteWatch | None) -> dict[str, Any]:
        n, w = self.pods, self.wave
        with ThreadPoolExecutor(w) as pool:
            t0 = time.perf_counter()
            first = list(pool.map(lambda i: self.call(exe, conf, "ADD", i), range(n)))
            scale_out = time.perf_counter() - t0
            calls: list[dict[str, Any]] = []
            t0 = time.perf_counter()
            for start in range(0, n, w):
                ops = []
                for j in range(start, min(start + w, n)):
                    ops += [("DEL", j), ("ADD", n + j)]          # old pod j -> new pod n+j
                calls += list(pool.map(lambda op: self.call(exe, conf, *op), ops))
            rolling = time.perf_counter() - t0
            list(pool.map(lambda i: self.call(exe, conf, "DEL", n + i), range(n)))
        adds = [c for c in calls if c["command"] == "ADD"]
        out: dict[str, Any] = {
            "scale_out_total_s": round(scale_out, 2),
            "scale_out_add": stats([c["seconds"] for c in first]),
            "rolling_total_s": round(rolling, 2),
            "rolling_add": stats([c["seconds"] for c in adds]),
            "rolling_del": stats([c["seconds"] for c in calls if c["command"] == "DEL"]),
            "rolling_all": stats([c["seconds"] for c in calls]),
        }
        if watch is not None:
            time.sleep(0.5)                  # the monitor's last lines
            ready = []
            for c in adds:
                seen = watch.seen_after(c["ip"], c["start"])
                if seen is not None:
                    ready.append(seen - c["start"])
            out["rolling_time_to_route"] = stats(ready)
        return out


def run(pods: int = 200, wave: int = 20, routes: int = 5000) -> dict[str, Any]:
    b = Bench(2 * pods, wave)
    try:
        b.setup()
        add_learned_routes(b.node, b.tmp, routes)
        churn = Churn(b, pods, wave)
        out: dict[str, Any] = {"pods": pods, "wave": wave, "learned_routes": routes,
                               "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
        watch = RouteWatch(b.node, "nrw")
        try:
            out["noderouter-cni"] = churn.run_plugin(PLUGIN, b.ours_conf(), watch)
        finally:
            watch.stop()
        bridge = os.path.join(REF_DIR, "bridge")
        if os.path.exists(bridge):
            out["bridge+host-local"] = churn.run_plugin(bridge, b.ref_conf(), None)
        else:
            out["bridge+host-local"] = f"not installed ({bridge}): run scripts/setup"
        out["loadavg_end"] = os.getloadavg()[0]
        return out
    finally:
        b.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--wave", type=int, default=20)
    ap.add_argument("--routes", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_churn needs root (it creates network namespaces)")
    res = run(args.pods, args.wave, args.routes)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"pods {res['pods']} replaced {res['wave']} at a time, {res['learned_routes']} "
          f"learned routes, cpus {res['cpus']}, load {res['loadavg_start']:.1f} -> "
          f"{res['loadavg_end']:.1f}")
    for plugin in ("noderouter-cni", "bridge+host-local"):
        r = res[plugin]
        if isinstance(r, str):
            print(f"  {plugin}: {r}")
            continue
        print(f"  {plugin}: rolling update {r['rolling_total_s']} s, scale-out "
              f"{r['scale_out_total_s']} s")
        for key in ("rolling_add", "rolling_del", "rolling_all", "rolling_time_to_route"):
            if key in r and r[key].get("n"):
                s = r[key]
                print(f"    {key:24s} n {s['n']:4d}  p50 {s['p50_ms']:8.1f} ms  p99 "
                      f"{s['p99_ms']:8.1f} ms  max {s['max_ms']:8.1f} ms")


if __name__ == "__main__":
    main()
