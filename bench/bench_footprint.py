"""Footprint: RSS and idle CPU of ``noderouter run`` and its ExaBGP child at 0, 10k, 100k routes.

    sudo .venv/bin/python -m bench.bench_footprint [--routes 0 10000 100000] [--idle 15]

For each route count, fresh namespaces: a BIRD ToR (``tor``, 198.18.9.1) announcing N
static /32s over eBGP to one node (``node``, 198.18.9.10) that runs the real daemon
(``.venv/bin/noderouter run``) with etcd on the node's loopback. Once the kernel holds
the N routes (our protocol number) and a settle time has passed, the processes are
measured: VmRSS of the daemon, of ExaBGP (the daemon's child) and of ExaBGP's API
process (the relay), and their CPU use over an idle window (utime+stime from /proc,
as % of one core). The routes are /32s from 198.18.64.0/18, 198.18.128.0/17 and
198.19.0.0/16, all three configured as pools so the import policy accepts them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from bench.common import children, cmdline, cpu_seconds, figure, proc_status_kb, quiet_logs

TOR, NODE = "198.18.9.1", "198.18.9.10"
TOR_AS, NODE_AS = 65001, 64512
PROTO = 73
POOLS = ("198.18.64.0/18", "198.18.128.0/17", "198.19.0.0/16")


def node_config(wd: str, endpoint: str) -> str:
    import yaml

    cfg = {
        "node": {"name": "bench-node", "as_number": NODE_AS},
        "underlay": {"interface": "eth0", "address": NODE, "subnet": "198.18.9.0/24"},
        "etcd": {"endpoints": [endpoint], "timeout": 3},
        "bgp": {"mesh": False, "hold_time": 30, "peers": [
            {"address": TOR, "as_number": TOR_AS, "description": "tor", "max_prefix": 1_000_000}]},
        # The announced /32s lie in these pools, so the import policy accepts them.
        "pools": [{"cidr": c, "block_size": 26} for c in POOLS],
        "dataplane": {"route_protocol": PROTO},
        "status": {"socket": os.path.join(wd, "status.sock"),
                   # never the machine's /run/noderouter/cni.sock (the default)
                   "cni_socket": os.path.join(wd, "cni.sock")},
        "logging": {"level": "warning", "format": "json"},
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def _kernel_count(ns: str) -> int:
    from bench.bench_bgp import kernel_count

    return kernel_count(ns, PROTO)


def measure(n: int, idle: float, settle: float) -> dict:
    from bench.bench_bgp import prefixes
    from lab.etcd import EtcdServer
    from lab.netns import NetnsSet, run_prefix, sh, veth_pair
    from lab.procs import Daemon, wait_for
    from lab.routers import BgpNeighbor, BirdRouter

    owned = NetnsSet()
    wd = tempfile.mkdtemp(prefix="nr-bench-fp-")
    os.chmod(wd, 0o755)
    tor = etcd = daemon = None
    p = run_prefix("nrf")
    try:
        tor_ns, node_ns = owned.add(f"{p}-tor"), owned.add(f"{p}-node")
        veth_pair("eth0", tor_ns, "eth0", node_ns)
        sh(["ip", "addr", "add", f"{TOR}/24", "dev", "eth0"], netns=tor_ns)
        sh(["ip", "addr", "add", f"{NODE}/24", "dev", "eth0"], netns=node_ns)
        etcd = EtcdServer(netns=node_ns).start()
        tor = BirdRouter(tor_ns, f"{wd}/tor", TOR, TOR_AS,
                         [BgpNeighbor(NODE, NODE_AS, hold_time=30)],
                         static_routes=prefixes(n) if n else ()).start()
        conf = os.path.join(wd, "node.yaml")
        with open(conf, "w") as f:
            f.write(node_config(wd, etcd.endpoint))
        exe = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "noderouter")
        daemon = Daemon("noderouter", [exe, "run", "--config", conf, "--run-dir",
                                       os.path.join(wd, "run"), "--state-dir",
                                       os.path.join(wd, "cni")],
                        netns=node_ns, log_path=os.path.join(wd, "noderouter.log")).start()
        t0 = time.monotonic()
        wait_for(lambda: tor.established(NODE), 120, interval=0.2, what="ToR session")

        def have_all() -> bool:
            if not daemon.alive():
                raise RuntimeError(f"noderouter exited: {daemon.log_tail()}")
            return _kernel_count(node_ns) >= n
        wait_for(have_all, 300, interval=0.5, what=f"{n} routes in the node's kernel")
        installed_s = time.monotonic() - t0
        time.sleep(settle)

        def tree() -> dict[str, int]:
            exa = [c for c in children(daemon.pid) if "exabgp" in cmdline(c)]
            procs = {"daemon": daemon.pid}
            if exa:
                procs["exabgp"] = exa[0]
                relay = children(exa[0])
                if relay:
                    procs["relay"] = relay[0]
            return procs
        procs = tree()
        c0 = {k: cpu_seconds(v) for k, v in procs.items()}
        w0 = time.monotonic()
        time.sleep(idle)
        wall = time.monotonic() - w0
        if tree() != procs:
            raise RuntimeError(f"process tree changed while idle: {procs} -> {tree()}")
        out = {"routes": n, "kernel_routes": _kernel_count(node_ns),
               "session_to_installed_s": round(installed_s, 2), "idle_window_s": idle}
        for k, pid in procs.items():
            out[f"rss_{k}_mb"] = round(proc_status_kb(pid) / 1024, 1)
            out[f"cpu_{k}_pct"] = round(100 * (cpu_seconds(pid) - c0[k]) / wall, 2)
        out["rss_total_mb"] = round(sum(out[f"rss_{k}_mb"] for k in procs), 1)
        out["cpu_total_pct"] = round(sum(out[f"cpu_{k}_pct"] for k in procs), 2)
        return out
    finally:
        if daemon is not None:
            daemon.stop(20)
        if tor is not None:
            tor.stop()
        if etcd is not None:
            etcd.stop()
        errors = owned.delete_all()
        shutil.rmtree(wd, ignore_errors=True)
        if errors:
            raise RuntimeError(f"namespace cleanup failed: {errors}")


def bench(quick: bool) -> dict:
    counts = (0, 10_000) if quick else (0, 10_000, 100_000)
    idle, settle = (5.0, 3.0) if quick else (15.0, 10.0)
    figs, raw = [], {}
    for n in counts:
        r = measure(n, idle, settle)
        raw[str(n)] = r
        k = f"{n // 1000}k" if n else "0"
        figs.append(figure(f"footprint.{k}.rss_daemon", f"Footprint {k} routes: daemon RSS",
                           "MB", r["rss_daemon_mb"]))
        figs.append(figure(f"footprint.{k}.rss_exabgp", f"Footprint {k} routes: ExaBGP RSS "
                           "(+ its API relay)", "MB",
                           r.get("rss_exabgp_mb", 0) + r.get("rss_relay_mb", 0)))
        figs.append(figure(f"footprint.{k}.cpu", f"Footprint {k} routes: idle CPU, daemon + "
                           "ExaBGP + relay", "% of a core", r["cpu_total_pct"]))
    return {"figures": figs, "raw": raw, "notes": [
        f"footprint: real `noderouter run` fed by a BIRD ToR; idle CPU over {idle:.0f} s after "
        f"a {settle:.0f} s settle, as % of one core (2-core machine shared with other runs)"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, nargs="+", default=[0, 10_000, 100_000])
    ap.add_argument("--idle", type=float, default=15.0)
    ap.add_argument("--settle", type=float, default=10.0)
    a = ap.parse_args()
    quiet_logs()
    for n in a.routes:
        print(json.dumps(measure(n, a.idle, a.settle)), flush=True)


if __name__ == "__main__":
    main()
