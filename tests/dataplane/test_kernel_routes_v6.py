"""The reconciler with IPv6 routes against real netlink (issue 15), in throwaway
namespaces, checked with iproute2: the IPv4 kernel tests (test_kernel_routes.py) again
with 2001:2:: addresses, plus both families in one table."""

from __future__ import annotations

import json

import pytest

from felix_like.routetable import KernelRouteDriver, NextHop, RouteTable, RouteTableError, Target
from lab.netns import sh

pytestmark = pytest.mark.kernel

OURS = 73


def routes6(netns: str, *selector: str) -> dict[str, dict]:
    out = sh(["ip", "-j", "-6", "route", "show", *selector], netns=netns).stdout
    return {(r["dst"] if "/" in r["dst"] or r["dst"] == "default" else r["dst"] + "/128"): r
            for r in json.loads(out or "[]")}


def ours6(netns: str) -> dict[str, dict]:
    return routes6(netns, "table", "all", "proto", str(OURS))


def ours4(netns: str) -> set[str]:
    out = sh(["ip", "-j", "-4", "route", "show", "table", "all", "proto", str(OURS)],
             netns=netns).stdout
    return {r["dst"] for r in json.loads(out or "[]")}


@pytest.fixture
def node(netns):
    """A namespace with an uplink nr0 (198.18.1.11/24, 2001:2:0:1::11/64) and a second
    link nr2 (2001:2:0:2::11/64). nodad: the addresses are usable at once."""
    sh(["ip", "link", "add", "nr0", "type", "veth", "peer", "name", "nr1"], netns=netns)
    sh(["ip", "link", "add", "nr2", "type", "veth", "peer", "name", "nr3"], netns=netns)
    for d in ("nr0", "nr1", "nr2", "nr3"):
        sh(["ip", "link", "set", d, "up"], netns=netns)
    sh(["ip", "addr", "add", "198.18.1.11/24", "dev", "nr0"], netns=netns)
    sh(["ip", "-6", "addr", "add", "2001:2:0:1::11/64", "dev", "nr0", "nodad"], netns=netns)
    sh(["ip", "-6", "addr", "add", "2001:2:0:2::11/64", "dev", "nr2", "nodad"], netns=netns)
    driver = KernelRouteDriver(netns=netns)
    yield netns, driver
    driver.close()


def table(driver, **kw) -> RouteTable:
    return RouteTable(driver=driver, protocol=OURS, **kw)


def test_v6_add_replace_delete_blackhole_122_and_idle_resync(node):
    ns, driver = node
    rt = table(driver)
    rt.mark_in_sync()
    rt.set_routes("bgp", [
        Target("2001:2:0:19::40/122", gateway="2001:2:0:1::12", ifname="nr0"),
        Target("2001:2:0:19::80/122", gateway="2001:2:0:7::11", ifname="nr2", onlink=True),
        Target("2001:2:0:19::/122", type="blackhole"),           # our own block
        Target("2001:2:0:19::7/128", ifname="nr2"),              # a pod's host route
        Target("2001:2:0:20::/64", gateway="2001:2:0:1::12", ifname="nr0", metric=50),
    ])
    res = rt.apply()
    assert res.added == 5 and not res.failed, res
    got = ours6(ns)
    assert got["2001:2:0:19::40/122"]["gateway"] == "2001:2:0:1::12"
    assert got["2001:2:0:19::40/122"]["dev"] == "nr0"
    assert "onlink" in got["2001:2:0:19::80/122"]["flags"]
    assert got["2001:2:0:19::/122"]["type"] == "blackhole"
    assert got["2001:2:0:19::7/128"]["dev"] == "nr2"
    assert got["2001:2:0:20::/64"]["metric"] == 50
    # The kernel stored metric 0 as 1024 and reports the blackhole through lo: neither
    # is a difference, so a full resync has nothing to do.
    assert got["2001:2:0:19::40/122"]["metric"] == 1024
    rt.queue_resync()
    res = rt.apply()
    assert res.resynced and res.added == res.replaced == res.deleted == 0 and not res.failed
    rt.set_routes("bgp", [
        Target("2001:2:0:19::40/122", gateway="2001:2:0:1::13", ifname="nr0"),
        Target("2001:2:0:19::/122", type="blackhole"),
    ])
    res = rt.apply()
    assert (res.replaced, res.deleted) == (1, 3) and not res.failed
    got = ours6(ns)
    assert set(got) == {"2001:2:0:19::40/122", "2001:2:0:19::/122"}
    assert got["2001:2:0:19::40/122"]["gateway"] == "2001:2:0:1::13"


