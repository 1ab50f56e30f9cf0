"""IPAM throughput vs the raw etcd compare-and-swap ceiling, same client, same run.

    python -m bench.bench_ipam [--single 2000] [--per-proc 1000] [--procs 8] [--endpoint H:P]

Four measurements against one throwaway etcd (lab.etcd, --unsafe-no-fsync)
unless --endpoint is given:

* cas_1:   one process, sequential CAS (txn: compare mod revision, put) on one key
* alloc_1: one node allocating distinct handles (default /26 blocks)
* cas_N:   N processes, each CAS-looping on its own key
* alloc_N: N processes, each a different node, allocating

Each is ops/s of wall time; the ratios alloc/cas say how close allocation gets
to what the client and etcd can do at all. Goals (issue 3): alloc_1 >= 500/s,
alloc_N >= 0.5 x cas_N. ``run()`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import time

POOL = "198.19.0.0/16"


def _quiet() -> None:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _cas_loop(endpoint: str, key: str, n: int) -> tuple[float, float]:
    from ipam.store import EtcdStore, Expect, Put

    store = EtcdStore(endpoint, timeout=30)
    res = store.txn([Expect(key, 0)], [Put(key, b"0")])
    rev = res.revision
    t0 = time.monotonic()
    for i in range(n):
        res = store.txn([Expect(key, rev)], [Put(key, str(i).encode())])
        if not res.succeeded:
            raise RuntimeError(f"CAS on private key {key} conflicted")
        rev = res.revision
    t1 = time.monotonic()
    store.close()
    return t0, t1


def _alloc_loop(endpoint: str, node: str, n: int) -> tuple[float, float]:
    from ipam.allocator import Ipam
    from ipam.store import EtcdStore

    store = EtcdStore(endpoint, timeout=30)
    ipam = Ipam(store, node, max_blocks_per_node=1000)
    ipam.allocate(f"k8s-pod-network.{node}-warmup")     # claims the first block: not timed
    t0 = time.monotonic()
    for i in range(n):
        ipam.allocate(f"k8s-pod-network.{node}-{i}", {"namespace": "bench", "pod": f"p{i}"})
    t1 = time.monotonic()
    store.close()
    return t0, t1


def _proc_main(kind: str, endpoint: str, name: str, n: int, barrier, out) -> None:
    _quiet()
    barrier.wait()
    fn = _cas_loop if kind == "cas" else _alloc_loop
    out.put(fn(endpoint, f"/bench/cas/{name}" if kind == "cas" else name, n))


def _parallel(kind: str, endpoint: str, procs: int, n: int, tag: str) -> float:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    ps = [ctx.Process(target=_proc_main, args=(kind, endpoint, f"{tag}-{i}", n, barrier, out))
          for i in range(procs)]
    for p in ps:
        p.start()
    spans = [out.get(timeout=900) for _ in ps]
    for p in ps:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"bench process {p.pid} exited with {p.exitcode}")
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans)
    return procs * n / (end - start)


def run(single: int = 2000, per_proc: int = 1000, procs: int = 8,
        endpoint: str | None = None) -> dict:
    """Measure and return {cas_1, alloc_1, cas_N, alloc_N, ratios, goals}."""
    _quiet()
    server = None
    if endpoint is None:
        from lab.etcd import EtcdServer

        server = EtcdServer().start()
        endpoint = server.endpoint
    try:
        from ipam.allocator import Ipam
        from ipam.store import EtcdStore

        admin = Ipam(EtcdStore(endpoint), "bench-admin")
        if not any(str(p.cidr) == POOL for p in admin.list_pools()):
            admin.add_pool(POOL)
        t0, t1 = _cas_loop(endpoint, "/bench/cas/single", single)
        cas_1 = single / (t1 - t0)
        t0, t1 = _alloc_loop(endpoint, "bench-single", single)
        alloc_1 = single / (t1 - t0)
        cas_n = _parallel("cas", endpoint, procs, per_proc, "c")
        alloc_n = _parallel("alloc", endpoint, procs, per_proc, "bench-node")
        rep = admin.check(set(), node=None)
        if rep.double_allocations or rep.orphaned_handles or rep.missing_handles:
            raise RuntimeError(f"bench left etcd inconsistent: {rep.to_dict()}")
        return {
            "procs": procs, "single_ops": single, "per_proc_ops": per_proc,
            "cas_1_per_s": round(cas_1, 1), "alloc_1_per_s": round(alloc_1, 1),
            f"cas_{procs}_per_s": round(cas_n, 1), f"alloc_{procs}_per_s": round(alloc_n, 1),
            "ratio_1": round(alloc_1 / cas_1, 3), f"ratio_{procs}": round(alloc_n / cas_n, 3),
            "goal_alloc_1_ge_500": alloc_1 >= 500,
            f"goal_alloc_{procs}_ge_half_ceiling": alloc_n >= 0.5 * cas_n,
            "allocations_in_etcd": rep.allocations,
        }
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_ipam", description=__doc__.split("\n")[0])
    ap.add_argument("--single", type=int, default=2000, help="operations for the 1-process runs")
    ap.add_argument("--per-proc", type=int, default=1000, help="operations per process, N-process runs")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--endpoint", default=None, help="use this etcd instead of a throwaway one")
    ap.add_argument("--json", action="store_true", help="print the result dict as JSON")
    a = ap.parse_args(argv)
    r = run(a.single, a.per_proc, a.procs, a.endpoint)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    n = a.procs
    print(f"{'':24}{'1 process':>12}{f'{n} processes':>15}")
    print(f"{'raw etcd CAS ops/s':24}{r['cas_1_per_s']:>12.0f}{r[f'cas_{n}_per_s']:>15.0f}")
    print(f"{'IPAM allocations/s':24}{r['alloc_1_per_s']:>12.0f}{r[f'alloc_{n}_per_s']:>15.0f}")
    print(f"{'allocations / CAS':24}{r['ratio_1']:>12.2f}{r[f'ratio_{n}']:>15.2f}")
    print(f"goals: 1 node >= 500/s: {'met' if r['goal_alloc_1_ge_500'] else 'MISSED'}; "
          f"{n} nodes >= 0.5 x ceiling: "
          f"{'met' if r[f'goal_alloc_{n}_ge_half_ceiling'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
