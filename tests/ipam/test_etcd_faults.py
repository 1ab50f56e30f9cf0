"""Contention, crashes and etcd outages, with real etcd and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from ipam.errors import IpamStoreUnavailable
from ipam.store import EtcdStore
from tests.ipam.blockstate import borrowed_addresses, confirmed_blocks

pytestmark = pytest.mark.integration
POOL = "198.19.0.0/16"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker(endpoint: str, node: str, count: int, seed: int, stdout, **opts) -> subprocess.Popen:
    argv = [sys.executable, "-m", "tests.ipam.worker", "--endpoint", endpoint, "--node", node,
            "--count", str(count), "--seed", str(seed)]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(argv, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True)


def _replay(lines) -> tuple[dict[str, str], list[dict], list[dict]]:
    """Held handles (handle -> ip) from a worker's completed operations."""
    held: dict[str, str] = {}
    allocs, rels = [], []
    for ln in lines:
        ev = json.loads(ln)
        if ev["op"] == "alloc":
            allocs.append(ev)
            held[ev["h"]] = ev["ip"]
        elif ev["op"] == "rel":
            rels.append(ev)
            assert ev["ok"], f"a release of a held address failed: {ev}"
            del held[ev["h"]]
    return held, allocs, rels


def _complete_lines(path) -> list[str]:
    out = []
    for ln in path.read_text().splitlines():
        try:
            json.loads(ln)
        except ValueError:
            continue
        out.append(ln)
    return out


def _consistent(rep) -> None:
    assert not rep.orphaned_handles, rep.orphaned_handles[:5]
    assert not rep.missing_handles, rep.missing_handles[:5]
    assert not rep.double_allocations, rep.double_allocations[:5]
    assert not rep.affinity_mismatches, rep.affinity_mismatches[:5]


