"""The reconciler's decisions against a stateful fake kernel table."""

from __future__ import annotations

import errno

import pytest

from felix_like.nlwire import OP_ADD, OP_DELETE, OP_REPLACE, DumpInterrupted
from felix_like.routetable import NextHop, RouteTable, RouteTableError, Target
from tests.dataplane.fakenetlink import BLACKHOLE, FakeKernel, dev, key, multipath, via

OURS = 73
BIRD = 12


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(kernel: FakeKernel, **kw) -> RouteTable:
    kw.setdefault("clock", Clock())
    return RouteTable(driver=kernel, protocol=OURS, **kw)


def test_adds_routes_with_our_protocol_and_is_idempotent():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.1.12", ifname="eth0"),
                          Target("198.19.9.0/26", type="blackhole")])
    res = rt.apply()
    assert res.added == 2 and not res.failed
    assert k.of_protocol(OURS) == {key("198.19.1.0/26"): via("198.18.1.12", 2),
                                   key("198.19.9.0/26"): BLACKHOLE}
    k.executed.clear()
    res = rt.apply()
    assert k.executed == [] and res.added == res.replaced == res.deleted == 0


def test_changed_target_is_replaced_not_deleted_and_added():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.1.12", ifname="eth0")])
    rt.apply()
    k.executed.clear()
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.1.13", ifname="eth0")])
    rt.apply()
    assert [op[0] for op in k.executed] == [OP_REPLACE]
    assert k.of_protocol(OURS)[key("198.19.1.0/26")] == via("198.18.1.13", 2)


def test_foreign_route_on_our_key_is_never_replaced_and_key_stays_dirty():
    k = FakeKernel()
    k.add_foreign("198.19.1.0/26", via("198.18.1.99", 2), protocol=BIRD)
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.1.12", ifname="eth0"),
                          Target("198.19.2.0/26", gateway="198.18.1.12", ifname="eth0")])
    res = rt.apply()
    assert res.failed == {key("198.19.1.0/26"): errno.EEXIST}
    assert res.added == 1  # the other route is not blocked
    assert k.routes[key("198.19.1.0/26")] == (BIRD, via("198.18.1.99", 2))
    assert rt.pending() == 1
    # BIRD withdraws its route: our next apply (a resync, after the error) takes the key.
    del k.routes[key("198.19.1.0/26")]
    res = rt.apply()
    assert res.resynced and res.added == 1 and rt.pending() == 0
    assert k.routes[key("198.19.1.0/26")] == (OURS, via("198.18.1.12", 2))


def test_route_of_ours_already_as_desired_is_adopted_without_failure_or_resync():
    """The CNI plugin adds a pod's /32 (our protocol) before the daemon desires it: the
    reconciler's EXCL add meets our own route. Adopt it: no failure, no full resync
    (issue 18: every pod start logged routes_failed EEXIST and resynced the table)."""
    k = FakeKernel(links={"lo": 1, "eth0": 2, "nrw1": 7})
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.1.12", ifname="eth0")])
    rt.apply()                                   # first apply: the start-up resync
    dumps = k.dumps
    k.add_foreign("198.19.9.7/32", dev(7), protocol=OURS)          # what the plugin wrote
    k.add_foreign("198.19.9.8/32", dev(2), protocol=OURS)          # ours, but not as desired
    k.add_foreign("198.19.9.9/32", dev(7), protocol=BIRD)          # not ours at all
    rt.set_routes("workload", [Target("198.19.9.7/32", ifname="nrw1"),
                               Target("198.19.9.8/32", ifname="nrw1"),
                               Target("198.19.9.9/32", ifname="nrw1")])
    res = rt.apply()
    assert res.added == 1                        # the adopted one
    assert res.failed == {key("198.19.9.8/32"): errno.EEXIST, key("198.19.9.9/32"): errno.EEXIST}
    assert k.routes[key("198.19.9.9/32")] == (BIRD, dev(7))        # foreign: untouched
    assert k.routes[key("198.19.9.8/32")] == (OURS, dev(2))        # EXCL never replaces
    # Only the adoption's small per-interface dump ran, no full dump.
    assert k.dumps == dumps + 1 and k.oif_dumps == 1
    # The adopted key is settled: the two failures stay dirty, the adopted one does not.
    assert rt.pending() == 2