def test_v6_resync_repairs_routes_changed_behind_our_back(node):
    ns, driver = node
    rt = table(driver)
    rt.mark_in_sync()
    rt.set_routes("bgp", [Target("2001:2:0:19::40/122", gateway="2001:2:0:1::12", ifname="nr0"),
                          Target("2001:2:0:19::80/122", type="blackhole")])
    rt.apply()
    sh(["ip", "-6", "route", "del", "2001:2:0:19::80/122", "proto", str(OURS)], netns=ns)
    sh(["ip", "-6", "route", "replace", "2001:2:0:19::40/122", "via", "2001:2:0:1::99", "dev", "nr0",
        "proto", str(OURS)], netns=ns)
    sh(["ip", "-6", "route", "add", "2001:2:0:19::c0/122", "via", "2001:2:0:1::98", "proto",
        str(OURS)], netns=ns)
    rt.queue_resync()
    res = rt.apply()
    assert (res.added, res.replaced, res.deleted) == (1, 1, 1) and not res.failed
    got = ours6(ns)
    assert set(got) == {"2001:2:0:19::40/122", "2001:2:0:19::80/122"}
    assert got["2001:2:0:19::40/122"]["gateway"] == "2001:2:0:1::12"


def test_v6_foreign_routes_other_protocols_and_tables_untouched(node):
    ns, driver = node
    for argv in (["2001:2:0:50::/64", "via", "2001:2:0:1::1", "proto", "bird"],
                 ["2001:2:0:51::/64", "via", "2001:2:0:1::1", "proto", "static"],
                 ["2001:2:0:52::/64", "via", "2001:2:0:1::1", "proto", "80"],
                 ["2001:2:0:53::/64", "via", "2001:2:0:1::1", "proto", str(OURS), "table", "100"],
                 ["2001:2:0:19::40/122", "via", "2001:2:0:1::1", "proto", "bird"]):
        sh(["ip", "-6", "route", "add", *argv], netns=ns)
    before_main = routes6(ns)
    before_100 = routes6(ns, "table", "100")
    rt = table(driver)
    rt.set_routes("bgp", [Target("2001:2:0:19::40/122", gateway="2001:2:0:1::12", ifname="nr0"),
                          Target("2001:2:0:19::80/122", gateway="2001:2:0:1::12", ifname="nr0")])
    rt.mark_in_sync()
    res = rt.apply()
    assert res.added == 1 and list(res.failed.values()) == [17]    # EEXIST: bird's, kept
    rt.set_routes("bgp", [])
    assert rt.apply().deleted == 1
    assert routes6(ns) == before_main
    assert routes6(ns, "table", "100") == before_100


def test_restart_reads_back_both_families_and_sweeps_only_after_in_sync(node):
    ns, driver = node
    for i in range(4):
        sh(["ip", "-6", "route", "add", f"2001:2:0:19::{i * 64:x}/122", "via", "2001:2:0:1::12",
            "dev", "nr0", "proto", str(OURS)], netns=ns)
        sh(["ip", "route", "add", f"198.19.{i}.0/26", "via", "198.18.1.12", "dev", "nr0",
            "proto", str(OURS)], netns=ns)
    rt = table(driver)  # "the daemon restarted"
    rt.set_routes("bgp", [Target(f"2001:2:0:19::{i * 64:x}/122", gateway="2001:2:0:1::12",
                                 ifname="nr0") for i in range(2)]
                  + [Target(f"198.19.{i}.0/26", gateway="198.18.1.12", ifname="nr0")
                     for i in range(2)])
    res = rt.apply()
    # Everything desired is already there (no churn), the rest is kept until in sync.
    assert res.added == res.replaced == res.deleted == 0 and res.stale_kept == 4
    assert len(ours6(ns)) == 4 and len(ours4(ns)) == 4
    rt.mark_in_sync()
    res = rt.apply()
    assert res.deleted == 4 and not res.failed
    assert set(ours6(ns)) == {"2001:2:0:19::/122", "2001:2:0:19::40/122"}
    assert ours4(ns) == {"198.19.0.0/26", "198.19.1.0/26"}


