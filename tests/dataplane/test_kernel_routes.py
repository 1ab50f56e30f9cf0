"""The reconciler against real netlink, in throwaway namespaces (checked with iproute2)."""

from __future__ import annotations

import json

import pytest

from felix_like.routetable import KernelRouteDriver, RouteTable, Target
from lab.netns import sh

pytestmark = pytest.mark.kernel

OURS = 73


def routes(netns: str, *selector: str) -> dict[str, dict]:
    out = sh(["ip", "-j", "-4", "route", "show", *selector], netns=netns).stdout
    return {(r["dst"] if "/" in r["dst"] or r["dst"] == "default" else r["dst"] + "/32"): r
            for r in json.loads(out or "[]")}


def ours(netns: str) -> dict[str, dict]:
    return routes(netns, "table", "all", "proto", str(OURS))


@pytest.fixture
def node(netns):
    """A namespace with an uplink nr0 (198.18.1.11/24) and a second link nr2."""
    sh(["ip", "link", "add", "nr0", "type", "veth", "peer", "name", "nr1"], netns=netns)
    sh(["ip", "link", "add", "nr2", "type", "veth", "peer", "name", "nr3"], netns=netns)
    for d in ("nr0", "nr1", "nr2", "nr3"):
        sh(["ip", "link", "set", d, "up"], netns=netns)
    sh(["ip", "addr", "add", "198.18.1.11/24", "dev", "nr0"], netns=netns)
    driver = KernelRouteDriver(netns=netns)
    yield netns, driver
    driver.close()


def table(driver, **kw) -> RouteTable:
    return RouteTable(driver=driver, protocol=OURS, **kw)


def test_add_replace_delete_against_real_netlink(node):
    ns, driver = node
    rt = table(driver)
    rt.mark_in_sync()
    rt.set_routes("bgp", [
        Target("198.19.1.0/26", gateway="198.18.1.12", ifname="nr0"),
        Target("198.19.2.0/26", gateway="198.18.2.11", ifname="nr2", onlink=True),
        Target("198.19.9.0/26", type="blackhole"),
        Target("198.19.9.7/32", ifname="nr2"),
        Target("198.19.10.0/24", gateway="198.18.1.12", ifname="nr0", metric=50),
    ])
    res = rt.apply()
    assert res.added == 5 and not res.failed
    got = ours(ns)
    assert got["198.19.1.0/26"]["gateway"] == "198.18.1.12" and got["198.19.1.0/26"]["dev"] == "nr0"
    assert "onlink" in got["198.19.2.0/26"]["flags"]
    assert got["198.19.9.0/26"]["type"] == "blackhole"
    assert got["198.19.9.7/32"]["scope"] == "link"
    assert got["198.19.10.0/24"]["metric"] == 50
    # Nothing to do the second time, even after a full resync.
    rt.queue_resync()
    res = rt.apply()
    assert res.resynced and res.added == res.replaced == res.deleted == 0 and not res.failed
    # Replace: new gateway; delete: dropped target.
    rt.set_routes("bgp", [
        Target("198.19.1.0/26", gateway="198.18.1.13", ifname="nr0"),
        Target("198.19.9.0/26", type="blackhole"),
    ])
    res = rt.apply()
    assert (res.replaced, res.deleted) == (1, 3)
    got = ours(ns)
    assert set(got) == {"198.19.1.0/26", "198.19.9.0/26"}
    assert got["198.19.1.0/26"]["gateway"] == "198.18.1.13"


def test_resync_repairs_routes_changed_behind_our_back(node):
    ns, driver = node
    rt = table(driver)
    rt.mark_in_sync()
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.1.12", ifname="nr0"),
                          Target("198.19.2.0/26", type="blackhole")])
    rt.apply()
    sh(["ip", "route", "del", "198.19.2.0/26", "proto", str(OURS)], netns=ns)
    sh(["ip", "route", "replace", "198.19.1.0/26", "via", "198.18.1.99", "dev", "nr0",
        "proto", str(OURS)], netns=ns)
    sh(["ip", "route", "add", "198.19.3.0/26", "via", "198.18.1.98", "proto", str(OURS)],
       netns=ns)
    rt.queue_resync()
    res = rt.apply()
    assert (res.added, res.replaced, res.deleted) == (1, 1, 1)
    got = ours(ns)
    assert set(got) == {"198.19.1.0/26", "198.19.2.0/26"}
    assert got["198.19.1.0/26"]["gateway"] == "198.18.1.12"


