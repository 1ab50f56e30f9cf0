"""Scale simulation: a 1,000- and a 5,000-node cluster's worth of blocks fed to ONE node.

    sudo .venv/bin/python -m bench.bench_scale [--nodes 1000 5000] [--blocks-per-node 2]

SIMULATION, fed in-process: no etcd and no BGP session. For each size a fresh child
process (so its RSS is only this) builds, inside a throwaway namespace:

* the node registry: N NodeInfo records (one underlay subnet, 198.18.32.0/19);
* the block set: 2 blocks per node from the pod pool 198.19.0.0/16 (as /30 blocks,
  so 10,000 of them fit in the pool; the prefix length costs the kernel nothing);
* the ToR-learned routes: every other node's blocks arriving from one ToR peer as
  BGP updates (one update per node, next hop = the ToR, as in the ToR design),
  plus a default route;

and times the daemon's own path on them (``Cycle.run``'s steps): ``Rib.add`` per
update → ``calculate()`` → ``Dataplane.on_update`` with its typed updates and the
learned routes (``LearnedContextUpdate``) → ``Dataplane.apply()`` (learned routes,
blackholes for our 2 blocks, remote blocks) into the namespace's kernel. Then a
second cycle with one node's blocks withdrawn (incremental). RSS is the child's
VmRSS before (imports only) and after, and its peak (VmHWM).
Goal (issue 8): 5,000 nodes converge in < 10 s with < 300 MB RSS.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import time

from bench.common import figure, goal, proc_status_kb, quiet_logs

POOL = ipaddress.IPv4Network("198.19.0.0/16")
BLOCK_LEN = 30
SUBNET = ipaddress.IPv4Network("198.18.32.0/19")
TOR = "198.18.32.1"
OWN_ADDR = "198.18.32.2"


def simulate(nodes: int, per_node: int) -> dict:
    quiet_logs()
    rss0 = proc_status_kb(__import__("os").getpid())
    from pyroute2 import IPRoute

    from bgpd.bgp.events import Attributes
    from bgpd.bgp.rib import Rib
    from bgpd.node.calculator import BlockView, Inputs, PoolView, calculate, learned_context
    from bgpd.node.registry import NodeInfo
    from felix_like.managers import CLASS_ORDER, Dataplane
    from felix_like.routetable import KernelRouteDriver, RouteTable
    from felix_like.updates import LearnedContextUpdate, LearnedRouteChanges
    from lab.netns import NetnsSet, run_prefix, sh
    from tunnels.encap import LocalUnderlay

    if nodes * per_node > POOL.num_addresses >> (32 - BLOCK_LEN):
        raise SystemExit("pool too small for that many blocks")
    os_ = __import__("os")
    owned = NetnsSet()
    ns = owned.add(run_prefix("nrsc"))
    try:
        sh(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], netns=ns)
        sh(["ip", "link", "set", "eth0", "up"], netns=ns)
        sh(["ip", "link", "set", "eth0p", "up"], netns=ns)
        sh(["ip", "addr", "add", f"{OWN_ADDR}/{SUBNET.prefixlen}", "dev", "eth0"], netns=ns)
        base = int(POOL.network_address)
        hosts = SUBNET.hosts()
        next(hosts)  # .1 is the ToR
        names = [f"node-{i:05d}" for i in range(nodes)]
        node_info = {}
        blocks: list[BlockView] = []
        by_node: dict[str, list[str]] = {}
        for i, name in enumerate(names):
            addr = str(next(hosts))
            node_info[name] = NodeInfo(name, addr, str(SUBNET), 64512)
            mine = [str(ipaddress.IPv4Network((base + (i * per_node + j) * 4, BLOCK_LEN)))
                    for j in range(per_node)]
            by_node[name] = mine
            blocks += [BlockView(c, name, True) for c in mine]
        own = node_info[names[0]]
        pools = (PoolView(str(POOL)),)     # ToR design: no encapsulation
        rib = Rib()
        attrs = Attributes(as_path=(64701, 64512), as_path_len=2)

        ipr = IPRoute(netns=ns)
        routes = RouteTable(driver=KernelRouteDriver(netns=ns), protocol=73,
                            class_order=CLASS_ORDER)
        dp = Dataplane.create(ipr, routes, LocalUnderlay("eth0", (f"{OWN_ADDR}/19",)), netns=ns)
        routes.mark_in_sync()
        dp.apply()
        rss_built = proc_status_kb(os_.getpid())

        seen: dict[str, object] = {"ctx": None}

        def cycle() -> tuple[dict, object]:
            # The daemon's cycle (bgpd/node/cycle.py Cycle.run), minus etcd and the speaker:
            # calculate → Dataplane.on_update per update → learned routes as a context
            # update (all RIB routes) when the context changed, else as changes → apply.
            t = time.perf_counter()
            inputs = Inputs(own=own, uplink="eth0", pools=pools, blocks=tuple(blocks),
                            nodes=node_info, mesh=False)
            desired = calculate(inputs)
            for msg in desired.dataplane_updates():
                dp.on_update(msg)
            changes = rib.take_changes()
            ctx = learned_context(inputs)
            if ctx != seen["ctx"]:
                seen["ctx"] = ctx
                dp.on_update(LearnedContextUpdate(ctx, rib.routes()))
            elif changes:
                dp.on_update(LearnedRouteChanges(changes))
            t_calc = time.perf_counter() - t
            t = time.perf_counter()
            res = dp.apply()
            return {"calculate_s": t_calc, "dataplane_apply_s": time.perf_counter() - t}, res

        t0 = time.perf_counter()
        rib.add(TOR, ["0.0.0.0/0"], TOR, attrs)
        for name in names[1:]:
            rib.add(TOR, by_node[name], TOR, attrs)
        t_rib = time.perf_counter() - t0
        stages, res = cycle()
        total = time.perf_counter() - t0
        expected = (nodes - 1) * per_node + 1 + per_node     # learned + default + blackholes
        kernel = len(sh(["ip", "-4", "route", "show", "proto", "73"], netns=ns).stdout
                     .splitlines())
        if kernel != expected:
            raise RuntimeError(f"{kernel} routes in the kernel, expected {expected}")
        # Incremental: one node leaves (its blocks withdrawn).
        t1 = time.perf_counter()
        rib.remove(TOR, by_node[names[-1]])
        gone = set(by_node[names[-1]])
        blocks = [b for b in blocks if b.cidr not in gone]
        del node_info[names[-1]]
        inc_stages, inc_res = cycle()
        inc_total = time.perf_counter() - t1
        out = {"nodes": nodes, "blocks": nodes * per_node, "kernel_routes": kernel,
               "rib_add_s": round(t_rib, 3),
               **{k: round(v, 3) for k, v in stages.items()}, "converge_s": round(total, 3),
               "incremental_withdraw_s": round(inc_total, 4),
               "incremental_deleted": inc_res.deleted,
               "rss_imports_mb": round(rss0 / 1024, 1),
               "rss_after_build_mb": round(rss_built / 1024, 1),
               "rss_mb": round(proc_status_kb(os_.getpid()) / 1024, 1),
               "rss_peak_mb": round(proc_status_kb(os_.getpid(), "VmHWM") / 1024, 1)}
        ipr.close()
        routes.driver.close()
        return out
    finally:
        errors = owned.delete_all()
        if errors:
            raise RuntimeError(f"namespace cleanup failed: {errors}")


def run_size(nodes: int, per_node: int = 2) -> dict:
    res = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--child", str(nodes),
                          "--blocks-per-node", str(per_node)],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"scale simulation of {nodes} nodes failed: {res.stderr[-1500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench(quick: bool) -> dict:
    sizes = (1000,) if quick else (1000, 5000)
    figs, raw = [], {}
    for n in sizes:
        r = run_size(n)
        raw[str(n)] = r
        g_t = goal("ours", "<", 10, "< 10 s") if n == 5000 else None
        g_m = goal("ours", "<", 300, "< 300 MB") if n == 5000 else None
        figs.append(figure(f"scale.{n}.converge", f"Scale sim {n:,} nodes ({r['blocks']:,} "
                           "blocks): RIB → calculator → kernel", "s", r["converge_s"], goal=g_t))
        figs.append(figure(f"scale.{n}.rss", f"Scale sim {n:,} nodes: RSS after converging",
                           "MB", r["rss_mb"], goal=g_m))
        figs.append(figure(f"scale.{n}.withdraw", f"Scale sim {n:,} nodes: one node leaves "
                           "(incremental)", "s", r["incremental_withdraw_s"]))
    return {"figures": figs, "raw": raw, "notes": [
        "scale: SIMULATION — routes fed in-process to one node's Rib/calculator/managers/"
        "RouteTable (no etcd, no BGP session), kernel routes real in a throwaway netns; "
        "/30 blocks so 10,000 fit in 198.19.0.0/16; RSS is the simulating process's"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--blocks-per-node", type=int, default=2)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(simulate(a.child, a.blocks_per_node)))
        return
    for n in a.nodes:
        print(json.dumps(run_size(n, a.blocks_per_node)))


if __name__ == "__main__":
    main()
