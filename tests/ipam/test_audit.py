"""Pure check and gc planning over hand-built snapshots."""

from __future__ import annotations

import ipaddress

from ipam.audit import check_state, plan_gc
from ipam.model import CONFIRMED, Block, HandleRecord

net = ipaddress.ip_network
POOL = net("198.19.0.0/16")


def _world():
    b1 = Block(net("198.19.0.0/29"), POOL, "n1", CONFIRMED)
    b1 = b1.allocate(0, "live", "n1", {}, 1).allocate(1, "dead", "n1", {}, 1)
    b2 = Block(net("198.19.0.8/29"), POOL, "n2", CONFIRMED)
    b2 = b2.allocate(0, "borrow", "n1", {}, 1)
    b3 = Block(net("198.19.0.16/29"), POOL, "n2", CONFIRMED)   # empty
    blocks = {str(b.cidr): b for b in (b1, b2, b3)}
    handles = {
        "live": HandleRecord("live", ips={"198.19.0.0": ("198.19.0.0/29", 1)}),
        "dead": HandleRecord("dead", ips={"198.19.0.1": ("198.19.0.0/29", 2)}),
        "borrow": HandleRecord("borrow", ips={"198.19.0.8": ("198.19.0.8/29", 1)}),
    }
    affs = {"n1": {"198.19.0.0/29": CONFIRMED},
            "n2": {"198.19.0.8/29": CONFIRMED, "198.19.0.16/29": CONFIRMED}}
    return blocks, handles, affs


def test_clean_when_everything_is_live():
    blocks, handles, affs = _world()
    rep = check_state(blocks, handles, affs, {"live", "dead", "borrow"})
    assert rep.clean and rep.allocations == 3


def test_leaks_scoped_by_node():
    blocks, handles, affs = _world()
    rep = check_state(blocks, handles, affs, {"live"})
    assert {leak["handle"] for leak in rep.leaks} == {"dead", "borrow"}
    rep = check_state(blocks, handles, affs, set(), node="n2")
    assert rep.leaks == []      # n2 allocated nothing; the borrowed one is n1's


def test_orphans_doubles_and_affinity_problems():
    blocks, handles, affs = _world()
    handles["ghost"] = HandleRecord("ghost", ips={"198.19.0.0": ("198.19.0.0/29", 1)})
    del handles["borrow"]
    affs["n1"]["198.19.0.24/29"] = CONFIRMED
    rep = check_state(blocks, handles, affs, {"live", "dead", "ghost"}, live_nodes={"n1"})
    assert any(o["handle"] == "ghost" for o in rep.orphaned_handles)
    assert [m["ip"] for m in rep.missing_handles] == ["198.19.0.8"]
    assert rep.double_allocations[0]["ip"] == "198.19.0.0"
    assert {o["node"] for o in rep.orphan_affinities} == {"n2"}
    assert any("missing block" in m["reason"] for m in rep.affinity_mismatches)
    assert not rep.clean


def test_tunnel_handle_of_live_node_is_live():
    b = Block(net("198.19.0.0/29"), POOL, "n1", CONFIRMED).allocate(0, "ipip-tunnel-addr-n1", "n1", {}, 0)
    rec = HandleRecord("ipip-tunnel-addr-n1", ips={"198.19.0.0": ("198.19.0.0/29", 1)})
    rep = check_state({"198.19.0.0/29": b}, {rec.handle: rec}, {"n1": {"198.19.0.0/29": CONFIRMED}},
                      set(), live_nodes={"n1"})
    assert rep.clean


def test_gc_grace_is_continuous_sighting():
    blocks, handles, affs = _world()
    rep = check_state(blocks, handles, affs, {"live", "borrow"})
    p1 = plan_gc(rep, blocks, None, now=100, grace=60)
    assert p1.due_leaks == [] and [w["handle"] for w in p1.waiting_leaks] == ["dead"]
    p2 = plan_gc(rep, blocks, p1.state, now=159, grace=60)
    assert p2.due_leaks == []
    p3 = plan_gc(rep, blocks, p2.state, now=160, grace=60)
    assert [d["ip"] for d in p3.due_leaks] == ["198.19.0.1"]
    # The leak disappears (workload came back) and reappears: the clock restarts.
    rep_ok = check_state(blocks, handles, affs, {"live", "borrow", "dead"})
    p4 = plan_gc(rep_ok, blocks, p3.state, now=170, grace=60)
    p5 = plan_gc(rep, blocks, p4.state, now=200, grace=60)
    assert p5.due_leaks == [] and p5.waiting_leaks[0]["first_seen"] == 200


def test_gc_reused_address_is_a_new_leak():
    blocks, handles, affs = _world()
    rep = check_state(blocks, handles, affs, {"live", "borrow"})
    p1 = plan_gc(rep, blocks, None, now=0, grace=10)
    b = blocks["198.19.0.0/29"].release(1, 5, 0).allocate(1, "dead", "n1", {}, 6)  # new seq
    blocks2 = {**blocks, "198.19.0.0/29": b}
    handles2 = {**handles, "dead": HandleRecord("dead", ips={"198.19.0.1": ("198.19.0.0/29", b.seq)})}
    rep2 = check_state(blocks2, handles2, affs, {"live", "borrow"})
    p2 = plan_gc(rep2, blocks2, p1.state, now=20, grace=10)
    assert p2.due_leaks == []


def test_gc_empty_blocks_need_two_consecutive_sightings_and_keep_last():
    blocks, handles, affs = _world()
    rep = check_state(blocks, handles, affs, {"live", "dead", "borrow"})
    p1 = plan_gc(rep, blocks, None, now=0, grace=10)
    assert p1.due_blocks == [] and p1.state["empty"] == {"198.19.0.16/29": 1}
    p2 = plan_gc(rep, blocks, p1.state, now=1, grace=10)
    assert p2.due_blocks == ["198.19.0.16/29"]
    # n2 with only the empty block left, and alive: kept.
    only = {"198.19.0.16/29": blocks["198.19.0.16/29"]}
    p3 = plan_gc(rep, only, p2.state, now=2, grace=10, live_nodes={"n2"})
    assert p3.due_blocks == [] and p3.kept_blocks == ["198.19.0.16/29"]
    # n2 gone: freed.
    p4 = plan_gc(rep, only, p2.state, now=2, grace=10, live_nodes={"n1"})
    assert p4.due_blocks == ["198.19.0.16/29"]
    # An allocation in between resets the count.
    busy = {"198.19.0.16/29": blocks["198.19.0.16/29"].allocate(0, "x", "n2", {}, 0)}
    p5 = plan_gc(rep, busy, p1.state, now=1, grace=10)
    p6 = plan_gc(rep, blocks, p5.state, now=2, grace=10)
    assert p6.due_blocks == []
