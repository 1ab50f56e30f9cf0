"""Dual-stack config reaching the node (issue 15): the registry records the node's IPv6
underlay address, the speaker is handed only what it serves (IPv4) while the config's
IPv6 peers are reported, and the tunnel devices keep IPv4 addresses. Pure."""

from __future__ import annotations

import json

import pytest

from bgpd.node.calculator import PoolView, tunnel_pools
from bgpd.node.peering import import_policy, speaker_config, unserved_ipv6
from bgpd.node.registry import NodeInfo, RegistryError
from config import load_text

BASE = """\
node:
  name: node-a1
underlay:
  interface: eth0
  address: 198.18.1.11
  subnet: 198.18.1.0/24
  ipv6_address: 2001:2:0:1::11
  ipv6_subnet: 2001:2:0:1::/64
etcd:
  endpoints: [198.18.0.10:2379]
bgp:
  peers:
    - {address: 198.18.1.1, as_number: 65001, import_allow: [0.0.0.0/0, '::/0']}
    - {address: 2001:2:0:1::1, as_number: 65001}
pools:
  - cidr: 198.19.0.0/16
  - cidr: 2001:2:0:19::/64
    vxlan_mode: Always
"""


def test_node_record_carries_the_ipv6_underlay_and_reads_old_records():
    n = NodeInfo("node-a1", "198.18.1.11", "198.18.1.0/24", 64601,
                 ipv6_address="2001:2:0:1::11", ipv6_subnet="2001:2:0:1::/64")
    back = NodeInfo.from_json(n.to_json())
    assert back == n and back.ipv6_address == "2001:2:0:1::11"
    assert json.loads(n.to_json())["ipv6_subnet"] == "2001:2:0:1::/64"
    # A record written by an IPv4-only daemon has no IPv6 keys: still valid, no IPv6.
    old = NodeInfo.from_json(b'{"name": "node-b1", "address": "198.18.2.11", '
                             b'"subnet": "198.18.2.0/24", "as_number": 64602}')
    assert old.ipv6_address is None and old.ipv6_subnet is None


@pytest.mark.parametrize("addr,subnet,msg", [
    ("2001:2:0:1::11", None, "go together"),
    ("2001:2:0:2::11", "2001:2:0:1::/64", "IPv6 address 2001:2:0:2::11 is not in subnet 2001:2:0:1::/64"),
    ("fe80::11", "fe80::/64", "not a global unicast address"),
    ("198.18.1.11", "2001:2:0:1::/64", "node node-a1"),
])
def test_bad_ipv6_node_record_is_refused_naming_node_and_field(addr, subnet, msg):
    with pytest.raises(RegistryError, match=msg):
        NodeInfo("node-a1", "198.18.1.11", "198.18.1.0/24", 64601, ipv6_address=addr,
                 ipv6_subnet=subnet)


def test_speaker_gets_the_ipv4_peers_and_filters_and_the_rest_is_reported():
    cfg = load_text(BASE, environ={})
    sc = speaker_config(cfg)
    assert [p.address for p in sc.peers] == ["198.18.1.1"]
    assert [f.network for f in sc.peers[0].allowed] == ["0.0.0.0/0"]
    assert unserved_ipv6(cfg) == ("peer 2001:2:0:1::1", "import_allow ::/0 of peer 198.18.1.1")
    # The import policy is built (IPv4 arithmetic) with IPv6 pools and blocks around.
    pol = import_policy(cfg, ("198.19.0.0/16", "2001:2:0:19::/64"),
                        frozenset({"198.19.1.0/26", "2001:2:0:19::/122"}), sc)
    assert pol.pools == ("198.19.0.0/16",) and pol.own_blocks == frozenset({"198.19.1.0/26"})
    assert import_policy(cfg, (), frozenset(), sc).pools == ("198.19.0.0/16",)


def test_tunnel_devices_take_ipv4_pools_only():
    pools = (PoolView("2001:2:0:19::/64", vxlan_mode="Always"),
             PoolView("198.19.0.0/16", vxlan_mode="CrossSubnet"))
    assert tunnel_pools(pools) == ("198.19.0.0/16", None)
    assert tunnel_pools(pools[:1]) == (None, None)