def test_contention_8_nodes_1000_each(etcd_server, make_ipam, tmp_path):
    admin = make_ipam("admin")
    admin.add_pool(POOL)
    nodes = [f"node-{i}" for i in range(8)]
    files = [open(tmp_path / f"{n}.jsonl", "w") for n in nodes]
    started = time.monotonic()
    procs = [_worker(etcd_server.endpoint, n, 1000, i, f)
             for i, (n, f) in enumerate(zip(nodes, files, strict=True))]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:]
    elapsed = time.monotonic() - started
    for f in files:
        f.close()
    held: dict[str, str] = {}
    leases = []
    n_rel = 0
    for n in nodes:
        lines = (tmp_path / f"{n}.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["op"] == "done"
        h, allocs, rels = _replay(lines)
        assert len(allocs) == 1000
        held.update(h)
        leases += [(a["ip"], a["seq"]) for a in allocs]
        n_rel += len(rels)
    # Every lease (address, sequence number) was handed out exactly once...
    assert len(leases) == 8000 and len(set(leases)) == 8000
    # ...no address is held twice now...
    dup = [ip for ip, c in Counter(held.values()).items() if c > 1]
    assert dup == []
    # ...and etcd holds exactly what the workers think they hold, nothing else.
    d = admin.dump()
    in_etcd = {h: sorted(r.ips) for h, (r, _) in d.handles.items()}
    assert in_etcd == {h: [ip] for h, ip in held.items()}
    rep = admin.check(set(held), live_nodes=nodes)
    assert rep.clean, rep.to_dict()
    assert rep.allocations == len(held) == 8000 - n_rel
    stats = Counter()
    for n in nodes:
        stats.update(json.loads((tmp_path / f"{n}.jsonl").read_text().splitlines()[-1])["stats"])
    print(f"\ncontention: 8 nodes x 1000 allocations, {n_rel} releases, {elapsed:.1f}s "
          f"({8000 / elapsed:.0f} allocations/s aggregate), {dict(stats)}")


def test_contention_on_shared_blocks_by_borrowers(etcd_server, make_ipam, tmp_path):
    """Owners allocate in their blocks while block-less nodes borrow from the same
    blocks: many processes race for the lowest free ordinal of one block."""
    admin = make_ipam("admin")
    admin.add_pool(POOL)
    spare = make_ipam("spare", max_blocks_per_node=20)
    for i in range(640):                      # ten confirmed blocks, then emptied
        spare.allocate(f"k8s-pod-network.spare-{i}")
    for i in range(640):
        spare.release_handle(f"k8s-pod-network.spare-{i}")
    specs = [(f"owner-{i}", 400, 20) for i in range(3)] + [(f"borrower-{i}", 200, 0) for i in range(3)]
    files = {n: open(tmp_path / f"{n}.jsonl", "w") for n, _, _ in specs}
    procs = [_worker(etcd_server.endpoint, n, count, i, files[n], max_blocks=mb)
             for i, (n, count, mb) in enumerate(specs)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:]
    for f in files.values():
        f.close()
    held: dict[str, str] = {}
    leases = []
    for n, count, _ in specs:
        h, allocs, _ = _replay((tmp_path / f"{n}.jsonl").read_text().splitlines())
        assert len(allocs) == count
        held.update(h)
        leases += [(a["ip"], a["seq"]) for a in allocs]
    assert len(set(leases)) == len(leases)
    assert not [ip for ip, c in Counter(held.values()).items() if c > 1]
    borrowed = {ip for n in ("borrower-0", "borrower-1", "borrower-2")
                for ip in borrowed_addresses(admin, n)}
    assert len(borrowed) == sum(1 for h in held if ".borrower-" in h)
    d = admin.dump()
    assert {h: sorted(r.ips) for h, (r, _) in d.handles.items()} == {h: [ip] for h, ip in held.items()}
    rep = admin.check(set(held))
    assert rep.clean, rep.to_dict()
    stats = Counter()
    for n, _, _ in specs:
        stats.update(json.loads((tmp_path / f"{n}.jsonl").read_text().splitlines()[-1])["stats"])
    print(f"\nshared blocks: {dict(stats)}")


def test_block_limit_is_exact_with_parallel_processes_of_one_node(etcd_server, make_ipam, tmp_path):
    """Parallel CNI ADDs on one node: four processes, one node name, max 2 blocks.
    The claim transaction compares the node's index, so no process can claim a
    third block behind another's back."""
    admin = make_ipam("admin")
    admin.add_pool("198.19.0.0/24", 27)      # 8 blocks of 32
    outs = [open(tmp_path / f"w{i}.jsonl", "w") for i in range(4)]
    procs = [_worker(etcd_server.endpoint, "node-x", 15, i, outs[i], tag=f"x{i}", max_blocks=2,
                     release_ratio=0) for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    for f in outs:
        f.close()
    assert len(confirmed_blocks(admin, "node-x")) == 2
    d = admin.dump()
    assert len(d.blocks) == 2 and len(d.handles) == 60
    assert sorted(d.affinities["node-x"][0].blocks) == sorted(confirmed_blocks(admin, "node-x"))
    assert admin.check({h for h in d.handles}).clean


def test_sigkill_mid_allocation_check_and_gc(etcd_server, make_ipam):
    admin = make_ipam("admin")
    admin.add_pool(POOL)
    p = _worker(etcd_server.endpoint, "node-k", 100000, 7, subprocess.PIPE, release_ratio=0.2)
    lines = []
    try:
        for ln in p.stdout:
            lines.append(ln)
            if sum('"alloc"' in x for x in lines) >= 150:
                break
        os.kill(p.pid, signal.SIGKILL)      # mid-run: it was allocating as fast as it could
        rest, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    lines += [x for x in rest.splitlines(keepends=True) if x.endswith("\n")]
    assert p.returncode == -signal.SIGKILL
    held, allocs, _ = _replay(lines)
    handles = sorted(held)
    live = set(handles[: len(handles) // 2])          # these pods came up
    dead = set(handles) - live
    rep = admin.check(live)
    _consistent(rep)                                   # etcd is consistent after the kill
    leaked = {leak["handle"] for leak in rep.leaks}
    assert dead <= leaked and not (leaked & live)
    # Anything leaked beyond the dead ones was in flight at the kill: committed, never printed.
    assert all(h.startswith("k8s-pod-network.node-k-") for h in leaked - dead)
    assert len(leaked - dead) <= 1

    t0 = 1_000_000.0
    g1 = admin.gc(live, now=t0, grace=5)
    assert g1.released == [] and {w["handle"] for w in g1.waiting} == leaked
    # Re-check before release: one leaked workload shows up between plan and release.
    late = sorted(dead)[0]
    calls = []

    def live_now():
        calls.append(1)
        return live if len(calls) == 1 else live | {late}
    g2 = admin.gc(live_now, now=t0 + 5, grace=5)
    assert {r["handle"] for r in g2.released} == leaked - {late}
    assert [s["handle"] for s in g2.skipped] == [late]
    rep2 = admin.check(live | {late})
    assert rep2.clean, rep2.to_dict()
    for h in live | {late}:
        assert admin.handle_ips(h) == [held[h]]       # never reclaims a live address
    # Once really gone, the late one is reclaimed after its own grace period.
    admin.gc(live, now=t0 + 10, grace=5)
    g4 = admin.gc(live, now=t0 + 15, grace=5)
    assert [r["handle"] for r in g4.released] == [late]
    assert admin.check(live).clean


def test_gc_frees_empty_blocks_after_two_sightings(etcd_server, make_ipam):
    a = make_ipam("node-a")
    a.add_pool("198.19.0.0/24", 29)     # blocks of 8
    ips = [a.allocate(f"k8s-pod-network.c{i}") for i in range(12)]   # two blocks
    assert len(confirmed_blocks(a)) == 2
    for i in range(12):
        a.release_handle(f"k8s-pod-network.c{i}")
    g1 = a.gc(set(), now=100, grace=0, live_nodes=["node-a"])
    assert g1.freed_blocks == []
    g2 = a.gc(set(), now=101, grace=0, live_nodes=["node-a"])
    assert len(g2.freed_blocks) == 1 and len(g2.kept_blocks) == 1   # the node keeps one
    assert len(confirmed_blocks(a)) == 1
    assert a.check(set(), live_nodes=["node-a"]).clean
    # The node is gone: its last block goes too, and allocation claims anew afterwards.
    a.gc(set(), now=102, grace=0, live_nodes=[])
    assert confirmed_blocks(a) == []
    assert a.allocate("k8s-pod-network.new") in {ip for ip in ips} | {a.handle_ips("k8s-pod-network.new")[0]}
    assert a.check({"k8s-pod-network.new"}).clean


def test_etcd_outage_fails_bounded_and_recovers(etcd_server, make_ipam, tmp_path):
    admin = make_ipam("admin")
    admin.add_pool(POOL)
    a = make_ipam("node-a")
    a.store = EtcdStore(etcd_server.endpoint, timeout=3.0)   # short deadline for the test
    first = a.allocate("k8s-pod-network.c1")
    # A worker allocating flat out while etcd stops under it.
    out = open(tmp_path / "w.jsonl", "w")
    w = _worker(etcd_server.endpoint, "node-w", 100000, 3, out, timeout=3.0)
    try:
        while sum(1 for _ in open(tmp_path / "w.jsonl")) < 50:
            time.sleep(0.05)
        etcd_server.pause()
        with pytest.raises(IpamStoreUnavailable) as e:
            a.allocate("k8s-pod-network.c2")
        msg = str(e.value)
        assert etcd_server.endpoint in msg and "check that etcd is running" in msg
        with pytest.raises(IpamStoreUnavailable):
            a.release_handle("k8s-pod-network.c1")
        _, err = w.communicate(timeout=60)      # the worker fails on its own, bounded
        assert w.returncode != 0 and "IpamStoreUnavailable" in err
    finally:
        if w.poll() is None:
            w.kill()
        out.close()
        if etcd_server.daemon is not None and not etcd_server.daemon.alive():
            etcd_server.resume()
    # etcd is back: the same objects work again, without a restart.
    second = a.allocate("k8s-pod-network.c2")
    assert second != first
    assert a.handle_ips("k8s-pod-network.c1") == [first]
    # Every line the worker wrote is a completed operation (one flushed line each; it
    # dies by exception, with no closing line); only a line cut by a kill may be partial.
    held, _, _ = _replay(_complete_lines(tmp_path / "w.jsonl"))
    live = set(held) | {"k8s-pod-network.c1", "k8s-pod-network.c2"}
    rep = a.check(live)
    _consistent(rep)                 # nothing half-written
    # At most the one allocation in flight at the outage may have committed unseen.
    assert len(rep.leaks) <= 1
