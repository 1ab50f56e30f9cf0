"""Pure decisions: encapsulation per pool, route forms, MTU, remote-route calculation, nft script."""

from __future__ import annotations

import pytest

from felix_like.managers import RemoteBlock, RemoteNode, compute_remote_routes
from felix_like.nat import NatError, remove_script, render
from felix_like.routetable import Target
from tunnels.encap import (
    Encap,
    EncapMode,
    LocalUnderlay,
    PoolEncap,
    Vtep,
    choose_encap,
    route_for_block,
    tunnel_mtu,
)
from tunnels.errors import TunnelError

LOCAL = LocalUnderlay("eth0", ("198.18.1.11/24",))
SAME = "198.18.1.12"
OTHER = "198.18.2.11"
VTEP = Vtep("198.19.3.0", "66:00:00:00:00:03", OTHER)

A, C, N = EncapMode.ALWAYS, EncapMode.CROSS_SUBNET, EncapMode.NEVER


@pytest.mark.parametrize(("ipip", "vxlan", "peer", "expected"), [
    (N, N, SAME, Encap.NONE), (N, N, OTHER, Encap.NONE),
    (A, N, SAME, Encap.IPIP), (A, N, OTHER, Encap.IPIP),
    (C, N, SAME, Encap.NONE), (C, N, OTHER, Encap.IPIP),
    (N, A, SAME, Encap.VXLAN), (N, A, OTHER, Encap.VXLAN),
    (N, C, SAME, Encap.NONE), (N, C, OTHER, Encap.VXLAN),
])
def test_encap_matrix(ipip, vxlan, peer, expected):
    assert choose_encap(PoolEncap(ipip, vxlan), LOCAL, peer) == expected


def test_both_modes_on_one_pool_is_refused():
    with pytest.raises(TunnelError, match="both IPIP"):
        PoolEncap(EncapMode.ALWAYS, EncapMode.CROSS_SUBNET)


def test_same_subnet_uses_any_local_subnet():
    two = LocalUnderlay("eth0", ("198.18.1.11/24", "198.18.5.1/30"))
    assert two.contains("198.18.5.2") and not two.contains("198.18.5.5")


def test_route_forms():
    d = route_for_block("198.19.2.0/26", PoolEncap(vxlan=C), LOCAL, SAME)
    assert (d.gateway, d.ifname, d.onlink, d.encap) == (SAME, "eth0", False, Encap.NONE)
    i = route_for_block("198.19.3.0/26", PoolEncap(ipip=C), LOCAL, OTHER)
    assert (i.gateway, i.ifname, i.onlink) == (OTHER, "tunl0", True)
    v = route_for_block("198.19.3.0/26", PoolEncap(vxlan=C), LOCAL, OTHER, VTEP)
    assert (v.gateway, v.ifname, v.onlink, v.vtep) == ("198.19.3.0", "vxlan.nr", True, VTEP)


def test_vxlan_without_vtep_is_pending_with_a_reason():
    with pytest.raises(TunnelError, match="VTEP"):
        route_for_block("198.19.3.0/26", PoolEncap(vxlan=A), LOCAL, OTHER, None)


def test_mtu():
    assert tunnel_mtu(Encap.IPIP, [1500, 9000]) == 1480
    assert tunnel_mtu(Encap.VXLAN, [1500, 1400]) == 1350
    assert tunnel_mtu(Encap.VXLAN, [1500], configured=1300) == 1300
    with pytest.raises(TunnelError):
        tunnel_mtu(Encap.VXLAN, [])