def test_foreign_routes_other_protocols_and_tables_untouched(node):
    ns, driver = node
    foreign = [
        ["198.19.50.0/24", "via", "198.18.1.1", "proto", "bird"],
        ["198.19.51.0/24", "via", "198.18.1.1", "proto", "static"],
        ["198.19.52.0/24", "via", "198.18.1.1", "proto", "80"],
        ["198.19.53.0/24", "via", "198.18.1.1", "proto", str(OURS), "table", "100"],
        ["198.19.54.0/24", "via", "198.18.1.1", "proto", "bird", "table", "100"],
        # A foreign route on a key we want: it must survive.
        ["198.19.1.0/26", "via", "198.18.1.1", "proto", "bird"],
    ]
    for argv in foreign:
        sh(["ip", "route", "add", *argv], netns=ns)
    before_main = routes(ns)
    before_100 = routes(ns, "table", "100")
    rt = table(driver)
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.1.12", ifname="nr0"),
                          Target("198.19.2.0/26", gateway="198.18.1.12", ifname="nr0")])
    rt.mark_in_sync()
    res = rt.apply()
    assert res.added == 1 and list(res.failed.values()) == [17]  # EEXIST, kept dirty
    rt.set_routes("bgp", [])
    res = rt.apply()
    assert res.deleted == 1
    assert routes(ns) == before_main
    assert routes(ns, "table", "100") == before_100


def test_restart_with_stale_routes_removes_only_undesired_after_in_sync(node):
    ns, driver = node
    for i in range(6):
        sh(["ip", "route", "add", f"198.19.{i}.0/26", "via", "198.18.1.12", "dev", "nr0",
            "proto", str(OURS)], netns=ns)
    sh(["ip", "route", "add", "198.19.99.0/24", "via", "198.18.1.1", "proto", "bird"], netns=ns)
    rt = table(driver)  # "the daemon restarted"
    rt.set_routes("bgp", [Target(f"198.19.{i}.0/26", gateway="198.18.1.12", ifname="nr0")
                          for i in range(3)])
    res = rt.apply()
    assert res.added == res.replaced == res.deleted == 0 and res.stale_kept == 3
    assert len(ours(ns)) == 6
    rt.mark_in_sync()
    res = rt.apply()
    assert res.deleted == 3
    assert set(ours(ns)) == {f"198.19.{i}.0/26" for i in range(3)}
    assert "198.19.99.0/24" in routes(ns)


def test_one_bad_route_does_not_block_the_others(node):
    ns, driver = node
    rt = table(driver)
    # Not onlink and the gateway is off every subnet: the kernel says ENETUNREACH.
    rt.set_routes("bgp", [Target("198.19.1.0/26", gateway="198.18.7.7", ifname="nr0"),
                          Target("198.19.2.0/26", gateway="198.18.1.12", ifname="nr0")])
    res = rt.apply()
    assert len(res.failed) == 1 and res.added == 1
    assert set(ours(ns)) == {"198.19.2.0/26"}
    assert rt.pending() == 1
    sh(["ip", "addr", "add", "198.18.7.1/24", "dev", "nr0"], netns=ns)
    res = rt.apply()
    assert res.added == 1 and rt.pending() == 0


def test_route_through_a_device_that_appears_later(node):
    ns, driver = node
    rt = table(driver)
    rt.set_routes("workload", [Target("198.19.1.5/32", ifname="nrpod0")])
    assert rt.apply().waiting_for_interface == 1
    sh(["ip", "link", "add", "nrpod0", "type", "veth", "peer", "name", "nrpod1"], netns=ns)
    sh(["ip", "link", "set", "nrpod0", "up"], netns=ns)
    rt.on_links_changed()
    assert rt.apply().added == 1
    assert ours(ns)["198.19.1.5/32"]["dev"] == "nrpod0"


def test_100k_routes_round_trip(node):
    from bench.bench_routes import route_prefixes

    ns, driver = node
    prefixes = route_prefixes(100_000)
    rt = table(driver)
    rt.mark_in_sync()
    rt.set_routes("bgp", [Target(p, gateway="198.18.1.12", ifname="nr0") for p in prefixes])
    res = rt.apply()
    assert res.added == 100_000 and not res.failed
    count = sh(["ip", "-4", "route", "show", "proto", str(OURS)], netns=ns).stdout.count("\n")
    assert count == 100_000
    rt.queue_resync()
    res = rt.apply()
    assert res.resynced and res.added == res.replaced == res.deleted == 0
    assert driver.dump_routes(OURS, frozenset({254})).keys() == rt._actual.keys()
    rt.set_routes("bgp", [])
    res = rt.apply()
    assert res.deleted == 100_000 and not res.failed
    assert ours(ns) == {}


