"""IPv6 pools next to IPv4 ones against a real etcd (issue 15): /122 blocks, the same
affinity, borrowing, leases, check and gc as IPv4, one family per allocation, the CLI
showing both families, and parallel processes never handing an address out twice."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections import Counter

import pytest
from click.testing import CliRunner

from bgpd.cli.main import main
from ipam.errors import IpamExhausted, IpamInvalid
from tests.ipam.blockstate import borrowed_addresses, confirmed_blocks
from tests.ipam.test_etcd_faults import _consistent, _replay, _worker

pytestmark = pytest.mark.integration
V4 = "198.19.0.0/16"
V6 = "2001:2:0:19::/64"


def test_v6_allocation_comes_from_122_blocks_in_order(make_ipam):
    a = make_ipam("node-a")
    a.add_pool(V6)
    ips = [a.allocate(f"k8s-pod-network.c{i}", family=6) for i in range(65)]
    nets = {ipaddress.ip_network(b) for b in confirmed_blocks(a)}
    assert all(n.prefixlen == 122 for n in nets) and len(nets) == 2   # 64 + 1
    first = min(nets, key=lambda n: ips.index(str(n.network_address))
                if str(n.network_address) in ips else 99)
    # The first block is used from its lowest ordinal up, then a second block is claimed.
    assert ips[:64] == [str(first.network_address + i) for i in range(64)]
    assert ipaddress.ip_address(ips[64]) in (nets - {first}).pop()
    assert len(set(ips)) == 65
    # Idempotent per handle and family: a retried ADD gets the same address back.
    assert a.allocate("k8s-pod-network.c3", family=6) == ips[3]
    assert a.check({f"k8s-pod-network.c{i}" for i in range(65)}, live_nodes=["node-a"]).clean


def test_default_family_stays_v4_and_a_handle_holds_one_per_family(make_ipam):
    a = make_ipam("node-a")
    a.add_pool(V6)
    # Only an IPv6 pool: a caller that asks nothing gets no IPv6 address behind its back.
    with pytest.raises(IpamExhausted, match="no IPv4 pool exists"):
        a.allocate("k8s-pod-network.x")
    a.add_pool(V4)
    v4 = a.allocate("k8s-pod-network.ds")
    v6 = a.allocate("k8s-pod-network.ds", family=6)
    assert ipaddress.ip_address(v4).version == 4 and ipaddress.ip_address(v6).version == 6
    assert a.allocate("k8s-pod-network.ds", family=4) == v4      # not a second address
    assert a.handle_ips("k8s-pod-network.ds") == sorted([v4, v6])
    with pytest.raises(IpamInvalid, match="family 4"):
        a.allocate("k8s-pod-network.ds", pool=V6, family=4)
    # Releasing one address leaves the other family's lease under the handle.
    assert a.release_ip(v6) is True
    assert a.handle_ips("k8s-pod-network.ds") == [v4]
    assert sorted(a.release_handle("k8s-pod-network.ds")) == [v4]
    assert a.check(set()).clean


def test_block_limit_counts_per_family(make_ipam):
    a = make_ipam("node-a", max_blocks_per_node=1, strict_affinity=True)
    a.add_pool("198.19.0.0/28", 30)             # one v4 block of 4 fills the limit...
    a.add_pool("2001:2:0:19::/120", 126)          # ...for IPv4 only
    for i in range(4):
        a.allocate(f"k8s-pod-network.v4-{i}")
    with pytest.raises(IpamExhausted, match="maximum of 1 blocks"):
        a.allocate("k8s-pod-network.v4-4")
    v6 = [a.allocate(f"k8s-pod-network.v6-{i}", family=6) for i in range(4)]
    assert len(set(v6)) == 4
    with pytest.raises(IpamExhausted) as e:
        a.allocate("k8s-pod-network.v6-4", family=6)
    assert "2001:2:0:19::/120" in str(e.value) and "strict affinity" in str(e.value)
    assert "198.19.0.0/28" not in str(e.value)      # the other family's pool is not a reason


def test_v6_borrowing_release_stale_lease_and_gc(make_ipam):
    a = make_ipam("node-a")
    b = make_ipam("node-b")
    a.add_pool("2001:2:0:19::/121", 122)          # 2 blocks of 64
    a.allocate("k8s-pod-network.a0", family=6)
    b.allocate("k8s-pod-network.b0", family=6)
    got = [a.allocate(f"k8s-pod-network.a{i}", family=6) for i in range(1, 70)]
    assert len(set(got)) == 69
    borrowed = borrowed_addresses(a)
    assert len(borrowed) == 6 and set(borrowed) <= set(got)     # 63 own + 6 from node-b
    # A stale release (older seq) of a reused address is refused, the right one is not.
    ip0 = got[0]
    seq0 = a.dump().handles["k8s-pod-network.a1"][0].ips[ip0][1]
    assert a.release_ip(ip0, seq=seq0) is True
    again = a.allocate_lease("k8s-pod-network.re", family=6)
    assert again.ip == ip0 and again.seq > seq0
    assert a.release_ip(ip0, seq=seq0) is False
    assert a.handle_ips("k8s-pod-network.re") == [ip0]
    # check and gc: the borrower's pods die, gc reclaims them after the grace period.
    live = {"k8s-pod-network.a0", "k8s-pod-network.b0", "k8s-pod-network.re"}
    rep = a.check(live, live_nodes=["node-a", "node-b"])
    _consistent(rep)
    assert len(rep.leaks) == 68 and all(":" in leak["ip"] for leak in rep.leaks)
    a.gc(live, now=1000.0, grace=5, live_nodes=["node-a", "node-b"])
    g = a.gc(live, now=1010.0, grace=5, live_nodes=["node-a", "node-b"])
    assert len(g.released) == 68
    assert a.check(live, live_nodes=["node-a", "node-b"]).clean


def test_cli_pool_add_list_show_both_families_and_bad_v6_input(etcd_server, make_ipam):
    runner = CliRunner()
    env = {"NODEROUTER_ETCD_ENDPOINTS": etcd_server.endpoint}

    def run(*args, code=0):
        res = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res.stdout if code == 0 else res.output

    out = json.loads(run("pool", "add", V6, "--vxlan-mode", "CrossSubnet", "-o", "json"))
    assert out["cidr"] == V6 and out["block_size"] == 122 and out["family"] == 6
    run("pool", "add", V4)
    err = run("pool", "add", "2001:2:0:30::/64", "--block-size", "112", code=2)
    assert "IPv6 block size /112 must lie between /116 and /128" in err
    err = run("pool", "add", "2001:2:0:20::/64", "--ipip-mode", "Always", code=2)
    assert "not possible for an IPv6 pool" in err and "2001:2:0:20::/64" in err
    assert "overlaps existing pool(s) 2001:2:0:19::/64" in run("pool", "add", "2001:2:0:19::/96", code=1)
    err = run("pool", "add", "2001:2:0:21::1/64", code=2)
    assert "not a valid network" in err
    rows = json.loads(run("pool", "list", "-o", "json"))
    assert [(r["cidr"], r["family"]) for r in rows] == [(V4, 4), (V6, 6)]
    assert [r["cidr"] for r in json.loads(run("pool", "list", "--family", "6", "-o", "json"))] == [V6]
    table = run("pool", "list").splitlines()
    assert any(ln.startswith(V6) and "CrossSubnet" in ln for ln in table)

    node = make_ipam("node-a")
    v4 = node.allocate("k8s-pod-network.p1")
    v6 = node.allocate("k8s-pod-network.p1", family=6)
    show = json.loads(run("ipam", "show", "--allocations", "-o", "json"))
    assert [(p["cidr"], p["family"], p["used"]) for p in show["pools"]] == [(V4, 4, 1), (V6, 6, 1)]
    assert {a["ip"] for a in show["allocations"]} == {v4, v6}
    only6 = json.loads(run("ipam", "show", "--allocations", "--family", "6", "-o", "json"))
    assert [a["ip"] for a in only6["allocations"]] == [v6]
    assert [b["block"] for b in only6["blocks"]] == [str(ipaddress.ip_network((v6, 122), strict=False))]


def test_contention_8_processes_on_a_v6_pool_never_duplicates(etcd_server, make_ipam, tmp_path):
    admin = make_ipam("admin")
    admin.add_pool("2001:2:0:19::/116", 122)      # 64 blocks of 64, ~3 claimed per node
    nodes = [f"node-{i}" for i in range(8)]
    count = 250
    files = [open(tmp_path / f"{n}.jsonl", "w") for n in nodes]
    started = time.monotonic()
    procs = [_worker(etcd_server.endpoint, n, count, i, f, family=6)
             for i, (n, f) in enumerate(zip(nodes, files, strict=True))]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:]
    for f in files:
        f.close()
    held: dict[str, str] = {}
    leases = []
    for n in nodes:
        lines = (tmp_path / f"{n}.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["op"] == "done"
        h, allocs, _ = _replay(lines)
        assert len(allocs) == count
        held.update(h)
        leases += [(a["ip"], a["seq"]) for a in allocs]
    assert all(ipaddress.ip_address(ip).version == 6 for ip, _ in leases)
    assert len(set(leases)) == len(leases) == 8 * count
    assert [ip for ip, c in Counter(held.values()).items() if c > 1] == []
    d = admin.dump()
    assert {h: sorted(r.ips) for h, (r, _) in d.handles.items()} == {h: [ip] for h, ip in held.items()}
    rep = admin.check(set(held), live_nodes=nodes)
    assert rep.clean, rep.to_dict()
    assert rep.allocations == len(held)
    print(f"\nv6 contention: 8 x {count} allocations in {time.monotonic() - started:.1f}s")


def test_sigkill_mid_v6_allocation_then_check_and_gc(etcd_server, make_ipam):
    admin = make_ipam("admin")
    admin.add_pool(V6)
    p = _worker(etcd_server.endpoint, "node-k", 100000, 7, subprocess.PIPE, release_ratio=0.2,
                family=6)
    lines = []
    try:
        for ln in p.stdout:
            lines.append(ln)
            if sum('"alloc"' in x for x in lines) >= 100:
                break
        p.kill()
        rest, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    lines += [x for x in rest.splitlines(keepends=True) if x.endswith("\n")]
    held, _, _ = _replay(lines)
    live = set(sorted(held)[: len(held) // 2])
    rep = admin.check(live)
    _consistent(rep)
    leaked = {leak["handle"] for leak in rep.leaks}
    assert set(held) - live <= leaked and not (leaked & live)
    assert len(leaked - (set(held) - live)) <= 1      # at most the one in flight at the kill
    admin.gc(live, now=1000.0, grace=5)
    g = admin.gc(live, now=1006.0, grace=5)
    assert {r["handle"] for r in g.released} == leaked
    assert admin.check(live).clean
    for h in live:
        assert admin.handle_ips(h) == [held[h]]