def test_only_adoptions_need_no_resync():
    k = FakeKernel(links={"lo": 1, "eth0": 2, "nrw1": 7})
    rt = make(k)
    rt.apply()
    k.add_foreign("198.19.9.7/32", dev(7), protocol=OURS)
    rt.set_routes("workload", [Target("198.19.9.7/32", ifname="nrw1")])
    res = rt.apply()
    assert not res.failed and res.added == 1 and rt.pending() == 0
    dumps = k.dumps
    res = rt.apply()                             # nothing to do, and no resync queued
    assert not res.resynced and k.dumps == dumps and k.executed[-1][0] == OP_ADD


def test_sweep_never_touches_other_protocols_or_unmanaged_tables():
    k = FakeKernel()
    k.add_foreign("198.19.50.0/24", via("198.18.1.1", 2), protocol=BIRD)
    k.add_foreign("198.19.51.0/24", dev(2), protocol=4)          # static
    k.add_foreign("198.19.52.0/24", BLACKHOLE, protocol=OURS, table=100)
    k.add_foreign("198.19.53.0/24", BLACKHOLE, protocol=OURS)    # ours, stale
    before = dict(k.routes)
    rt = make(k)
    rt.set_routes("bgp", [])
    rt.mark_in_sync()
    res = rt.apply()
    assert res.deleted == 1
    del before[key("198.19.53.0/24")]
    assert k.routes == before


def test_restart_keeps_stale_routes_until_in_sync_then_removes_only_undesired():
    k = FakeKernel()
    for i in range(4):
        k.add_foreign(f"198.19.{i}.0/26", via("198.18.1.12", 2), protocol=OURS)
    k.add_foreign("198.19.200.0/24", via("198.18.1.1", 2), protocol=BIRD)
    rt = make(k)
    # Sources only partly loaded: two routes desired so far.
    rt.set_routes("bgp", [Target(f"198.19.{i}.0/26", gateway="198.18.1.12", ifname="eth0")
                          for i in (0, 1)])
    res = rt.apply()
    assert k.executed == []  # desired ones unchanged, stale ones kept
    assert res.stale_kept == 2
    assert len(k.of_protocol(OURS)) == 4
    rt.mark_in_sync()
    res = rt.apply()
    assert res.deleted == 2 and [op[0] for op in k.executed] == [OP_DELETE, OP_DELETE]
    assert set(k.of_protocol(OURS)) == {key("198.19.0.0/26"), key("198.19.1.0/26")}
    assert key("198.19.200.0/24") in k.routes


def test_read_back_route_nobody_desires_deleted_only_after_in_sync():
    # A route of ours found at start (a restart) that no source has desired yet waits;
    # a route desired and then withdrawn during this run does not (test below).
    k = FakeKernel()
    k.add_foreign("198.19.1.0/26", BLACKHOLE, protocol=OURS)
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.2.0/26", type="blackhole")])
    rt.apply()
    res = rt.apply()
    assert res.stale_kept == 1 and key("198.19.1.0/26") in k.routes
    rt.set_routes("bgp", [])
    res = rt.apply()
    assert key("198.19.1.0/26") in k.routes and key("198.19.2.0/26") not in k.routes
    rt.mark_in_sync()
    assert rt.apply().deleted == 1
    assert k.routes == {}


def test_one_failed_route_stays_dirty_and_does_not_block_others():
    k = FakeKernel()
    k.fail_once[key("198.19.3.0/26")] = errno.ENETUNREACH
    rt = make(k)
    rt.set_routes("bgp", [Target(f"198.19.{i}.0/26", gateway="198.18.1.12", ifname="eth0")
                          for i in range(6)])
    res = rt.apply()
    assert res.failed == {key("198.19.3.0/26"): errno.ENETUNREACH}
    assert len(k.of_protocol(OURS)) == 5 and rt.pending() == 1
    res = rt.apply()
    assert res.resynced  # an error triggers a full resync
    assert res.added == 1 and rt.pending() == 0 and len(k.of_protocol(OURS)) == 6


def test_route_waits_for_its_interface():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("workload", [Target("198.19.1.5/32", ifname="nrveth1")])
    res = rt.apply()
    assert res.waiting_for_interface == 1 and not res.failed and k.routes == {}
    k.links["nrveth1"] = 7
    rt.on_links_changed()
    res = rt.apply()
    assert res.added == 1 and k.of_protocol(OURS) == {key("198.19.1.5/32"): dev(7)}


