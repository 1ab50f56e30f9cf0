"""The calculator's decisions, from snapshots to what the managers and the speaker get."""

import ipaddress

import pytest

from bgpd.node.calculator import (
    BlockView,
    Inputs,
    PoolView,
    Workload,
    calculate,
    learned_context,
    tunnel_pools,
)
from bgpd.node.registry import NodeInfo, RegistryError, mesh_peers
from felix_like.classify import classify
from felix_like.routetable import Target
from felix_like.updates import (
    OwnBlocksUpdate,
    PoolsUpdate,
    RemoteBlock,
    RemoteNode,
    RemoteNodesUpdate,
    WorkloadEndpoint,
    WorkloadsUpdate,
)
from tunnels.encap import EncapMode, Vtep

A1 = NodeInfo("node-a1", "198.18.1.11", "198.18.1.0/24", 64601, vtep_address="198.19.255.1",
              vtep_mac="02:00:00:00:00:a1")
A2 = NodeInfo("node-a2", "198.18.1.12", "198.18.1.0/24", 64601, vtep_address="198.19.255.2",
              vtep_mac="02:00:00:00:00:a2")
B1 = NodeInfo("node-b1", "198.18.2.11", "198.18.2.0/24", 64602)
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


def learned(routes, **kw):
    """What each learned (prefix, next hops) becomes in the context ``calculate`` gives
    the learned-routes manager: (remote blocks, plain routes, pending), each sorted."""
    ctx = learned_context(inputs(**kw))
    out = {p: classify(p, hops, ctx) for p, hops in routes}
    key = lambda p: ipaddress.IPv4Network(p)  # noqa: E731
    return (tuple(out[p] for p in sorted(out, key=key) if isinstance(out[p], RemoteBlock)),
            tuple(out[p] for p in sorted(out, key=key) if isinstance(out[p], Target)),
            tuple((p, out[p]) for p in sorted(out, key=key) if isinstance(out[p], str)))


def test_own_confirmed_blocks_are_owned_and_announced_pending_ones_not():
    d = calculate(inputs())
    assert d.own_blocks == ("198.19.1.0/26",)
    assert d.announce == frozenset({"198.19.1.0/26"})


def test_borrowed_addresses_are_announced_as_host_routes():
    d = calculate(inputs(borrowed=("198.19.3.7",)))
    assert "198.19.3.7/32" in d.announce


def test_workloads_become_endpoints_for_the_workload_manager():
    d = calculate(inputs(workloads=(Workload("c1", "198.19.1.5", "nrwabc"),)))
    assert d.workloads == (WorkloadEndpoint("c1", "nrwabc", ("198.19.1.5",)),)


def test_routes_learned_from_nodes_are_remote_blocks_the_rest_plain_routes():
    remote, plain, _ = learned((("198.19.2.0/26", ("198.18.1.12",)),
                                ("198.19.3.0/26", ("198.18.2.11",)),
                                ("198.19.9.0/26", ("198.18.1.1",)),      # via the ToR
                                ("0.0.0.0/0", ("198.18.1.1",))))
    assert remote == (RemoteBlock("198.19.2.0/26", "node-a2"),
                      RemoteBlock("198.19.3.0/26", "node-b1"))
    assert plain == (Target("0.0.0.0/0", gateway="198.18.1.1", ifname="eth0"),
                     Target("198.19.9.0/26", gateway="198.18.1.1", ifname="eth0"))
    assert calculate(inputs()).pool_encaps["198.19.0.0/16"].vxlan == EncapMode.CROSS_SUBNET


def test_remote_nodes_carry_their_vtep_from_the_registry():
    d = calculate(inputs())
    nodes = {n.name: n for n in d.remote_nodes}
    assert set(nodes) == {"node-a2", "node-b1"}
    assert nodes["node-a2"] == RemoteNode("node-a2", "198.18.1.12",
                                          Vtep("198.19.255.2", "02:00:00:00:00:a2", "198.18.1.12"))
    assert nodes["node-b1"].vtep is None


def test_learned_route_off_our_subnet_has_no_device():
    _, plain, _ = learned((("198.19.9.0/26", ("198.18.7.1",)),))
    assert plain == (Target("198.19.9.0/26", gateway="198.18.7.1"),)


