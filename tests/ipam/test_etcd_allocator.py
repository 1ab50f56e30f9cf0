"""The allocator against a real etcd: allocation order, idempotency, releases,
assignment, reservations, two-phase claims, limits, borrowing, pools, watch."""

from __future__ import annotations

import ipaddress

import pytest

from ipam.errors import (
    IpamAddressInUse,
    IpamAffinityError,
    IpamConflict,
    IpamExhausted,
    IpamNotFound,
    IpamPoolInUse,
    IpamPoolOverlap,
    IpamReserved,
)
from ipam.leases import LeaseAllocator
from ipam.model import Block
from tests.ipam.blockstate import borrowed_addresses, confirmed_blocks

pytestmark = pytest.mark.integration
POOL = "198.19.0.0/16"


def test_allocate_is_ordered_idempotent_and_recorded(make_ipam):
    a = make_ipam("node-a")
    a.add_pool(POOL)
    l1 = a.allocate_lease("k8s-pod-network.c1", {"namespace": "ns", "pod": "p1"})
    l2 = a.allocate_lease("k8s-pod-network.c2", {"namespace": "ns", "pod": "p2"})
    assert l1.new and l2.new and l1.block == l2.block
    assert int(l2.ip.split(".")[-1]) == int(l1.ip.split(".")[-1]) + 1   # lowest free first
    again = a.allocate_lease("k8s-pod-network.c1")                     # a retried CNI ADD
    assert again.ip == l1.ip and not again.new
    # A second Ipam (another process of the same node) sees the same state.
    b = make_ipam("node-a")
    assert b.allocate("k8s-pod-network.c1") == l1.ip
    assert b.handle_ips("k8s-pod-network.c2") == [l2.ip]
    assert confirmed_blocks(a) == [l1.block]
    blk = [x for x in a.snapshot()[1] if str(x.cidr) == l1.block][0]
    held = blk.holder(ipaddress.ip_address(l1.ip))
    assert held.handle == "k8s-pod-network.c1" and held.attrs["pod"] == "p1"
    assert held.attrs["node"] == "node-a"
    assert a.check({"k8s-pod-network.c1", "k8s-pod-network.c2"}).clean


def test_release_by_handle_and_ip_and_stale_release(make_ipam):
    a = make_ipam("node-a")
    a.add_pool(POOL)
    l1 = a.allocate_lease("k8s-pod-network.c1")
    l2 = a.allocate_lease("k8s-pod-network.c2")
    assert a.release_handle("k8s-pod-network.c1") == [l1.ip]
    assert a.release_handle("k8s-pod-network.c1") == []
    assert a.handle_ips("k8s-pod-network.c1") == []
    # l1's address is reused (cooldown 0) under a new lease...
    l3 = a.allocate_lease("k8s-pod-network.c3")
    assert l3.ip == l1.ip and l3.seq != l1.seq
    # ...so a stale release naming the old lease frees nothing.
    assert a.release_ip(l1.ip, seq=l1.seq) is False
    assert a.handle_ips("k8s-pod-network.c3") == [l3.ip]
    assert a.release_ip(l2.ip, seq=l2.seq) is True
    assert a.release_ip(l2.ip) is False
    assert a.check({"k8s-pod-network.c3"}).clean
    with pytest.raises(IpamNotFound, match="no IP pool"):
        a.release_ip("198.18.0.1")


def test_cooldown_delays_reuse(make_ipam):
    a = make_ipam("node-a", cooldown=30.0)
    a.add_pool(POOL)
    l1 = a.allocate_lease("k8s-pod-network.c1", now=1000)
    a.release_handle("k8s-pod-network.c1", now=1000)
    l2 = a.allocate_lease("k8s-pod-network.c2", now=1010)
    assert l2.ip != l1.ip
    a.release_handle("k8s-pod-network.c2", now=1040)
    l3 = a.allocate_lease("k8s-pod-network.c3", now=1031)   # l1's cooldown is over
    assert l3.ip == l1.ip