def test_class_priority_and_fallback():
    k = FakeKernel()
    rt = make(k, class_order=("workload", "bgp"))
    rt.set_routes("bgp", [Target("198.19.1.5/32", gateway="198.18.1.12", ifname="eth0")])
    rt.set_routes("workload", [Target("198.19.1.5/32", ifname="eth0")])
    rt.apply()
    assert k.of_protocol(OURS) == {key("198.19.1.5/32"): dev(2)}
    rt.set_routes("workload", [])
    rt.apply()  # not in sync yet, but the key is still desired by bgp: replaced, not deleted
    assert k.of_protocol(OURS) == {key("198.19.1.5/32"): via("198.18.1.12", 2)}


def test_incremental_apply_does_not_repair_drift_until_resync_timer():
    clock = Clock()
    k = FakeKernel()
    rt = make(k, clock=clock, resync_interval=90)
    rt.set_routes("bgp", [Target("198.19.1.0/26", type="blackhole")])
    rt.apply()
    del k.routes[key("198.19.1.0/26")]  # someone deletes our route behind our back
    clock.now += 10
    res = rt.apply()
    assert not res.resynced and k.routes == {}
    clock.now += 90
    res = rt.apply()
    assert res.resynced and res.added == 1 and key("198.19.1.0/26") in k.routes


def test_queue_resync_repairs_drift_and_dump_is_retried_when_interrupted():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.1.0/26", type="blackhole")])
    rt.apply()
    k.routes[key("198.19.1.0/26")] = (OURS, via("198.18.1.77", 2))  # changed behind our back
    k.interrupt_dumps = 2
    dumps = k.dumps
    rt.queue_resync()
    res = rt.apply()
    assert res.replaced == 1 and k.dumps == dumps + 3
    assert k.routes[key("198.19.1.0/26")] == (OURS, BLACKHOLE)


def test_dump_interrupted_forever_raises():
    k = FakeKernel(interrupt_dumps=10)
    rt = make(k)
    with pytest.raises(DumpInterrupted):
        rt.apply()


def test_add_uses_excl_and_replace_only_for_keys_known_ours():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.1.0/26", type="blackhole")])
    rt.apply()
    assert [op[0] for op in k.executed] == [OP_ADD]


@pytest.mark.parametrize("bad", [
    Target("198.19.1.1/26", type="blackhole"),            # host bits
    Target("198.19.1.0/33", type="blackhole"),
    Target("not-an-ip/24", type="blackhole"),
    Target("198.19.1.0/26"),                              # unicast needs gw or dev
    Target("198.19.1.0/26", type="blackhole", ifname="eth0"),
    Target("198.19.1.0/26", type="teleport"),
])
def test_invalid_targets_are_rejected_with_a_clear_error(bad):
    rt = make(FakeKernel())
    with pytest.raises(RouteTableError):
        rt.set_routes("bgp", [bad])


def test_unmanaged_table_rejected():
    rt = make(FakeKernel())
    with pytest.raises(RouteTableError, match="not managed"):
        rt.set_routes("bgp", [Target("198.19.1.0/26", type="blackhole", table=100)])


def test_protocol_is_a_parameter():
    k = FakeKernel()
    rt = RouteTable(driver=k, protocol=201, clock=Clock())
    rt.set_routes("bgp", [Target("198.19.1.0/26", type="blackhole")])
    rt.apply()
    assert k.routes[key("198.19.1.0/26")][0] == 201


def test_links_changed_for_one_device_only_revisits_its_routes():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [Target(f"198.19.{i}.0/26", gateway="198.18.1.12", ifname="eth0")
                          for i in range(50)])
    rt.set_routes("workload", [Target("198.19.100.5/32", ifname="nrveth1")])
    k.links["nrveth1"] = 7
    rt.apply()
    assert rt.pending() == 0
    k.links["nrveth1"] = 8  # the pod's veth was recreated: new index
    rt.on_links_changed({"nrveth1"})
    assert rt.pending() == 1
    k.executed.clear()
    rt.apply()
    assert k.executed == [(OP_REPLACE, key("198.19.100.5/32"), dev(8))]


# --- ECMP (multipath) ------------------------------------------------------------------

def _ecmp(dst: str = "198.19.3.0/26", *gws: str, ifname: str | None = "eth0") -> Target:
    return Target(dst, nexthops=tuple(NextHop(g, ifname) for g in (gws or ("198.18.1.1",
                                                                             "198.18.1.2"))))