def test_compute_remote_routes_mixes_forms_and_reports_pending():
    pools = {"198.19.0.0/16": PoolEncap(vxlan=C)}
    nodes = {"a2": RemoteNode("a2", SAME, Vtep("198.19.2.0", "66:00:00:00:00:02", SAME)),
             "b1": RemoteNode("b1", OTHER, VTEP),
             "b2": RemoteNode("b2", "198.18.2.12")}  # no VTEP yet
    blocks = [RemoteBlock("198.19.2.0/26", "a2"), RemoteBlock("198.19.3.0/26", "b1"),
              RemoteBlock("198.19.4.0/26", "b2"), RemoteBlock("198.19.5.0/26", "gone")]
    rr = compute_remote_routes(pools, blocks, nodes, LOCAL, "vxlan.nr", "tunl0")
    assert rr.targets == (
        Target("198.19.2.0/26", gateway=SAME, ifname="eth0"),
        Target("198.19.3.0/26", gateway="198.19.3.0", ifname="vxlan.nr", onlink=True),
    )
    assert rr.vteps == (VTEP,)  # the same-subnet peer needs no FDB entry
    assert len(rr.pending) == 2


def test_nat_script_masquerades_pool_to_outside_all_pools():
    s = render("noderouter_nat", ["198.19.0.0/16", "198.18.128.0/17"], ["198.19.0.0/16"])
    assert "ip saddr @masq_pools ip daddr != @all_pools counter masquerade" in s
    assert "elements = { 198.18.128.0/17, 198.19.0.0/16 }" in s
    assert s.startswith("table ip noderouter_nat {}\ndelete table ip noderouter_nat\n")
    assert render("noderouter_nat", ["198.19.0.0/16"], []) == remove_script("noderouter_nat")


def test_nat_rejects_injection():
    with pytest.raises(NatError):
        render("x; flush ruleset", ["198.19.0.0/16"], ["198.19.0.0/16"])
    with pytest.raises(ValueError):
        render("t", ["198.19.0.0/16 }\nflush ruleset"], ["198.19.0.0/16"])


def test_remote_block_manager_drives_the_route_table():
    from felix_like.managers import CLASS_ORDER, RemoteBlockManager
    from felix_like.routetable import RouteTable
    from tests.dataplane.fakenetlink import FakeKernel, key, via

    k = FakeKernel(links={"lo": 1, "eth0": 2, "vxlan.nr": 5})
    rt = RouteTable(driver=k, protocol=73, class_order=CLASS_ORDER, clock=lambda: 0.0)
    m = RemoteBlockManager(rt, LOCAL)
    m.on_pool_update("198.19.0.0/16", PoolEncap(vxlan=C))
    m.on_node_update(RemoteNode("a2", SAME))
    m.on_node_update(RemoteNode("b1", OTHER, VTEP))
    m.on_block_update(RemoteBlock("198.19.2.0/26", "a2"))
    m.on_block_update(RemoteBlock("198.19.3.0/26", "b1"))
    assert k.routes == {}  # on_* only records
    m.complete_deferred_work()
    rt.apply()
    assert k.of_protocol(73) == {key("198.19.2.0/26"): via(SAME, 2),
                                 key("198.19.3.0/26"): via("198.19.3.0", 5, onlink=True)}
    assert m.vteps == (VTEP,)
    # The pool switches to Always: the same-subnet block moves onto VXLAN too,
    # which needs a2's VTEP; without it the block has no route (a route given up during
    # this run goes at once, in sync or not -- only read-back routes wait).
    m.on_pool_update("198.19.0.0/16", PoolEncap(vxlan=A))
    m.complete_deferred_work()
    res = rt.apply()
    assert res.deleted == 1 and key("198.19.2.0/26") not in k.routes
    m.on_node_update(RemoteNode("a2", SAME, Vtep("198.19.2.1", "66:00:00:00:00:a2", SAME)))
    m.complete_deferred_work()
    rt.apply()
    assert k.of_protocol(73)[key("198.19.2.0/26")] == via("198.19.2.1", 5, onlink=True)
    # A node leaves and the sources are in sync: its block's route goes.
    m.on_block_remove("198.19.3.0/26")
    m.on_node_remove("b1")
    m.complete_deferred_work()
    rt.mark_in_sync()
    assert rt.apply().deleted == 1 and key("198.19.3.0/26") not in k.routes