def test_assign_explicit_address(make_ipam):
    a = make_ipam("node-a")
    b = make_ipam("node-b")
    a.add_pool(POOL)
    assert a.assign("198.19.7.9", "k8s-pod-network.x", {"pod": "x"}) == "198.19.7.9"
    assert a.assign("198.19.7.9", "k8s-pod-network.x") == "198.19.7.9"     # idempotent
    assert "198.19.7.0/26" in confirmed_blocks(a)
    with pytest.raises(IpamAddressInUse, match="k8s-pod-network.x"):
        b.assign("198.19.7.9", "k8s-pod-network.y")
    # b may take another address in a's block (borrowing) unless strict.
    assert b.assign("198.19.7.10", "k8s-pod-network.y") == "198.19.7.10"
    assert borrowed_addresses(b) == ["198.19.7.10"]
    strict = make_ipam("node-b", strict_affinity=True)
    with pytest.raises(IpamAffinityError, match="strict affinity"):
        strict.assign("198.19.7.11", "k8s-pod-network.z")
    with pytest.raises(IpamNotFound, match="no IP pool"):
        a.assign("198.18.0.1", "k8s-pod-network.q")
    a.reserve("198.19.9.0/30")
    with pytest.raises(IpamReserved, match="reserved"):
        a.assign("198.19.9.1", "k8s-pod-network.q")


def test_reservations_are_never_handed_out(make_ipam):
    a = make_ipam("node-a")
    a.add_pool("198.19.0.0/28", 28)             # a single block of 16
    assert a.reserve("198.19.0.0/29") == ["198.19.0.0/29"]
    ips = {a.allocate(f"k8s-pod-network.c{i}") for i in range(8)}
    assert ips == {f"198.19.0.{i}" for i in range(8, 16)}
    with pytest.raises(IpamExhausted, match="198.19.0.0/28"):
        a.allocate("k8s-pod-network.c8")
    a.unreserve("198.19.0.0/29")
    assert a.reservations() == []
    assert a.allocate("k8s-pod-network.c8") == "198.19.0.0"


def test_stale_reservation_cache_is_caught_by_compare(make_ipam):
    a = make_ipam("node-a")
    a.add_pool("198.19.0.0/24", 28)
    first = a.allocate("k8s-pod-network.c0")
    nxt = "198.19.0." + str(int(first.rsplit(".", 1)[1]) + 1)
    admin = make_ipam("admin")
    admin.reserve(nxt + "/32")          # a's cache does not know yet
    assert a.allocate("k8s-pod-network.c1") != nxt


def test_two_phase_claim_pending_is_not_routed(make_ipam, monkeypatch):
    a = make_ipam("node-a")
    a.add_pool(POOL)
    # Crash between phase 1 (pending claim) and phase 2 (confirm).
    monkeypatch.setattr(LeaseAllocator, "_confirm", lambda self, *args: False)
    with pytest.raises(IpamConflict):   # never confirmed: the bounded loop gives up
        a.allocate("k8s-pod-network.c1")
    monkeypatch.undo()
    _, blocks = a.snapshot()
    assert [b.state for b in blocks] == ["pending"]
    assert confirmed_blocks(a) == []                 # pending: the daemon never routes it
    rep = a.check(set())
    assert rep.clean and len(rep.pending_blocks) == 1
    fresh = make_ipam("node-a")                      # the node restarts and allocates
    ip = fresh.allocate("k8s-pod-network.c1")
    assert confirmed_blocks(fresh) == [str(blocks[0].cidr)]
    assert ipaddress.ip_address(ip) in blocks[0].cidr


def test_max_blocks_strict_affinity_exhaustion_names_pools(make_ipam):
    a = make_ipam("node-a", max_blocks_per_node=1, strict_affinity=True)
    a.add_pool("198.19.0.0/28", 30)         # 4 blocks of 4
    ips = {a.allocate(f"k8s-pod-network.c{i}") for i in range(4)}
    assert len(ips) == 4
    with pytest.raises(IpamExhausted) as e:
        a.allocate("k8s-pod-network.c4")
    msg = str(e.value)
    assert "198.19.0.0/28" in msg and "maximum of 1 blocks" in msg and "strict affinity" in msg
    assert "pool add" in msg


