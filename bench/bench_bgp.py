"""Session up -> N learned routes in the kernel: our pipeline vs BIRD, same ToR, same run.

    sudo .venv/bin/python -m bench.bench_bgp [--routes 100000] [--rounds 1]

Topology (namespaces, all on 198.18.9.0/24 behind a bridge): a BIRD ToR announcing N /32s
(taken from 198.18.64.0/18, 198.18.128.0/17, 198.19.0.0/16) to two clients, measured one
after the other so they do not share the CPU:

- ``bird``: BIRD 2 with its kernel protocol (calico-node's path);
- ``ours``: ExaBGP 5.0.15 -> relay -> Speaker (policy, RIB) -> felix_like RouteTable
  (struct-packed batched netlink).

t0 is "session up" as each client sees it (BIRD: ``show protocols`` polled every 20 ms;
ours: the speaker's ``up`` event time). t1 is when the kernel holds N routes of the
client's protocol (netlink dump polled every 100 ms for BIRD; for ours the reconciler's
apply that completed the set). RSS: this daemon process, ExaBGP, the relay, BIRD.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import os
import tempfile
import threading
import time

from bgpd.bgp.exabgp_config import SpeakerConfig, SpeakerPeer
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.speaker import Speaker
from bgpd.node.cycle import burst_wait
from felix_like.classify import plain_context
from felix_like.learned_routes import LearnedRoutes
from felix_like.nlwire import RT_TABLE_MAIN, RouteSocket
from felix_like.routetable import KernelRouteDriver, RouteTable
from felix_like.updates import LearnedContextUpdate, LearnedRouteChanges
from lab.netns import NetnsSet, run_prefix, sh, switch_with_hosts
from lab.procs import wait_for
from lab.routers import BgpNeighbor, BirdRouter

TOR, NODE_BIRD, NODE_OURS = "198.18.9.1", "198.18.9.3", "198.18.9.10"
TOR_AS, NODE_AS = 65001, 64512
POOLS = ("198.18.64.0/18", "198.18.128.0/17", "198.19.0.0/16")
OUR_PROTO, BIRD_PROTO = 73, 12
SUBNET = "198.18.9.0/24"
OWN_BLOCK = "198.19.255.192/26"  # ours, announced by nobody: the own-block check still runs


def prefixes(n: int) -> list[str]:
    hosts = itertools.chain.from_iterable(ipaddress.IPv4Network(p) for p in POOLS)
    out = [f"{h}/32" for h in itertools.islice(hosts, n)]
    if len(out) < n:
        raise SystemExit(f"at most {len(out)} routes fit in {POOLS}")
    return out


def rss_kb(pid: int | None) -> int:
    if not pid:
        return 0
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid: int | None, which: str = "both") -> float:
    """utime + stime (or only one: which="user"/"sys") of a process, seconds."""
    if not pid:
        return 0.0
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        user, sys_ = int(fields[11]), int(fields[12])
        ticks = {"both": user + sys_, "user": user, "sys": sys_}[which]
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def kernel_count(ns: str, proto: int) -> int:
    rs = RouteSocket.open(ns)
    try:
        return len(rs.dump(proto, frozenset({RT_TABLE_MAIN})))
    finally:
        rs.close()


def build(owned: NetnsSet) -> dict[str, str]:
    hosts = {"tor": TOR, "bird": NODE_BIRD, "ours": NODE_OURS}
    prefix = run_prefix("nrk")
    names = switch_with_hosts(owned, prefix, {t[0]: (t, addr) for t, addr in hosts.items()})
    # "uplink": our node's interface on the segment (switch_with_hosts names it <prefix><tag>)
    return {**{t: names[t[0]] for t in hosts}, "uplink": f"{prefix}o"}


def run_bird(ns: dict[str, str], wd: str, n: int) -> dict:
    node = BirdRouter(ns["bird"], f"{wd}/node-bird", NODE_BIRD, NODE_AS,
                      [BgpNeighbor(TOR, TOR_AS, hold_time=30)], kernel_export=True)
    node.start()
    try:
        t_up = wait_for(lambda: node.established(TOR) and time.monotonic(), 120, interval=0.02,
                        what="node BIRD session")
        t_done = wait_for(lambda: kernel_count(ns["bird"], BIRD_PROTO) >= n and time.monotonic(),
                          300, interval=0.1, what=f"{n} BIRD routes in the kernel")
        return {"seconds": round(t_done - t_up, 3), "rss_bird_kb": rss_kb(node.pids()[0])}
    finally:
        node.stop()


def run_ours(ns: dict[str, str], wd: str, n: int, speed: str = "",
             env: tuple[tuple[str, str], ...] = (), exabgp: str | None = None,
             api_receive: str = "packets") -> dict:
    # Same start as BIRD's (its kernel protocol removes its routes on stop): an empty table.
    sh(["ip", "-4", "route", "flush", "proto", str(OUR_PROTO)], netns=ns["ours"])
    extra = ((("exabgp.reactor.speed", speed),) if speed else ()) + env
    cfg = SpeakerConfig(NODE_AS, NODE_OURS, NODE_OURS, (SpeakerPeer(TOR, TOR_AS, hold_time=30),),
                        extra_env=extra, api_receive=(api_receive,))
    wake = threading.Event()
    t_up: list[float] = []
    sp = Speaker(cfg, ImportPolicy(NODE_AS, POOLS, own_blocks=frozenset({OWN_BLOCK}),
                                  own_addresses=frozenset({NODE_OURS})),
                 f"{wd}/speaker", netns=ns["ours"], on_change=wake.set, exabgp=exabgp)
    driver = KernelRouteDriver(netns=ns["ours"])
    table = RouteTable(driver=driver, protocol=OUR_PROTO, class_order=("bgp",))
    table.mark_in_sync()
    # The daemon's path: a context with an own block (every learned prefix is checked
    # against it) and the uplink (routes via an on-link next hop name the device).
    # Messages in through the manager's on_update, work in complete_deferred_work: what
    # Dataplane.on_update / apply() do with the cycle's learned-route messages.
    learned = LearnedRoutes(table)
    learned.on_update(LearnedContextUpdate(
        plain_context(uplink=ns["uplink"], subnet=SUBNET, own_blocks=(OWN_BLOCK,), pools=POOLS),
        {}))
    learned.complete_deferred_work()
    installed = 0
    cycles = 0
    last_cycle_end = 0.0
    in_burst = False
    sp.start()
    cpu0: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 300
        while installed < n and time.monotonic() < deadline:
            wake.wait(0.5)
            # The daemon's loop (bgpd.node.daemon._drain): under a burst, cycles at least
            # MIN_CYCLE_GAP apart, so a one-prefix-per-UPDATE burst is taken in batches.
            gap, in_burst = burst_wait(time.monotonic() - last_cycle_end, in_burst)
            if gap:
                time.sleep(gap)
            wake.clear()
            if not t_up:
                st = sp.peer(TOR)
                if st and st.state == "established" and st.since is not None:
                    t_up.append(st.since)  # the speaker's clock is time.monotonic
                    exa = sp.exabgp_pid
                    cpu0 = {"exabgp": cpu_s(exa), "daemon": cpu_s(os.getpid()),
                            "daemon_sys": cpu_s(os.getpid(), "sys"),
                            "relay": sum(cpu_s(c) for c in children(exa))}
            changes = sp.take_route_changes()
            if os.environ.get("NR_BENCH_TRACE") and t_up:
                print(f"t={time.monotonic() - t_up[0]:.3f} changes={len(changes)} cpu={cpu_s(os.getpid()):.2f} exa={cpu_s(sp.exabgp_pid):.2f}", flush=True)
            if changes:
                learned.on_update(LearnedRouteChanges(changes))
                learned.complete_deferred_work()
                res = table.apply()
                installed += res.added + res.replaced
                cycles += 1
                last_cycle_end = time.monotonic()
        t_done = time.monotonic()
        if installed < n:
            raise SystemExit(f"ours: only {installed}/{n} routes installed")
        exa = sp.exabgp_pid
        relay = sum(rss_kb(c) for c in children(exa)) if exa else 0
        cpu = {"cpu_exabgp_s": cpu_s(exa) - cpu0.get("exabgp", 0),
               "cpu_daemon_s": cpu_s(os.getpid()) - cpu0.get("daemon", 0),
               "cpu_daemon_sys_s": cpu_s(os.getpid(), "sys") - cpu0.get("daemon_sys", 0),
               "cpu_relay_s": sum(cpu_s(c) for c in children(exa)) - cpu0.get("relay", 0)}
        return {"seconds": round(t_done - t_up[0], 3), "cycles": cycles,
                **{k: round(v, 2) for k, v in cpu.items()}, "kernel_routes":
                kernel_count(ns["ours"], OUR_PROTO), "rss_daemon_kb": rss_kb(os.getpid()),
                "rss_exabgp_kb": rss_kb(exa), "rss_relay_kb": relay}
    finally:
        sp.stop(withdraw=False)
        driver.close()


def like_the_daemon(gc_threshold: int = 0) -> None:
    """Run this process as the daemon runs (bgpd/node/daemon.py run(), config/logs.py):
    info-level structlog, startup objects frozen out of GC, a large gen-0 threshold."""
    import gc

    from config.logs import setup_logging

    setup_logging("info")
    gc.freeze()
    gc.set_threshold(gc_threshold or 100_000, 50, 50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--routes", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--reactor-speed", default="",
                    help="ExaBGP exabgp.reactor.speed for our speaker (default: ours, 5.0)")
    ap.add_argument("--exabgp-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra ExaBGP setting for our speaker, e.g. exabgp.api.compact=true")
    ap.add_argument("--exabgp", default=None, help="the exabgp executable (default: as the daemon picks it)")
    ap.add_argument("--api-receive", choices=("packets", "parsed"), default="packets",
                    help="the form ExaBGP hands received messages over in (default: the "
                         "daemon's, packets; parsed: its per-prefix JSON, for comparison)")
    ap.add_argument("--one-per-update", action="store_true",
                    help="the ToR sends every prefix in an UPDATE of its own (a distinct MED "
                         "each), as implementations injecting routes one at a time do")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    ap.add_argument("--gc-threshold", type=int, default=0,
                    help="gen-0 GC threshold for the daemon process (0: the daemon's, 100000)")
    args = ap.parse_args()
    like_the_daemon(args.gc_threshold)
    owned = NetnsSet()
    wd = tempfile.mkdtemp(prefix="nr-bench-bgp-")
    os.chmod(wd, 0o755)
    tor = None
    try:
        ns = build(owned)
        tor = BirdRouter(ns["tor"], f"{wd}/tor", TOR, TOR_AS,
                         [BgpNeighbor(NODE_BIRD, NODE_AS, hold_time=30),
                          BgpNeighbor(NODE_OURS, NODE_AS, hold_time=30)],
                         static_routes=prefixes(args.routes),
                         one_prefix_per_update=args.one_per_update).start()
        results = []
        for r in range(args.rounds):
            row = {"round": r + 1, "routes": args.routes, "one_per_update": args.one_per_update,
                   "bird": run_bird(ns, wd, args.routes), "ours": run_ours(ns, wd, args.routes, args.reactor_speed,
                                   tuple(tuple(e.split("=", 1)) for e in args.exabgp_env), args.exabgp,
                                   args.api_receive)}
            row["ratio_ours_to_bird"] = round(row["ours"]["seconds"] / row["bird"]["seconds"], 2)
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        if tor is not None:
            tor.stop()
        errors = owned.delete_all()
        if errors:
            print("namespace cleanup errors:", errors)
        if args.keep:
            print(f"logs kept in {wd}")
        else:
            import shutil

            shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