def test_multipath_target_is_one_ecmp_route_and_hop_order_does_not_matter():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [_ecmp("198.19.3.0/26", "198.18.1.2", "198.18.1.1")])
    res = rt.apply()
    assert res.added == 1 and not res.failed
    assert k.of_protocol(OURS) == {
        key("198.19.3.0/26"): multipath(("198.18.1.1", 2), ("198.18.1.2", 2))}
    # Same hops, other order: nothing dirty; a full resync reads back an equal route.
    k.executed.clear()
    rt.set_routes("bgp", [_ecmp("198.19.3.0/26", "198.18.1.1", "198.18.1.2")])
    assert rt.pending() == 0
    rt.queue_resync()
    res = rt.apply()
    assert res.resynced and k.executed == []


def test_single_to_multi_and_back_are_replaces():
    k = FakeKernel()
    rt = make(k)
    rt.mark_in_sync()
    rt.set_routes("bgp", [Target("198.19.3.0/26", gateway="198.18.1.1", ifname="eth0")])
    rt.apply()
    k.executed.clear()
    rt.set_routes("bgp", [_ecmp()])
    rt.apply()
    rt.set_routes("bgp", [Target("198.19.3.0/26", gateway="198.18.1.2", ifname="eth0")])
    rt.apply()
    assert [op[0] for op in k.executed] == [OP_REPLACE, OP_REPLACE]
    assert k.of_protocol(OURS) == {key("198.19.3.0/26"): via("198.18.1.2", 2)}


def test_one_next_hop_or_duplicates_collapse_to_the_plain_form():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [
        Target("198.19.3.0/26", nexthops=(NextHop("198.18.1.1", "eth0"),)),
        _ecmp("198.19.4.0/26", "198.18.1.1", "198.18.1.1")])
    rt.apply()
    assert k.of_protocol(OURS) == {key("198.19.3.0/26"): via("198.18.1.1", 2),
                                   key("198.19.4.0/26"): via("198.18.1.1", 2)}


def test_multipath_hops_are_compared_one_by_one():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [_ecmp("198.19.3.0/26", "198.18.1.1", "198.18.1.2")])
    rt.apply()
    k.executed.clear()
    rt.set_routes("bgp", [_ecmp("198.19.3.0/26", "198.18.1.1", "198.18.1.3")])
    rt.apply()
    assert [op[0] for op in k.executed] == [OP_REPLACE]
    # Someone changes a hop behind our back: a resync repairs it.
    k.routes[key("198.19.3.0/26")] = (OURS, multipath(("198.18.1.1", 2), ("198.18.1.9", 2)))
    rt.queue_resync()
    res = rt.apply()
    assert res.replaced == 1
    assert k.of_protocol(OURS)[key("198.19.3.0/26")] == multipath(("198.18.1.1", 2),
                                                                  ("198.18.1.3", 2))


def test_multipath_waits_for_all_its_devices_and_follows_link_changes():
    k = FakeKernel()
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.3.0/26", nexthops=(
        NextHop("198.18.1.1", "eth0"), NextHop("198.18.9.1", "eth9", onlink=True)))])
    res = rt.apply()
    assert res.waiting_for_interface == 1 and k.of_protocol(OURS) == {}
    k.links["eth9"] = 9
    rt.on_links_changed(["eth9"])
    assert rt.pending() == 1
    res = rt.apply()
    assert res.added == 1
    assert k.of_protocol(OURS)[key("198.19.3.0/26")] == multipath(("198.18.1.1", 2),
                                                                  ("198.18.9.1", 9, True))
    # A change of an unrelated device leaves it alone; of one of its devices, not.
    rt.on_links_changed(["nrpod0"])
    assert rt.pending() == 0
    k.links["eth9"] = 19
    rt.on_links_changed(["eth9"])
    assert rt.apply().replaced == 1


@pytest.mark.parametrize("bad", [
    Target("198.19.3.0/26", gateway="198.18.1.1",
           nexthops=(NextHop("198.18.1.1"), NextHop("198.18.1.2"))),
    Target("198.19.3.0/26", type="blackhole",
           nexthops=(NextHop("198.18.1.1"), NextHop("198.18.1.2"))),
    Target("198.19.3.0/26", nexthops=(NextHop("198.18.1.1"), NextHop("fe80::1"))),
    Target("198.19.3.0/26", nexthops=(NextHop("198.18.1.1"), NextHop(""))),
])
def test_invalid_multipath_targets_are_refused(bad):
    rt = make(FakeKernel())
    with pytest.raises(RouteTableError):
        rt.set_routes("bgp", [bad])