def test_borrowing_when_out_of_blocks(make_ipam):
    a = make_ipam("node-a")
    b = make_ipam("node-b")
    a.add_pool("198.19.0.0/29", 30)         # 2 blocks of 4
    a.allocate("k8s-pod-network.a0")
    b.allocate("k8s-pod-network.b0")
    got = {a.allocate(f"k8s-pod-network.a{i}") for i in range(1, 7)}   # 3 own + 3 borrowed
    assert len(got) == 6
    borrowed = borrowed_addresses(a)
    assert len(borrowed) == 3 and set(borrowed) <= got
    with pytest.raises(IpamExhausted, match="no free address to borrow"):
        a.allocate("k8s-pod-network.a9")
    assert confirmed_blocks(b) and confirmed_blocks(a)


def test_exhaustion_when_no_pool_or_disabled_or_selector(make_ipam):
    a = make_ipam("node-a", node_labels={"rack": "a"})
    with pytest.raises(IpamExhausted, match="no IP pool exists"):
        a.allocate("k8s-pod-network.c1")
    a.add_pool(POOL, disabled=True)
    a.add_pool("198.18.128.0/24", node_selector='rack == "b"')
    with pytest.raises(IpamExhausted) as e:
        a.allocate("k8s-pod-network.c1")
    assert "198.19.0.0/16: disabled" in str(e.value)
    assert "excludes node node-a" in str(e.value)
    a.update_pool(POOL, disabled=False)
    assert a.allocate("k8s-pod-network.c1").startswith("198.19.")


def test_pools_overlap_and_delete(make_ipam):
    a = make_ipam("node-a")
    a.add_pool(POOL)
    with pytest.raises(IpamPoolOverlap, match="overlaps"):
        a.add_pool("198.19.4.0/24")
    a.add_pool("198.18.128.0/24", 28)
    assert [str(p.cidr) for p in a.list_pools()] == ["198.18.128.0/24", POOL]
    ip = a.allocate("k8s-pod-network.c1", pool=POOL)
    with pytest.raises(IpamPoolInUse, match="--force"):
        a.delete_pool(POOL)
    assert a.allocate("k8s-pod-network.c2", pool=POOL)   # refusal left the pool usable
    out = a.delete_pool(POOL, force=True)
    assert out["released"] == 2
    assert a.handle_ips("k8s-pod-network.c1") == []
    assert all(not b.startswith("198.19.") for b in confirmed_blocks(a))
    assert a.check(set()).clean
    assert ip.startswith("198.19.")
    a.delete_pool("198.18.128.0/24")
    assert a.list_pools() == []
    with pytest.raises(IpamNotFound):
        a.delete_pool("198.18.128.0/24")


def test_snapshot_then_watch_sees_the_claim_pending_then_confirmed(make_ipam):
    # What the daemon's syncer sees: a snapshot of the block keys, then a watch from
    # the next revision (bgpd/node/daemon.py parses the same keys and values).
    a = make_ipam("node-a")
    a.add_pool(POOL)
    rev, blocks = a.snapshot()
    assert blocks == []
    events, cancel = a.store.watch(a.keys.blocks(), rev + 1)
    a.allocate("k8s-pod-network.c1")
    seen = []
    for ev in events:
        block = Block.from_json(ev.value) if ev.kind == "put" else None
        seen.append((ev.kind, block.state if block else None))
        if block is not None and block.allocations:
            break
    cancel()
    assert seen[0] == ("put", "pending") and ("put", "confirmed") in seen


def test_ipv6_pool_and_dual_stack_handle(make_ipam):
    a = make_ipam("node-a")
    a.add_pool(POOL)
    a.add_pool("2001:2:0:19::/112")
    v4 = a.allocate("k8s-pod-network.ds", pool=POOL)
    v6 = a.allocate("k8s-pod-network.ds", pool="2001:2:0:19::/112")
    assert ipaddress.ip_address(v6).version == 6 and ipaddress.ip_address(v4).version == 4
    assert a.handle_ips("k8s-pod-network.ds") == sorted([v4, v6])
    assert any(ipaddress.ip_network(b).version == 6 for b in confirmed_blocks(a))
    assert a.check({"k8s-pod-network.ds"}).clean
    assert sorted(a.release_handle("k8s-pod-network.ds")) == sorted([v4, v6])
    assert a.check(set()).clean
