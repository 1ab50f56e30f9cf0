"""Benchmark: 100k IPv4 routes, our reconciler vs ``ip -batch``, in a throwaway netns.

    .venv/bin/python -m bench.bench_routes [--routes N] [--repeat R]

Phases, each against the same namespace and the same route set:
  ours add      RouteTable.set_routes(...) + apply() from an empty table
  ours resync   queue_resync() + apply() with every route already in place
  ours delete   set_routes(class, []) + apply() (sources in sync)
  ip add/del    ``ip -n NS -batch FILE`` (file written before the clock starts)
Ratios > 1 mean we are faster. Target construction (the caller's side) is timed
and printed separately. Best of ``repeat`` runs per phase.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import struct
import subprocess
import tempfile
import time

import structlog

from felix_like.routetable import KernelRouteDriver, RouteTable, Target
from lab.netns import NetnsSet, run_prefix, sh

PROTO = 73
GW = "198.18.0.2"
DEV = "nrb0"


def route_prefixes(n: int) -> list[str]:
    """n distinct prefixes inside 198.19.0.0/16: all /32s, then /31s, /30s, ..."""
    base = struct.unpack("!I", socket.inet_aton("198.19.0.0"))[0]
    out: list[str] = []
    for plen in range(32, 15, -1):
        step = 1 << (32 - plen)
        for i in range(0, 1 << 16, step):
            out.append(f"{socket.inet_ntoa(struct.pack('!I', base + i))}/{plen}")
            if len(out) == n:
                return out
    raise ValueError(f"cannot make {n} prefixes inside 198.19.0.0/16")


def _count_ours(netns: str) -> int:
    res = sh(["ip", "-4", "route", "show", "proto", str(PROTO)], netns=netns)
    return len(res.stdout.splitlines())


def _ip_batch(netns: str, path: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(["ip", "-n", netns, "-batch", path], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {res.stderr.strip()[:400]}")
    return dt


def run(routes: int = 100_000, repeat: int = 1) -> dict:
    ns = NetnsSet()
    netns = ns.add(f"{run_prefix('nrb')}-bench")
    tmp = tempfile.mkdtemp(prefix="nr-bench-")
    try:
        sh(["ip", "link", "add", DEV, "type", "veth", "peer", "name", DEV + "p"], netns=netns)
        for d in (DEV, DEV + "p"):
            sh(["ip", "link", "set", d, "up"], netns=netns)
        sh(["ip", "addr", "add", "198.18.0.1/24", "dev", DEV], netns=netns)
        prefixes = route_prefixes(routes)
        add_file = os.path.join(tmp, "add")
        del_file = os.path.join(tmp, "del")
        with open(add_file, "w") as f:
            f.writelines(f"route add {p} via {GW} dev {DEV} proto {PROTO}\n" for p in prefixes)
        with open(del_file, "w") as f:
            f.writelines(f"route del {p} proto {PROTO}\n" for p in prefixes)

        driver = KernelRouteDriver(netns=netns)
        best: dict[str, float] = {}

        def keep(name: str, dt: float) -> None:
            best[name] = min(dt, best.get(name, dt))

        try:
            for _ in range(repeat):
                t0 = time.perf_counter()
                targets = [Target(p, gateway=GW, ifname=DEV) for p in prefixes]
                keep("targets_build", time.perf_counter() - t0)

                rt = RouteTable(driver=driver, protocol=PROTO)
                rt.mark_in_sync()
                rt.apply()  # initial resync of an empty table, not part of the add
                t0 = time.perf_counter()
                rt.set_routes("bench", targets)
                res = rt.apply()
                keep("ours_add", time.perf_counter() - t0)
                assert res.added == routes and not res.failed, res.summary()
                assert _count_ours(netns) == routes

                rt.queue_resync()
                t0 = time.perf_counter()
                res = rt.apply()
                keep("ours_resync", time.perf_counter() - t0)
                assert res.resynced and res.added == res.replaced == res.deleted == 0

                # A restart: a brand-new reconciler reading back 100k routes of ours.
                rt2 = RouteTable(driver=driver, protocol=PROTO)
                rt2.set_routes("bench", targets)
                t0 = time.perf_counter()
                res = rt2.apply()
                keep("ours_restart_resync", time.perf_counter() - t0)
                assert res.added == res.replaced == res.deleted == 0

                t0 = time.perf_counter()
                rt.set_routes("bench", [])
                res = rt.apply()
                keep("ours_delete", time.perf_counter() - t0)
                assert res.deleted == routes and not res.failed, res.summary()
                assert _count_ours(netns) == 0

                keep("ip_add", _ip_batch(netns, add_file))
                assert _count_ours(netns) == routes
                keep("ip_delete", _ip_batch(netns, del_file))
                assert _count_ours(netns) == 0
        finally:
            driver.close()
        out: dict = {"routes": routes, "repeat": repeat, "seconds": best}
        out["rates_per_s"] = {k: round(routes / v) for k, v in best.items()}
        out["ratio_add_vs_ip_batch"] = best["ip_add"] / best["ours_add"]
        out["ratio_delete_vs_ip_batch"] = best["ip_delete"] / best["ours_delete"]
        out["ratio_add_incl_targets_vs_ip_batch"] = (
            best["ip_add"] / (best["ours_add"] + best["targets_build"]))
        out["resync_unchanged_s"] = best["ours_resync"]
        out["goals_met"] = {
            "add>=1.0x": out["ratio_add_vs_ip_batch"] >= 1.0,
            "delete>=1.0x": out["ratio_delete_vs_ip_batch"] >= 1.0,
            "resync<0.5s": best["ours_resync"] < 0.5,
        }
        return out
    finally:
        errors = ns.delete_all()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
        if errors:
            raise RuntimeError(f"bench namespace teardown failed: {errors}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # Per-apply debug lines are noise here; keep warnings (failed routes).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    res = run(args.routes, args.repeat)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    s = res["seconds"]
    print(f"routes: {res['routes']}  (best of {res['repeat']})")
    for name in ("targets_build", "ours_add", "ip_add", "ours_resync", "ours_restart_resync",
                 "ours_delete", "ip_delete"):
        print(f"  {name:22s} {s[name]:7.3f} s  {res['rates_per_s'][name]:>9,d}/s")
    print(f"  add    ours/ip -batch speed ratio: {res['ratio_add_vs_ip_batch']:.2f}x "
          f"(incl. building targets {res['ratio_add_incl_targets_vs_ip_batch']:.2f}x)")
    print(f"  delete ours/ip -batch speed ratio: {res['ratio_delete_vs_ip_batch']:.2f}x")
    print(f"  resync of unchanged routes: {res['resync_unchanged_s']:.3f} s")
    print(f"  goals: {res['goals_met']}")


if __name__ == "__main__":
    main()
