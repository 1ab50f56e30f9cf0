"""tunnels/ against real netlink in throwaway namespaces."""

from __future__ import annotations

import json

import pytest
from pyroute2 import IPRoute

from felix_like.managers import CLASS_ORDER, Dataplane, RemoteBlock, RemoteNode
from felix_like.routetable import KernelRouteDriver, RouteTable
from lab.netns import sh
from tunnels.devices import (
    VxlanParams,
    ensure_ipip,
    ensure_vxlan,
    probe_kind,
    sync_vxlan_peers,
)
from tunnels.encap import EncapMode, LocalUnderlay, PoolEncap, Vtep
from tunnels.errors import TunnelUnsupported

pytestmark = pytest.mark.kernel


@pytest.fixture
def ipr(netns):
    sh(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], netns=netns)
    for d in ("eth0", "eth0p"):
        sh(["ip", "link", "set", d, "up"], netns=netns)
    sh(["ip", "addr", "add", "198.18.1.11/24", "dev", "eth0"], netns=netns)
    with IPRoute(netns=netns, flags=0, groups=0) as ipr:
        yield netns, ipr


def link_json(netns: str, name: str) -> dict:
    return json.loads(sh(["ip", "-d", "-j", "link", "show", name], netns=netns).stdout)[0]


def test_vxlan_ensure_create_noop_patch_recreate(ipr):
    ns, ip = ipr
    p = VxlanParams(local="198.18.1.11", mtu=1450, address="198.19.1.1", mac="66:00:00:00:00:a1")
    r = ensure_vxlan(ip, p)
    assert r.created and not r.recreated
    info = link_json(ns, "vxlan.nr")
    data = info["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["local"], data["learning"]) == (4096, 4789,
                                                                           "198.18.1.11", False)
    assert info["mtu"] == 1450 and info["address"] == "66:00:00:00:00:a1"
    assert "UP" in info["flags"]
    assert ensure_vxlan(ip, p).changed == ()             # nothing differs: nothing done
    r = ensure_vxlan(ip, VxlanParams(local="198.18.1.11", mtu=1400, address="198.19.1.1",
                                     mac="66:00:00:00:00:a1"))
    assert r.changed == ("mtu 1450->1400",) and not r.created  # patched in place
    index = r.index
    r = ensure_vxlan(ip, VxlanParams(vni=7, local="198.18.1.11", mtu=1400,
                                     address="198.19.1.1"))
    assert r.recreated and r.index != index              # VNI differs: incompatible
    assert link_json(ns, "vxlan.nr")["linkinfo"]["info_data"]["id"] == 7
    addrs = sh(["ip", "-j", "-4", "addr", "show", "vxlan.nr"], netns=ns).stdout
    assert [a["local"] for a in json.loads(addrs)[0]["addr_info"]] == ["198.19.1.1"]


def test_vxlan_device_made_by_someone_else_is_adopted(ipr):
    ns, ip = ipr
    sh(["ip", "link", "add", "vxlan.nr", "type", "vxlan", "id", "4096", "dstport", "4789",
        "local", "198.18.1.11", "nolearning"], netns=ns)
    r = ensure_vxlan(ip, VxlanParams(local="198.18.1.11", mtu=1450, address="198.19.1.1"))
    assert not r.created and not r.recreated and "up" in r.changed


def test_vtep_neighbours_and_fdb(ipr):
    ns, ip = ipr
    ensure_vxlan(ip, VxlanParams(local="198.18.1.11"))
    peers = [Vtep("198.19.2.1", "66:00:00:00:00:a2", "198.18.1.12"),
             Vtep("198.19.3.1", "66:00:00:00:00:b1", "198.18.2.11")]
    assert sync_vxlan_peers(ip, peers) == {"neigh_set": 2, "neigh_del": 0, "fdb_set": 2,
                                           "fdb_del": 0}
    assert sync_vxlan_peers(ip, peers) == {"neigh_set": 0, "neigh_del": 0, "fdb_set": 0,
                                           "fdb_del": 0}
    fdb = sh(["bridge", "fdb", "show", "dev", "vxlan.nr"], netns=ns).stdout
    assert "66:00:00:00:00:b1 dst 198.18.2.11" in fdb
    neigh = sh(["ip", "neigh", "show", "dev", "vxlan.nr"], netns=ns).stdout
    assert "198.19.3.1 lladdr 66:00:00:00:00:b1 PERMANENT" in neigh
    sync_vxlan_peers(ip, peers[:1])
    assert "66:00:00:00:00:b1" not in sh(["bridge", "fdb", "show", "dev", "vxlan.nr"],
                                         netns=ns).stdout
    assert "198.19.3.1" not in sh(["ip", "neigh", "show", "dev", "vxlan.nr"], netns=ns).stdout