def test_multipath_delete():
    k = FakeKernel()
    rt = make(k)
    rt.mark_in_sync()
    rt.set_routes("bgp", [_ecmp()])
    rt.apply()
    rt.set_routes("bgp", [])
    assert rt.apply().deleted == 1 and k.of_protocol(OURS) == {}


def test_explicit_withdrawal_before_in_sync_applies_at_once_read_back_routes_wait():
    """Before mark_in_sync only routes read back at start wait; a route desired in this
    run and then withdrawn (a peer's withdraw right after session up) goes at once
    (issue 18: withdrawals waited for the settle time after peers came up)."""
    k = FakeKernel()
    k.add_foreign("198.19.7.0/26", via("198.18.1.20", 2), protocol=OURS)   # read back
    rt = make(k)
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.1.12", ifname="eth0"),
                          Target("198.19.2.0/26", gateway="198.18.1.12", ifname="eth0")])
    rt.apply()
    rt.route_remove("bgp", "198.19.1.0/26")                  # incremental withdraw
    res = rt.apply()
    assert res.deleted == 1 and res.stale_kept == 1
    rt.set_routes("bgp", [])                                   # whole-class replace
    res = rt.apply()
    assert res.deleted == 1
    assert set(k.of_protocol(OURS)) == {key("198.19.7.0/26")}  # the read-back one waits
    rt.queue_resync()
    res = rt.apply()                                           # a resync keeps it too
    assert res.deleted == 0 and res.stale_kept == 1
    rt.mark_in_sync()
    assert rt.apply().deleted == 1 and not k.of_protocol(OURS)


def test_desired_snapshot_is_shared_until_the_next_change_and_never_changes():
    """Issue 17: the snapshot shares each class's dict (no 100k-route copy per cycle);
    update_many/remove_many copy a shared class before changing it."""
    rt = make(FakeKernel())
    tmpl = Target("0.0.0.0/0", gateway="198.18.1.12", ifname="eth0")
    rt.update_many("bgp", ["198.19.1.1/32", "198.19.1.2/32"], tmpl)
    snap = rt.desired_snapshot()
    assert rt.desired_snapshot() is snap  # nothing changed: the same snapshot
    rt.update_many("bgp", ["198.19.1.3/32"], tmpl)
    rt.remove_many("bgp", ["198.19.1.1/32"])
    assert snap.counts() == {"bgp": 2}
    assert set(snap.winners()) == {"198.19.1.1/32", "198.19.1.2/32"}
    later = rt.desired_snapshot()
    assert set(later.winners()) == {"198.19.1.2/32", "198.19.1.3/32"}
    rt.remove_many("bgp", ["198.19.1.2/32"])
    rt.set_routes("bgp", [Target("198.19.9.0/26", type="blackhole")])
    assert set(later.winners()) == {"198.19.1.2/32", "198.19.1.3/32"}


def test_v6_targets_round_trip_and_metric_1024_is_the_kernels_0():
    # issue 15: both families in one table; an IPv6 metric 1024 is the key's 0 (the
    # kernel stores 0 as 1024), so asking for either is one route, not two.
    k = FakeKernel()
    rt = make(k)
    targets = [Target("2001:2:0:19::40/122", gateway="2001:2:0:1::12", ifname="eth0"),
               Target("2001:2:0:19::/122", type="blackhole"),
               Target("2001:2:0:30::/64", nexthops=(NextHop("2001:2:0:1::2", "eth0"),
                                                  NextHop("2001:2:0:2::2", "eth0"))),
               Target("198.19.1.0/26", gateway="198.18.1.12", ifname="eth0")]
    rt.set_routes("bgp", targets)
    assert sorted(rt.desired_targets("bgp"), key=lambda t: t.dst) == sorted(
        targets, key=lambda t: t.dst)
    assert rt.apply().added == 4
    rt.set_routes("bgp", [Target("2001:2:0:19::40/122", gateway="2001:2:0:1::12", ifname="eth0",
                                 metric=1024)])
    res = rt.apply()
    assert (res.added, res.replaced, res.deleted) == (0, 0, 3)
    rt.remove_many("bgp", ["2001:2:0:19::40/122"], metric=1024)
    assert rt.apply().deleted == 1 and k.of_protocol(OURS) == {}
