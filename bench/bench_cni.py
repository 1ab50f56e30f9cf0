"""Benchmark: pod creation — CNI ADD/DEL latency of ``noderouter-cni`` vs the reference
``bridge`` + ``host-local`` plugins (Debian's containernetworking-plugins), same run.

    .venv/bin/python -m bench.bench_cni [--pods N] [--parallel P] [--direct] [--json]

Everything lives in a throwaway "node" namespace (etcd on its loopback, our pool
198.19.0.0/17, the reference's host-local range 198.19.128.0/17 on bridge nrbr0)
and N throwaway pod namespaces; every plugin invocation is ``ip netns exec <node>
<plugin>`` — the same exec path for both, so the comparison is fair. Phases per
plugin: N ADDs one after another, N DELs one after another, then N ADDs and N DELs
with P at a time. Reported: p50/p99/max latency per invocation and the phase's
total wall time. The reference does no datastore round trip: it is the floor.

``noderouter-cni`` is measured as deployed: the daemon's CNI server
(``python -m bgpd.cni.server``, the same ``CniServer`` ``noderouter run`` starts)
listens in the node namespace and the plugin's fast path hands each call to it.
``--direct`` also measures the plugin on its own (no daemon: its fallback path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lab.etcd import EtcdServer
from lab.netns import NetnsSet, run_prefix, sh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, ".venv", "bin", "noderouter-cni")
REF_DIR = "/usr/lib/cni"
OUR_POOL = "198.19.0.0/17"
REF_SUBNET = "198.19.128.0/17"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def summary(lat: list[float], total: float) -> dict[str, float]:
    return {"n": len(lat), "p50_ms": round(pct(lat, 50) * 1e3, 1),
            "p99_ms": round(pct(lat, 99) * 1e3, 1), "max_ms": round(max(lat) * 1e3, 1),
            "total_s": round(total, 2)}


class Bench:
    def __init__(self, pods: int, parallel: int) -> None:
        self.n = pods
        self.parallel = parallel
        self.ns = NetnsSet()
        self.tmp = tempfile.mkdtemp(prefix="nr-bench-cni-")
        self.node = ""
        self.pods: list[str] = []
        self.etcd: EtcdServer | None = None
        self.server: subprocess.Popen | None = None
        self.socket = os.path.join(self.tmp, "cni.sock")

    def setup(self) -> None:
        self.node = self.ns.add(run_prefix("nrcb"))
        # Pod namespaces in one `ip -batch` (1,000 `ip netns add` execs would dominate).
        names = [f"{self.node}-{i}" for i in range(self.n)]
        batch = os.path.join(self.tmp, "netns.batch")
        with open(batch, "w") as f:
            f.writelines(f"netns add {n}\n" for n in names)
        # Register before creating, so a failure half-way still deletes what exists.
        self.ns.names.extend(names)
        subprocess.run(["ip", "-batch", batch], check=True, capture_output=True)
        self.pods = [f"/run/netns/{n}" for n in names]
        sh(["ip", "link", "add", "nrup0", "type", "veth", "peer", "name", "nrup1"], self.node)
        for dev in ("nrup0", "nrup1"):
            sh(["ip", "link", "set", dev, "up"], self.node)
        sh(["ip", "addr", "add", "198.18.9.1/24", "dev", "nrup0"], self.node)
        sh(["ip", "route", "add", "default", "dev", "nrup0"], self.node)
        self.etcd = EtcdServer(netns=self.node).start()
        code = (f"from ipam.allocator import Ipam; from ipam.store import EtcdStore; "
                f"Ipam(EtcdStore('{self.etcd.endpoint}'), 'bench').add_pool('{OUR_POOL}')")
        subprocess.run(["ip", "netns", "exec", self.node, sys.executable, "-c", code],
                       check=True, capture_output=True, cwd=REPO)
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.node, sys.executable, "-m", "bgpd.cni.server",
             "--socket", self.socket, "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.tmp,
                                                                           "server.log"), "w"))
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the CNI server did not start")
            time.sleep(0.05)

    def teardown(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()          # our own child, by its PID
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.etcd is not None:
            self.etcd.stop()
        errors = self.ns.delete_all()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError(f"bench namespace teardown failed: {errors}")

    # ------------------------------------------------------------ invocations

    def ours_conf(self, daemon: bool = True) -> str:
        assert self.etcd is not None
        return json.dumps({"cniVersion": "1.0.0", "name": "k8s-pod-network",
                           "type": "noderouter-cni", "etcd_endpoints": [self.etcd.endpoint],
                           "node_name": "bench-node", "log_level": "warning",
                           "state_dir": os.path.join(self.tmp, "state"),
                           "daemon_socket": self.socket if daemon else None})

    def ref_conf(self) -> str:
        return json.dumps({"cniVersion": "1.0.0", "name": "refnet", "type": "bridge",
                           "bridge": "nrbr0", "isGateway": True, "ipMasq": False,
                           "ipam": {"type": "host-local", "subnet": REF_SUBNET,
                                    "dataDir": os.path.join(self.tmp, "host-local")}})

    def invoke(self, exe: str, conf: str, command: str, i: int) -> float:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": f"bench{i:05d}",
               "CNI_NETNS": self.pods[i], "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR}
        t0 = time.perf_counter()
        res = subprocess.run(["ip", "netns", "exec", self.node, exe], input=conf, env=env,
                             capture_output=True, text=True, timeout=120)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"{os.path.basename(exe)} {command} #{i} failed: "
                               f"{res.stdout.strip()[:400]} {res.stderr.strip()[-400:]}")
        return dt

    def phase(self, exe: str, conf: str, command: str, workers: int) -> dict[str, float]:
        t0 = time.perf_counter()
        if workers <= 1:
            lat = [self.invoke(exe, conf, command, i) for i in range(self.n)]
        else:
            with ThreadPoolExecutor(workers) as pool:
                lat = list(pool.map(lambda i: self.invoke(exe, conf, command, i),
                                    range(self.n)))
        return summary(lat, time.perf_counter() - t0)

    def plugin(self, exe: str, conf: str) -> dict[str, Any]:
        return {
            "add_sequential": self.phase(exe, conf, "ADD", 1),
            "del_sequential": self.phase(exe, conf, "DEL", 1),
            f"add_parallel{self.parallel}": self.phase(exe, conf, "ADD", self.parallel),
            f"del_parallel{self.parallel}": self.phase(exe, conf, "DEL", self.parallel),
        }


def run(pods: int, parallel: int, direct: bool = False) -> dict[str, Any]:
    b = Bench(pods, parallel)
    try:
        b.setup()
        out: dict[str, Any] = {"pods": pods, "parallel": parallel,
                               "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
        out["noderouter-cni"] = b.plugin(PLUGIN, b.ours_conf())
        if direct:
            out["noderouter-cni (direct)"] = b.plugin(PLUGIN, b.ours_conf(daemon=False))
        bridge = os.path.join(REF_DIR, "bridge")
        if os.path.exists(bridge):
            out["bridge+host-local"] = b.plugin(bridge, b.ref_conf())
        else:
            out["bridge+host-local"] = f"not installed ({bridge}): run scripts/setup"
        out["loadavg_end"] = os.getloadavg()[0]
        ours = out["noderouter-cni"]["add_sequential"]
        out["goals"] = {"1000_adds_under_30s": ours["total_s"] < 30 if pods >= 1000 else None,
                        "add_p99_under_60ms": ours["p99_ms"] < 60}
        return out
    finally:
        b.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--direct", action="store_true",
                    help="also measure the plugin without the daemon (slow: ~0.4 s a call)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_cni needs root (it creates network namespaces)")
    res = run(args.pods, args.parallel, args.direct)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"pods: {res['pods']}  parallel: {res['parallel']}  cpus: {res['cpus']}  "
          f"load avg {res['loadavg_start']:.1f} -> {res['loadavg_end']:.1f}")
    print(f"  {'plugin':24s} {'phase':16s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} "
          f"{'total s':>8s}")
    for plugin in ("noderouter-cni", "noderouter-cni (direct)", "bridge+host-local"):
        phases = res.get(plugin)
        if phases is None:
            continue
        if isinstance(phases, str):
            print(f"  {plugin:24s} {phases}")
            continue
        for phase, s in phases.items():
            print(f"  {plugin:24s} {phase:16s} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} "
                  f"{s['max_ms']:8.1f} {s['total_s']:8.2f}")
    print(f"  goals: {res['goals']}")


if __name__ == "__main__":
    main()
