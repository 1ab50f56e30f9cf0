"""The calculator's decisions, from snapshots to desired routes and announcements."""

import pytest

from bgpd.calculator import BlockView, Inputs, LearnedRoute, PoolView, Workload, calculate
from bgpd.node_registry import NodeInfo, RegistryError, mesh_peers
from felix_like.routetable import Target

A1 = NodeInfo("node-a1", "198.18.1.11", "198.18.1.0/24", 64601, vtep_address="198.19.255.1",
              vtep_mac="02:00:00:00:00:a1")
A2 = NodeInfo("node-a2", "198.18.1.12", "198.18.1.0/24", 64601, vtep_address="198.19.255.2",
              vtep_mac="02:00:00:00:00:a2")
B1 = NodeInfo("node-b1", "198.18.2.11", "198.18.2.0/24", 64602, vtep_address="198.19.255.3",
              vtep_mac="02:00:00:00:00:b1")
NODES = {n.name: n for n in (A1, A2, B1)}


def inputs(**kw):
    base = dict(own=A1, uplink="eth0", nodes=NODES,
                pools=(PoolView("198.19.0.0/16", vxlan_mode="CrossSubnet"),),
                blocks=(BlockView("198.19.1.0/26", "node-a1", True),
                        BlockView("198.19.1.64/26", "node-a1", False),
                        BlockView("198.19.2.0/26", "node-a2", True),
                        BlockView("198.19.3.0/26", "node-b1", True)))
    base.update(kw)
    return Inputs(**base)


def test_own_confirmed_blocks_get_blackholes_and_are_announced_pending_ones_not():
    d = calculate(inputs())
    assert d.routes["blackhole"] == (Target("198.19.1.0/26", type="blackhole"),)
    assert d.announce == frozenset({"198.19.1.0/26"})


def test_borrowed_addresses_are_announced_as_host_routes():
    d = calculate(inputs(borrowed=("198.19.3.7",)))
    assert "198.19.3.7/32" in d.announce


def test_workloads_get_host_routes_via_their_veth():
    d = calculate(inputs(workloads=(Workload("198.19.1.5", "nrwabc"),)))
    assert d.routes["workload"] == (Target("198.19.1.5/32", ifname="nrwabc"),)


def test_crosssubnet_vxlan_same_subnet_is_direct_other_subnet_is_vxlan():
    learned = (LearnedRoute("198.19.2.0/26", ("198.18.1.12",)),
               LearnedRoute("198.19.3.0/26", ("198.18.2.11",)))
    d = calculate(inputs(learned=learned))
    assert d.routes["remote"] == (
        Target("198.19.2.0/26", gateway="198.18.1.12", ifname="eth0"),
        Target("198.19.3.0/26", gateway="198.19.255.3", ifname="vxlan.nr", onlink=True))
    assert [v.underlay for v in d.vteps] == ["198.18.2.11"]
    assert d.need_vxlan and not d.need_ipip


def test_crosssubnet_ipip_uses_tunl0_onlink():
    d = calculate(inputs(pools=(PoolView("198.19.0.0/16", ipip_mode="CrossSubnet"),),
                         learned=(LearnedRoute("198.19.3.0/26", ("198.18.2.11",)),)))
    assert d.routes["remote"] == (Target("198.19.3.0/26", gateway="198.18.2.11",
                                         ifname="tunl0", onlink=True),)
    assert d.need_ipip and not d.vteps


def test_always_encapsulates_even_on_the_same_subnet_and_never_does_not():
    learned = (LearnedRoute("198.19.2.0/26", ("198.18.1.12",)),)
    always = calculate(inputs(pools=(PoolView("198.19.0.0/16", ipip_mode="Always"),),
                              learned=learned))
    assert always.routes["remote"][0].ifname == "tunl0"
    never = calculate(inputs(pools=(PoolView("198.19.0.0/16"),), learned=learned))
    assert never.routes["remote"][0] == Target("198.19.2.0/26", gateway="198.18.1.12",
                                               ifname="eth0")


def test_route_via_a_tor_is_plain_routing():
    d = calculate(inputs(learned=(LearnedRoute("198.19.3.0/26", ("198.18.1.1",)),
                                  LearnedRoute("0.0.0.0/0", ("198.18.1.1",)))))
    assert d.routes["remote"] == (Target("0.0.0.0/0", gateway="198.18.1.1", ifname="eth0"),
                                  Target("198.19.3.0/26", gateway="198.18.1.1", ifname="eth0"))


def test_vxlan_without_a_known_vtep_stays_pending_instead_of_half_routed():
    b1_no_vtep = NodeInfo("node-b1", "198.18.2.11", "198.18.2.0/24", 64602)
    d = calculate(inputs(nodes={**NODES, "node-b1": b1_no_vtep},
                         learned=(LearnedRoute("198.19.3.0/26", ("198.18.2.11",)),)))
    assert d.routes["remote"] == ()
    assert d.pending and d.pending[0][0] == "198.19.3.0/26"


def test_a_learned_route_inside_our_own_block_is_never_installed():
    d = calculate(inputs(learned=(LearnedRoute("198.19.1.8/32", ("198.18.2.11",)),)))
    assert d.routes["remote"] == ()


def test_mesh_peers_one_side_dials_the_higher_address_is_passive():
    peers = {p.name: p for p in mesh_peers(A2, NODES.values())}
    assert set(peers) == {"node-a1", "node-b1"}
    assert peers["node-a1"].passive is True     # .12 > .11: a2 waits for a1
    assert peers["node-b1"].passive is False    # .12 < 2.11: a2 dials b1
    assert calculate(inputs(mesh=False)).mesh_peers == ()


def test_node_record_round_trip_and_validation():
    assert NodeInfo.from_json(A1.to_json()) == A1
    with pytest.raises(RegistryError, match="not in subnet"):
        NodeInfo("node-x", "198.18.3.1", "198.18.1.0/24", 64601)
    with pytest.raises(RegistryError, match="bad node record"):
        NodeInfo.from_json(b"{not json")