def test_v6_one_bad_route_does_not_block_the_others(node):
    ns, driver = node
    rt = table(driver)
    # Not onlink and the gateway is on no subnet of the link: the kernel refuses it.
    rt.set_routes("bgp", [Target("2001:2:0:19::40/122", gateway="2001:2:0:7::7", ifname="nr0"),
                          Target("2001:2:0:19::80/122", gateway="2001:2:0:1::12", ifname="nr0")])
    res = rt.apply()
    assert len(res.failed) == 1 and res.added == 1
    assert set(ours6(ns)) == {"2001:2:0:19::80/122"}
    sh(["ip", "-6", "addr", "add", "2001:2:0:7::1/64", "dev", "nr0", "nodad"], netns=ns)
    res = rt.apply()
    assert res.added == 1 and rt.pending() == 0


def test_v6_multipath_add_replace_dump_delete(node):
    ns, driver = node
    rt = table(driver)
    rt.mark_in_sync()
    rt.set_routes("bgp", [Target("2001:2:0:30::/64", nexthops=(
        NextHop("2001:2:0:1::2", "nr0"), NextHop("2001:2:0:2::2", "nr2")))])
    res = rt.apply()
    assert res.added == 1 and not res.failed, res
    route = ours6(ns)["2001:2:0:30::/64"]
    assert sorted((h["gateway"], h["dev"]) for h in route["nexthops"]) == [
        ("2001:2:0:1::2", "nr0"), ("2001:2:0:2::2", "nr2")]
    rt.queue_resync()
    res = rt.apply()
    assert res.added == res.replaced == res.deleted == 0 and not res.failed
    rt.set_routes("bgp", [Target("2001:2:0:30::/64", nexthops=(
        NextHop("2001:2:0:1::3", "nr0"), NextHop("2001:2:0:2::2", "nr2")))])
    res = rt.apply()
    assert res.replaced == 1 and not res.failed
    route = ours6(ns)["2001:2:0:30::/64"]
    assert sorted(h["gateway"] for h in route["nexthops"]) == ["2001:2:0:1::3", "2001:2:0:2::2"]
    rt.queue_resync()
    assert rt.apply().replaced == 0
    rt.set_routes("bgp", [])
    assert rt.apply().deleted == 1 and ours6(ns) == {}


def test_20k_v6_routes_batched_round_trip(node):
    ns, driver = node
    prefixes = [f"2001:2:0:{i:x}::/64" for i in range(20_000)]
    rt = table(driver)
    rt.mark_in_sync()
    rt.set_routes("bgp", [Target(p, gateway="2001:2:0:1::12", ifname="nr0") for p in prefixes])
    res = rt.apply()
    assert res.added == 20_000 and not res.failed
    out = sh(["ip", "-6", "route", "show", "proto", str(OURS)], netns=ns).stdout
    assert out.count("\n") == 20_000
    rt.queue_resync()
    res = rt.apply()
    assert res.resynced and res.added == res.replaced == res.deleted == 0
    rt.set_routes("bgp", [])
    res = rt.apply()
    assert res.deleted == 20_000 and not res.failed and ours6(ns) == {}


def test_family_mismatch_is_refused_naming_the_route(node):
    _, driver = node
    rt = table(driver)
    with pytest.raises(RouteTableError, match="2001:2:0:19::/122.*IPv6"):
        rt.set_routes("bgp", [Target("2001:2:0:19::/122", gateway="198.18.1.12")])
    with pytest.raises(RouteTableError, match="198.19.0.0/26.*IPv4"):
        rt.set_routes("bgp", [Target("198.19.0.0/26", gateway="2001:2:0:1::12")])
    with pytest.raises(RouteTableError, match="host bits"):
        rt.set_routes("bgp", [Target("2001:2:0:19::1/122", type="blackhole")])
    # A template shared by IPv4 and IPv6 destinations: the gateway decides.
    with pytest.raises(RouteTableError, match="2001:2:0:19::/122"):
        rt.update_many("bgp", ["198.19.0.0/26", "2001:2:0:19::/122"],
                       Target("", gateway="198.18.1.12"))
