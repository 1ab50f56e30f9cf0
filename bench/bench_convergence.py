"""Convergence: block claimed on one node → route present in every other node's kernel.

    sudo .venv/bin/python -m bench.bench_convergence [--claims 100] [--design mesh tor]

In the lab (lab.topology: 2 racks × 2 nodes, BIRD and FRR ToRs, etcd, ``noderouter
run`` on every node), for each peering design:

* a claimer process inside node-a1's namespace claims one /26 at a time for node-a1
  straight through ``ipam`` (``Ipam.assign`` of the block's first address: claim
  pending → confirm → allocate, each a CAS in etcd) — exactly what the CNI plugin's
  first ADD on a node does;
* ``ip -o monitor route`` runs in every other node's namespace; each line is
  stamped with CLOCK_MONOTONIC when read (the same clock the claimer uses: network
  namespaces do not change it);
* latency of a claim = (last of the other nodes to see the route) − (start of the
  claim call). The next claim starts once every node has the route.

Path measured: etcd watch → owner's daemon (calculator → announce) → ExaBGP →
(mesh: the other nodes' ExaBGP | tor: BIRD/FRR ToRs) → their daemons → RIB →
reconciler → kernel. Goal (issue 6): p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time

from bench.common import figure, goal, pct, quiet_logs

POOL_START = ipaddress.IPv4Address("198.19.200.0")   # far from the daemons' own claims
IPAM_PREFIX = "/noderouter/ipam/v1/"


def claim_blocks(n: int) -> list[str]:
    base = int(POOL_START)
    return [str(ipaddress.IPv4Network((base + 64 * i, 26))) for i in range(n)]


# ------------------------------------------------------------------ claimer (child)

def claimer(endpoint: str, node: str) -> int:
    """Reads one block CIDR per line; claims it for ``node``; prints t0 t1 per claim."""
    quiet_logs()
    from ipam.allocator import Ipam
    from ipam.store import EtcdStore

    ipam = Ipam(EtcdStore(endpoint, timeout=10), node, prefix=IPAM_PREFIX,
                max_blocks_per_node=10_000)
    print("ready", flush=True)
    for line in sys.stdin:
        cidr = line.strip()
        if not cidr:
            continue
        ip = str(ipaddress.IPv4Network(cidr).network_address)
        t0 = time.monotonic()
        ipam.assign(ip, f"bench-convergence-{ip}")
        print(f"{t0} {time.monotonic()}", flush=True)
    return 0


# ------------------------------------------------------------------ watcher

class RouteWatch:
    """``ip -o monitor route`` in one namespace; first time each prefix was added."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(["ip", "-n", netns, "-o", "monitor", "route"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            tok = line.split()
            if not tok or tok[0] == "Deleted":
                continue
            if tok[0] in ("unicast", "blackhole", "local", "unreachable", "prohibit") and \
                    len(tok) > 1:
                tok = tok[1:]
            with self.cond:
                self.seen.setdefault(tok[0], now)
                self.cond.notify_all()

    def wait(self, prefix: str, deadline: float) -> float | None:
        with self.cond:
            while prefix not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[prefix]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ one design

def idle_sessions(lab) -> list[str]:
    out = []
    for n in lab.nodes:
        for p in lab.status(n.name)["peers"]:
            if p["state"] != "established":
                out.append(f"{n.name}->{p.get('description') or p['address']}:{p['state']}")
    return out