def _hops(route: dict) -> list[tuple[str, str]]:
    return sorted((h["gateway"], h["dev"]) for h in route.get("nexthops", []))


def test_multipath_add_replace_dump_delete_against_real_netlink(node):
    from felix_like.routetable import NextHop

    ns, driver = node
    sh(["ip", "addr", "add", "198.18.3.11/24", "dev", "nr2"], netns=ns)
    rt = table(driver)
    rt.mark_in_sync()
    ecmp = Target("198.19.5.0/26", nexthops=(NextHop("198.18.1.2", "nr0"),
                                             NextHop("198.18.1.1", "nr0")))
    rt.set_routes("bgp", [ecmp, Target("198.19.6.0/26", gateway="198.18.1.1", ifname="nr0")])
    res = rt.apply()
    assert res.added == 2 and not res.failed
    got = ours(ns)
    assert _hops(got["198.19.5.0/26"]) == [("198.18.1.1", "nr0"), ("198.18.1.2", "nr0")]
    # Dump round trip: a resync and a brand-new reconciler both see nothing to do,
    # although the kernel dumps the hops in the order we sent them (unsorted).
    rt.queue_resync()
    res = rt.apply()
    assert res.resynced and res.added == res.replaced == res.deleted == 0 and not res.failed
    fresh = table(driver)
    fresh.set_routes("bgp", [ecmp, Target("198.19.6.0/26", gateway="198.18.1.1", ifname="nr0")])
    res = fresh.apply()
    assert res.added == res.replaced == res.deleted == res.stale_kept == 0
    # single -> multi (with an onlink hop on another device), multi -> single.
    rt.set_routes("bgp", [
        Target("198.19.5.0/26", gateway="198.18.1.2", ifname="nr0"),
        Target("198.19.6.0/26", nexthops=(NextHop("198.18.1.1", "nr0"),
                                          NextHop("198.18.7.1", "nr2", onlink=True),
                                          NextHop("198.18.3.1", "nr2")))])
    res = rt.apply()
    assert res.replaced == 2 and not res.failed
    got = ours(ns)
    assert "nexthops" not in got["198.19.5.0/26"]
    assert got["198.19.5.0/26"]["gateway"] == "198.18.1.2"
    assert _hops(got["198.19.6.0/26"]) == [("198.18.1.1", "nr0"), ("198.18.3.1", "nr2"),
                                           ("198.18.7.1", "nr2")]
    onlink = [h for h in got["198.19.6.0/26"]["nexthops"] if h["gateway"] == "198.18.7.1"]
    assert "onlink" in onlink[0]["flags"]
    rt.queue_resync()
    res = rt.apply()
    assert res.added == res.replaced == res.deleted == 0 and not res.failed
    # Drift: someone drops a hop; the resync restores all three.
    sh(["ip", "route", "replace", "198.19.6.0/26", "proto", str(OURS),
        "nexthop", "via", "198.18.1.1", "dev", "nr0",
        "nexthop", "via", "198.18.3.1", "dev", "nr2"], netns=ns)
    rt.queue_resync()
    assert rt.apply().replaced == 1
    assert len(ours(ns)["198.19.6.0/26"]["nexthops"]) == 3
    # Delete.
    rt.set_routes("bgp", [])
    res = rt.apply()
    assert res.deleted == 2 and not res.failed and ours(ns) == {}


def test_route_of_ours_added_by_another_writer_is_adopted(node):
    """Real netlink: a /32 of our protocol through a device (as the CNI plugin writes a
    pod's route) is adopted by the reconciler's add: no EEXIST failure, nothing
    replaced; a route of another protocol on a desired key still fails and survives."""
    ns, driver = node
    rt = table(driver)
    rt.mark_in_sync()
    rt.apply()
    sh(["ip", "route", "add", "198.19.9.7/32", "dev", "nr2", "scope", "link",
        "proto", str(OURS)], netns=ns)
    sh(["ip", "route", "add", "198.19.9.9/32", "dev", "nr2", "scope", "link",
        "proto", "bird"], netns=ns)
    rt.set_routes("workload", [Target("198.19.9.7/32", ifname="nr2"),
                               Target("198.19.9.9/32", ifname="nr2")])
    res = rt.apply()
    assert res.added == 1 and list(res.failed.values()) == [17]
    assert rt.pending() == 1
    assert routes(ns)["198.19.9.9/32"]["protocol"] == "bird"
    assert ours(ns)["198.19.9.7/32"]["dev"] == "nr2"