def test_tunnel_devices_follow_the_active_pools():
    assert tunnel_pools(inputs().pools) == ("198.19.0.0/16", None)
    assert tunnel_pools((PoolView("198.19.0.0/16", ipip_mode="Always"),)) == (
        None, "198.19.0.0/16")
    assert tunnel_pools((PoolView("198.19.0.0/16", vxlan_mode="Always", disabled=True),
                         PoolView("198.18.128.0/20", vxlan_mode="Always"))) == (
        "198.18.128.0/20", None)
    assert tunnel_pools((PoolView("198.19.0.0/16", vxlan_mode="Always",
                                  disabled=True),)) == (None, None)


def test_a_learned_route_inside_our_own_block_is_never_installed():
    assert learned((("198.19.1.8/32", ("198.18.2.11",)),)) == (
        (), (), (("198.19.1.8/32", "inside one of our own blocks"),))


def test_mesh_peers_one_side_dials_the_higher_address_is_passive():
    peers = {p.name: p for p in mesh_peers(A2, NODES.values())}
    assert set(peers) == {"node-a1", "node-b1"}
    assert peers["node-a1"].passive is True     # .12 > .11: a2 waits for a1
    assert peers["node-b1"].passive is False    # .12 < 2.11: a2 dials b1
    assert calculate(inputs(mesh=False)).mesh_peers == ()


def test_nat_pools():
    d = calculate(inputs(pools=(PoolView("198.19.0.0/16", nat_outgoing=True),
                                PoolView("198.18.128.0/20"))))
    assert d.nat_pools == ("198.19.0.0/16",)
    assert d.all_pools == ("198.19.0.0/16", "198.18.128.0/20")


def test_node_record_round_trip_and_validation():
    assert NodeInfo.from_json(A1.to_json()) == A1
    with pytest.raises(RegistryError, match="not in subnet"):
        NodeInfo("node-x", "198.18.3.1", "198.18.1.0/24", 64601)
    with pytest.raises(RegistryError, match="bad node record"):
        NodeInfo.from_json(b"{not json")


def test_equal_paths_via_two_tors_become_one_ecmp_route_with_sorted_hops():
    from felix_like.routetable import NextHop

    remote, plain, _ = learned((("198.19.9.0/26", ("198.18.1.2", "198.18.1.1")),
                                ("198.19.10.0/26", ("198.18.7.1", "198.18.1.2")),  # off-subnet
                                ("0.0.0.0/0", ("198.18.1.1",))))
    assert remote == ()
    assert plain == (
        Target("0.0.0.0/0", gateway="198.18.1.1", ifname="eth0"),
        Target("198.19.9.0/26", nexthops=(NextHop("198.18.1.1", "eth0"),
                                          NextHop("198.18.1.2", "eth0"))),
        Target("198.19.10.0/26", nexthops=(NextHop("198.18.1.2", "eth0"),
                                           NextHop("198.18.7.1", None))))
    # The order the RIB lists the hops in does not matter: every node decides the same.
    _, again, _ = learned((("198.19.9.0/26", ("198.18.1.1", "198.18.1.2")),))
    assert again == (plain[1],)


def test_a_block_learned_from_nodes_keeps_one_next_hop():
    # Two nodes announce one block (affinity moving) / a ToR re-announces it: one owner,
    # the lowest node address, never an ECMP route across nodes or via the ToR.
    remote, plain, _ = learned((("198.19.3.0/26", ("198.18.2.11", "198.18.1.12")),
                                ("198.19.2.0/26", ("198.18.1.1", "198.18.1.12"))))
    assert remote == (RemoteBlock("198.19.2.0/26", "node-a2"),
                      RemoteBlock("198.19.3.0/26", "node-a2"))
    assert plain == ()



def test_desired_state_reaches_the_dataplane_as_typed_updates():
    d = calculate(inputs(workloads=(Workload("c1", "198.19.1.5", "nrwabc"),),
                         pools=(PoolView("198.19.0.0/16", vxlan_mode="CrossSubnet",
                                         nat_outgoing=True),)))
    own, workloads, pools, nodes = d.dataplane_updates()
    assert own == OwnBlocksUpdate(("198.19.1.0/26",))
    assert workloads == WorkloadsUpdate((WorkloadEndpoint("c1", "nrwabc", ("198.19.1.5",)),))
    assert pools.all_pools == pools.nat_pools == ("198.19.0.0/16",)
    assert pools.encaps["198.19.0.0/16"].vxlan == EncapMode.CROSS_SUBNET
    assert isinstance(pools, PoolsUpdate) and isinstance(nodes, RemoteNodesUpdate)
    assert [n.name for n in nodes.nodes] == ["node-a2", "node-b1"]