def measure(design: str, claims: int, timeout: float = 10.0) -> dict:
    from lab.procs import LabError, wait_for
    from lab.topology import Lab

    lab = Lab(racks=2, nodes_per_rack=2, design=design)
    watches: list[RouteWatch] = []
    proc = None
    try:
        lab.up()
        t = time.monotonic()
        lab.start_all(wait=True, timeout=120)
        # "ready" needs only one established peer; a claim can converge only once every
        # session is up, so wait for that (bounded) and name the ones that are not.
        try:
            wait_for(lambda: not idle_sessions(lab), 60, interval=0.5,
                     what="every BGP session of every node established")
        except LabError as exc:
            raise RuntimeError(f"{exc}: not established: {idle_sessions(lab)}") from None
        ready_s = time.monotonic() - t
        owner = lab.nodes[0]
        # tor design: nodes of one rack share an AS, so node-a2 drops node-a1's block as an
        # AS loop (as Calico does) and reaches it by its default route via the ToR: for
        # node-a2 the kernel that must hold the route is the ToR's.
        others = [(n.name, n.netns) for n in lab.nodes[1:]
                  if design == "mesh" or n.rack != owner.rack]
        if design == "tor":
            others.append((f"tor-{owner.rack.letter}", lab.ns(f"tor{owner.rack.letter}")))
        watches = [RouteWatch(ns) for _, ns in others]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", owner.netns, sys.executable, "-m", "bench.bench_convergence",
             "--claimer", lab.etcd_endpoint, owner.name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert proc.stdin and proc.stdout
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("claimer did not start")
        time.sleep(1.0)  # watchers subscribed, loops idle
        lat, write, per_node, missed = [], [], {name: [] for name, _ in others}, 0
        for cidr in claim_blocks(claims):
            proc.stdin.write(cidr + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("claimer exited")
            t0, t1 = map(float, line.split())
            write.append(t1 - t0)
            deadline = t0 + timeout
            seen = [w.wait(cidr, deadline) for w in watches]
            if any(s is None for s in seen):
                missed += 1
                if missed >= 3 and not lat:
                    raise RuntimeError(f"first {missed} claims never reached every node "
                                       f"(idle sessions: {idle_sessions(lab)})")
                continue
            for (name, _), s in zip(others, seen, strict=True):
                per_node[name].append(s - t0)
            lat.append(max(seen) - t0)
        return {"design": design, "claims": claims, "receivers": [n for n, _ in others], "converged": len(lat), "missed": missed,
                "lab_ready_s": round(ready_s, 1),
                "p50_ms": round(pct(lat, 50) * 1e3, 1) if lat else None,
                "p99_ms": round(pct(lat, 99) * 1e3, 1) if lat else None,
                "max_ms": round(max(lat) * 1e3, 1) if lat else None,
                "claim_write_p50_ms": round(pct(write, 50) * 1e3, 1),
                "per_node_p50_ms": {k: round(pct(v, 50) * 1e3, 1) for k, v in per_node.items()
                                    if v},
                "samples_ms": [round(x * 1e3, 2) for x in lat]}
    finally:
        if proc is not None:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for w in watches:
            w.stop()
        errors = lab.down()
        if errors:
            raise RuntimeError(f"lab teardown errors: {errors}")


def bench(quick: bool) -> dict:
    claims = 20 if quick else 100
    figs, raw, notes = [], {"samples_ms": {}}, []
    for design in ("mesh", "tor"):
        r = measure(design, claims)
        raw[design] = {k: v for k, v in r.items() if k != "samples_ms"}
        raw["samples_ms"][design] = r["samples_ms"]
        label = "full mesh" if design == "mesh" else "ToR (BIRD/FRR)"
        figs.append(figure(f"convergence.{design}.p50", f"Convergence p50, {label}, "
                           f"{claims} claims → {', '.join(r['receivers'])}", "ms", r["p50_ms"]))
        figs.append(figure(f"convergence.{design}.p99", f"Convergence p99, {label}", "ms",
                           r["p99_ms"], goal=goal("ours", "<", 100, "< 100 ms")))
        if r["missed"]:
            notes.append(f"convergence {design}: {r['missed']}/{claims} claims not seen on "
                         f"every node within 10 s (left out of the percentiles)")
    notes.append("convergence: block claim (Ipam.assign in node-a1's netns) → route in the "
                 "kernels of the other lab nodes (ip monitor route), real daemons, real ToRs; "
                 "tor design: same-rack nodes share an AS and reach the block via the ToR, "
                 "so the ToR's kernel is watched instead of theirs")
    return {"figures": figs, "raw": raw, "notes": notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--claims", type=int, default=100)
    ap.add_argument("--design", nargs="+", default=["mesh", "tor"], choices=["mesh", "tor"])
    ap.add_argument("--claimer", nargs=2, metavar=("ENDPOINT", "NODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.claimer:
        raise SystemExit(claimer(*a.claimer))
    quiet_logs()
    for d in a.design:
        r = measure(d, a.claims)
        r.pop("samples_ms")
        print(json.dumps(r))


if __name__ == "__main__":
    main()
