"""Where one CNI ADD and one DEL spend their time (issue 17): a breakdown, not a benchmark.

    .venv/bin/python -m bench.profile_cni [--pods 30] [--routes 5000] [--json]

Two parts, in a throwaway node namespace set up like ``bench.bench_cni`` (etcd on its
loopback, our pool, ``--routes`` learned-style /32 routes so route walks cost what
they cost on a busy node):

* the plugin side: ``ip netns exec <node>`` of ``true``, of a bare interpreter, of the
  fast path's imports, and the whole fast-path ADD/DEL against the daemon's CNI server
  (medians over ``--pods`` calls) — the difference is the daemon's share plus the
  socket round trip;
* the daemon side: ``serve_request`` run in a process inside the node namespace with
  every interesting function wrapped in a timer (etcd get/range/txn, netlink socket
  opens and requests, setns, the container lock, the record write and its fsyncs,
  sysctls), so each item has a count per call and ms per call. Wrapped functions
  nest (``Datastore.call`` contains the etcd txn): the table says which are inclusive.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from bench.bench_cni import PLUGIN, REPO, Bench

# (module, qualified name, label): the daemon-side items timed.
TIMED = [
    ("bgpd.cni.commands", "cmd_add", "ADD total (daemon, inclusive)"),
    ("bgpd.cni.commands", "cmd_del", "DEL total (daemon, inclusive)"),
    ("bgpd.cni.protocol", "parse_conf", "parse conf"),
    ("bgpd.cni.protocol", "parse_env", "parse env"),
    ("bgpd.cni.records", "acquire_lock", "lock: acquire (flock)"),
    ("bgpd.cni.records", "release_lock", "lock: release (+unlink)"),
    ("bgpd.cni.records", "read_record", "record: read"),
    ("bgpd.cni.records", "write_record", "record: write (tmp+fsync+rename+fsync dir)"),
    ("bgpd.cni.records", "remove_record", "record: remove (+fsync dir)"),
    ("bgpd.cni.records", "_fsync_dir", "  of which fsync(dir)"),
    ("bgpd.cni.commands", "Datastore.call", "IPAM call (inclusive of etcd)"),
    ("ipam.store", "EtcdStore.get", "  etcd get"),
    ("ipam.store", "EtcdStore.range", "  etcd range"),
    ("ipam.store", "EtcdStore.txn", "  etcd txn"),
    ("bgpd.cni.netns", "Kernel.__init__", "netlink: open sockets (node + pod via setns)"),
    ("bgpd.cni.netns", "_setns", "  of which setns()"),
    ("bgpd.cni.netns", "Kernel.close", "netlink: close sockets"),
    ("bgpd.cni.netns", "Kernel.pod_links", "netlink: pod link dump"),
    ("bgpd.cni.netns", "Kernel.attachments_in_pod", "netlink: other attachments (after the dump)"),
    ("bgpd.cni.netns", "Kernel.pod_link", "netlink: pod link get"),
    ("bgpd.cni.netns", "Kernel.host_link", "netlink: host link get"),
    ("bgpd.cni.netns", "Kernel.create_veth", "netlink: create veth (+get)"),
    ("bgpd.cni.netns", "Kernel.configure_pod", "netlink: pod addr/routes (+get)"),
    ("bgpd.cni.netns", "Kernel.configure_host", "netlink: host up + sysctls (+get)"),
    ("bgpd.cni.netns", "write_sysctl", "  of which sysctl writes"),
    ("bgpd.cni.netns", "Kernel.add_host_route", "netlink: host route add"),
    ("bgpd.cni.netns", "Kernel.delete_host_route", "netlink: host route delete (+dump)"),
    ("bgpd.cni.netns", "Kernel.host_routes", "  of which route dump"),
    ("bgpd.cni.netns", "Kernel.delete_link", "netlink: delete veth (+get)"),
]


def _wrap(table: dict, label: str, fn):
    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            row = table[label]
            row[0] += 1
            row[1] += time.perf_counter() - t0
    timed.__wrapped__ = fn
    return timed


def install_timers(table: dict) -> None:
    import importlib

    for modname, qual, label in TIMED:
        mod = importlib.import_module(modname)
        owner = mod
        parts = qual.split(".")
        for p in parts[:-1]:
            owner = getattr(owner, p)
        fn = getattr(owner, parts[-1])
        setattr(owner, parts[-1], _wrap(table, label, fn))
        # Functions imported by name into other modules of the plugin.
        if owner is mod:
            for other in ("bgpd.cni.commands", "bgpd.cni.netns", "bgpd.cni.records"):
                om = importlib.import_module(other)
                if om is not mod and getattr(om, parts[-1], None) is fn:
                    setattr(om, parts[-1], getattr(owner, parts[-1]))


def inner(args) -> None:
    """Runs inside the node namespace: the daemon's side, instrumented."""
    from bench.common import quiet_logs

    quiet_logs()
    from bgpd.cni.commands import serve_request
    from bgpd.cni.server import CniServer

    table: dict = defaultdict(lambda: [0, 0.0])
    install_timers(table)
    server = CniServer.__new__(CniServer)         # only its shared Datastore cache
    import threading
    server._stores, server._lock = {}, threading.Lock()
    conf = args.conf
    out: dict = {}
    for command in ("ADD", "DEL"):
        table.clear()
        walls = []
        for i, netns in enumerate(args.pod_paths):
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"prof{i:05d}",
                   "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC) if command == "ADD" else None
            t0 = time.perf_counter()
            code, text = serve_request(env, conf.encode(), "prof", server._datastore,
                                       netns_fd=fd)
            walls.append(time.perf_counter() - t0)
            if fd is not None:
                os.close(fd)
            if code != 0:
                raise SystemExit(f"{command} {i} failed: {text}")
            if i == 0:
                first = dict(table)
                table.clear()
        n = len(args.pod_paths) - 1                # the first call (connects etcd) apart
        out[command] = {"serve_request_ms_median": round(statistics.median(walls[1:]) * 1e3, 2),
                        "first_call_ms": round(walls[0] * 1e3, 2),
                        "first_call_items": {k: [c, round(s * 1e3, 2)] for k, (c, s)
                                             in first.items()},
                        "items": {label: [round(c / n, 2), round(s / n * 1e3, 2)]
                                  for label, (c, s) in table.items()}}
    for ds in server._stores.values():
        ds.close()
    print(json.dumps(out))