def test_crosssubnet_route_forms_in_the_kernel(ipr):
    ns, ip = ipr
    routes = RouteTable(KernelRouteDriver(netns=ns, ipr=ip), protocol=73,
                        class_order=CLASS_ORDER)
    dp = Dataplane.create(ip, routes, LocalUnderlay("eth0", ("198.18.1.11/24",)), netns=ns)
    dp.tunnels.on_vxlan_update(VxlanParams(local="198.18.1.11", mtu=1450, address="198.19.1.1"))
    dp.remote.on_pool_update("198.19.0.0/16", PoolEncap(vxlan=EncapMode.CROSS_SUBNET))
    dp.remote.on_node_update(RemoteNode("a2", "198.18.1.12",
                                        Vtep("198.19.2.1", "66:00:00:00:00:a2", "198.18.1.12")))
    dp.remote.on_node_update(RemoteNode("b1", "198.18.2.11",
                                        Vtep("198.19.3.1", "66:00:00:00:00:b1", "198.18.2.11")))
    dp.remote.on_block_update(RemoteBlock("198.19.2.0/26", "a2"))
    dp.remote.on_block_update(RemoteBlock("198.19.3.0/26", "b1"))
    routes.mark_in_sync()
    try:
        res = dp.apply()
    finally:
        routes.driver.rsock.close()
    assert not res.failed and res.added == 2
    got = {r["dst"]: r for r in json.loads(
        sh(["ip", "-j", "-4", "route", "show", "proto", "73"], netns=ns).stdout)}
    assert (got["198.19.2.0/26"]["gateway"], got["198.19.2.0/26"]["dev"]) == ("198.18.1.12",
                                                                              "eth0")
    assert (got["198.19.3.0/26"]["gateway"], got["198.19.3.0/26"]["dev"]) == ("198.19.3.1",
                                                                              "vxlan.nr")
    assert "onlink" in got["198.19.3.0/26"]["flags"]
    fdb = sh(["bridge", "fdb", "show", "dev", "vxlan.nr"], netns=ns).stdout
    # Every registered node's VTEP is programmed, also a same-subnet one that routes do not
    # use now: after a restart the routes return from BGP a moment after the registry, and
    # neighbour entries that live VXLAN traffic needs must not be flushed meanwhile.
    assert "66:00:00:00:00:b1 dst 198.18.2.11" in fdb
    assert "66:00:00:00:00:a2 dst 198.18.1.12" in fdb
    assert sh(["cat", "/proc/sys/net/ipv4/ip_forward"], netns=ns).stdout.strip() == "1"


def test_ipip_probe_is_explicit(ipr):
    """Where ipip exists (UML/QEMU kernels) tunl0 is ensured; where not, one clear error.

    This machine's kernel has no ipip module, so here the error path runs; the
    IPIP data path itself is tested in a User-Mode Linux kernel.
    """
    ns, ip = ipr
    try:
        probe_kind(ip, "ipip")
    except TunnelUnsupported as exc:
        msg = str(exc)
        assert "IPIP mode" in msg and "'ipip' kernel module" in msg and "modprobe ipip" in msg
        with pytest.raises(TunnelUnsupported):
            ensure_ipip(ip, 1480, "198.19.1.1")
        # The failed probe left nothing behind.
        names = [x["ifname"] for x in json.loads(sh(["ip", "-j", "link"], netns=ns).stdout)]
        assert not [n for n in names if n.startswith("nrprobe")]
        return
    r = ensure_ipip(ip, 1480, "198.19.1.1")
    info = link_json(ns, "tunl0")
    assert info["mtu"] == 1480 and info["linkinfo"]["info_kind"] == "ipip"
    assert ensure_ipip(ip, 1480, "198.19.1.1").changed == ()
    assert r.name == "tunl0"


def test_tunnel_manager_refuses_ipip_when_unsupported(ipr):
    ns, ip = ipr
    routes = RouteTable(KernelRouteDriver(netns=ns, ipr=ip), protocol=73)
    dp = Dataplane.create(ip, routes, LocalUnderlay("eth0", ("198.18.1.11/24",)), netns=ns)
    dp.tunnels.on_ipip_update(True, 1480, "198.19.1.1")
    try:
        probe_kind(ip, "ipip")
        supported = True
    except TunnelUnsupported:
        supported = False
    try:
        if supported:
            dp.apply()
            assert link_json(ns, "tunl0")["mtu"] == 1480
        else:
            with pytest.raises(TunnelUnsupported, match="IPIP"):
                dp.apply()
    finally:
        routes.driver.rsock.close()