def test_own_v6_blocks_get_blackholes_and_are_not_announced_over_ipv4():
    from bgpd.node.calculator import BlockView, Inputs, Workload, calculate, learned_context
    from felix_like.classify import OWN_BLOCK_REASON, classify
    from felix_like.managers import BlackholeManager
    from felix_like.routetable import RouteTable
    from felix_like.updates import OwnBlocksUpdate
    from tests.dataplane.fakenetlink import FakeKernel

    a1 = NodeInfo("node-a1", "198.18.1.11", "198.18.1.0/24", 64601,
                  ipv6_address="2001:2:0:1::11", ipv6_subnet="2001:2:0:1::/64")
    inp = Inputs(own=a1, uplink="eth0", nodes={"node-a1": a1},
                 pools=(PoolView("198.19.0.0/16"), PoolView("2001:2:0:19::/64")),
                 blocks=(BlockView("2001:2:0:19::40/122", "node-a1", True),
                         BlockView("198.19.1.0/26", "node-a1", True),
                         BlockView("2001:2:0:19::/122", "node-a1", True)),
                 workloads=(Workload("p6", "2001:2:0:19::41", "nrw1"),
                            Workload("p4", "198.19.1.5", "nrw2")),
                 borrowed=("2001:2:0:19::85", "198.19.3.7"))
    d = calculate(inp)
    assert d.own_blocks == ("198.19.1.0/26", "2001:2:0:19::/122", "2001:2:0:19::40/122")
    assert [w.addresses for w in d.workloads] == [("198.19.1.5",), ("2001:2:0:19::41",)]
    assert d.announce == frozenset({"198.19.1.0/26", "198.19.3.7/32"})
    # Learned routes: a /128 inside our own IPv6 block is ours, not routed; the IPv4
    # range checks do not mistake an IPv6 prefix for an IPv4 one.
    ctx = learned_context(inp)
    assert classify("2001:2:0:19::45/128", ("198.18.1.1",), ctx) == OWN_BLOCK_REASON
    assert classify("::c613:105/128", ("198.18.1.1",), ctx) != OWN_BLOCK_REASON
    # ... and the blackhole manager blackholes every own block, both families.
    kernel = FakeKernel()
    rt = RouteTable(driver=kernel, protocol=73)
    bm = BlackholeManager(rt)
    bm.on_update(OwnBlocksUpdate(d.own_blocks))
    bm.complete_deferred_work()
    assert rt.apply().added == 3
    assert sorted(t.dst for t in rt.desired_targets("blackhole")) == [
        "198.19.1.0/26", "2001:2:0:19::/122", "2001:2:0:19::40/122"]


def test_a_dual_stack_pod_gets_its_ipv6_host_route_from_the_node_too():
    """The CNI adds a dual-stack pod's /128 under our protocol; the node must desire it as
    well, or its reconciler would delete it as a route of ours nobody wants (issue 15)."""
    import socket

    from bgpd.node.calculator import Workload, calculate
    from felix_like.managers import CLASS_ORDER, WorkloadManager
    from felix_like.routetable import RouteTable
    from felix_like.sysctls import Sysctls
    from felix_like.updates import WorkloadEndpoint, WorkloadsUpdate
    from tests.dataplane.fakenetlink import FakeKernel, dev
    from tests.node.test_calculator import inputs

    pod = Workload("c1", "198.19.1.5", "nrwabc", ip6="2001:2:0:19::5")
    d = calculate(inputs(workloads=(pod,)))
    assert d.workloads == (WorkloadEndpoint("c1", "nrwabc", ("198.19.1.5", "2001:2:0:19::5")),)
    assert calculate(inputs(workloads=(Workload("c2", "198.19.1.6", "nrwdef"),))).workloads \
        == (WorkloadEndpoint("c2", "nrwdef", ("198.19.1.6",)),)   # IPv4-only: unchanged

    class RecordingSysctls(Sysctls):  # never /proc/sys of this (the root) namespace
        def set(self, key, value):
            return True

    k = FakeKernel(links={"lo": 1, "nrwabc": 7})
    rt = RouteTable(driver=k, protocol=73, class_order=CLASS_ORDER, clock=lambda: 0.0)
    m = WorkloadManager(rt, RecordingSysctls(netns="unused"))
    m.on_update(WorkloadsUpdate(d.workloads))
    m.complete_deferred_work()
    rt.apply()
    got = {(socket.inet_ntop(socket.AF_INET6 if len(dst) == 16 else socket.AF_INET, dst), plen):
           form for (_t, dst, plen, _m), form in k.of_protocol(73).items()}
    assert got == {("198.19.1.5", 32): dev(7), ("2001:2:0:19::5", 128): dev(7)}