def _median_run(argv: list[str], n: int, env: dict | None = None, input: str | None = None,
                each=None) -> float:
    times = []
    for i in range(n):
        e = each(i) if each else env
        t0 = time.perf_counter()
        res = subprocess.run(argv, env=e, input=input, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if res.returncode != 0:
            raise RuntimeError(f"{argv} failed: {res.stdout[-300:]} {res.stderr[-300:]}")
    return round(statistics.median(times) * 1e3, 2)


def add_routes(node: str, tmp: str, count: int) -> None:
    """``count`` /32 routes in the node namespace, like learned routes (our protocol
    73 would be the daemon's own; BGP-learned ones come through it too)."""
    if count <= 0:
        return
    batch = os.path.join(tmp, "routes.batch")
    with open(batch, "w") as f:
        for i in range(count):
            f.write(f"route add 198.18.{64 + i // 250}.{1 + i % 250}/32 via 198.18.9.2 "
                    f"dev nrup0 proto 73 onlink\n")
    subprocess.run(["ip", "-n", node, "-batch", batch], check=True, capture_output=True)


def outer(args) -> dict:
    b = Bench(args.pods, 1)
    try:
        b.setup()
        add_routes(b.node, b.tmp, args.routes)
        py = sys.executable
        netns = ["ip", "netns", "exec", b.node]
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPO}
        n = args.pods
        res: dict = {"pods": n, "routes": args.routes, "loadavg": os.getloadavg()[0]}
        plug: dict = {}
        plug["ip netns exec true"] = _median_run(netns + ["true"], n, env)
        plug["python -c pass (site)"] = _median_run(netns + [py, "-c", "pass"], n, env)
        plug["python -I -S -c pass"] = _median_run(netns + [py, "-I", "-S", "-c", "pass"], n, env)
        plug["python: import the fast path"] = _median_run(
            netns + [py, "-c", "import bgpd.cni.main, bgpd.cni.fast"], n, env)
        conf = b.ours_conf()

        def cni_env(command):
            def f(i):
                return {**env, "CNI_COMMAND": command, "CNI_CONTAINERID": f"bench{i:05d}",
                        "CNI_NETNS": b.pods[i], "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
            return f
        plug["plugin ADD (fast path, whole)"] = _median_run(netns + [PLUGIN], n, input=conf,
                                                            each=cni_env("ADD"))
        plug["plugin DEL (fast path, whole)"] = _median_run(netns + [PLUGIN], n, input=conf,
                                                            each=cni_env("DEL"))
        res["plugin_side_ms_median"] = plug
        inner_conf = json.loads(b.ours_conf(daemon=False))
        inner_conf["state_dir"] = os.path.join(b.tmp, "state-prof")
        cmd = netns + [py, "-m", "bench.profile_cni", "--inner", json.dumps(inner_conf),
                       *b.pods]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        res["daemon_side"] = json.loads(out.stdout.strip().splitlines()[-1])
        return res
    finally:
        b.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=30)
    ap.add_argument("--routes", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--inner", metavar="CONF", help=argparse.SUPPRESS)
    ap.add_argument("pod_paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        args.conf = args.inner
        inner(args)
        return
    res = outer(args)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"pods {res['pods']}  routes {res['routes']}  load {res['loadavg']:.2f}")
    for k, v in res["plugin_side_ms_median"].items():
        print(f"  {k:44s} {v:8.2f} ms")
    for command, d in res["daemon_side"].items():
        print(f"  {command}: serve_request median {d['serve_request_ms_median']} ms "
              f"(first call {d['first_call_ms']} ms)")
        for label, (count, ms) in sorted(d["items"].items(), key=lambda kv: -kv[1][1]):
            print(f"    {label:50s} {count:5.2f}x {ms:8.2f} ms")


if __name__ == "__main__":
    main()
