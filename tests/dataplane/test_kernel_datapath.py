"""Data path: nodes and pods in namespaces, programmed only by our Dataplane.

Topology (all addresses in 198.18.0.0/15; everything inside throwaway namespaces)::

   pod pa1 198.19.1.2      pod pa2 198.19.2.2          pod pb1 198.19.3.2
      |                       |                            |
   node a1 198.18.1.11     node a2 198.18.1.12         node b1 198.18.2.11
      \\______ bridge in router r (198.18.1.1) ___/          |
                             r ------ 198.18.2.1 ----------/

Pool 198.19.0.0/16, VXLAN CrossSubnet: a1<->a2 routes go direct, a<->b through
VXLAN. nft counters prove it: same-subnet pod traffic arrives at a2 as plain
ICMP (no UDP 4789), cross-subnet traffic crosses r only as UDP 4789 (no packet
with a pod source address is forwarded by r).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from felix_like.managers import CLASS_ORDER, Dataplane
from felix_like.nat import NatOutgoing
from felix_like.routetable import KernelRouteDriver, RouteTable
from felix_like.updates import (
    OwnBlocksUpdate,
    RemoteBlock,
    RemoteNode,
    WorkloadEndpoint,
    WorkloadsUpdate,
)
from lab.netns import run_prefix, sh, sysctl, veth_pair
from tunnels.devices import VxlanParams
from tunnels.encap import EncapMode, LocalUnderlay, PoolEncap, Vtep

pytestmark = pytest.mark.kernel

OURS = 73
POOL = "198.19.0.0/16"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    underlay: str      # address/prefix
    router: str        # the rack router address
    block: str
    vtep_addr: str
    vtep_mac: str
    pod_addr: str


NODES = [
    NodeSpec("a1", "198.18.1.11/24", "198.18.1.1", "198.19.1.0/26", "198.19.1.1",
             "66:00:00:00:00:a1", "198.19.1.2"),
    NodeSpec("a2", "198.18.1.12/24", "198.18.1.1", "198.19.2.0/26", "198.19.2.1",
             "66:00:00:00:00:a2", "198.19.2.2"),
    NodeSpec("b1", "198.18.2.11/24", "198.18.2.1", "198.19.3.0/26", "198.19.3.1",
             "66:00:00:00:00:b1", "198.19.3.2"),
]


def addr(spec: NodeSpec) -> str:
    return spec.underlay.split("/")[0]


def counters(netns: str, table: str) -> dict[str, int]:
    text = sh(["nft", "list", "table", "ip", table], netns=netns).stdout
    return {m.group(2): int(m.group(1))
            for m in re.finditer(r'counter packets (\d+) bytes \d+ comment "([a-z0-9-]+)"', text)}


def ping(netns: str, dst: str) -> bool:
    return sh(["ping", "-c", "3", "-i", "0.2", "-W", "2", dst], netns=netns,
              check=False).returncode == 0


def make_pod(netns_set, prefix: str, node_ns: str, host_if: str, pod_addr: str) -> str:
    pod = netns_set.add(f"{prefix}-p{host_if[-2:]}")
    veth_pair("eth0", pod, host_if, node_ns)
    sh(["ip", "addr", "add", f"{pod_addr}/32", "dev", "eth0"], netns=pod)
    # No gateway address: the pod ARPs for every destination and the host
    # veth answers by proxy ARP (what WorkloadManager switches on).
    sh(["ip", "route", "add", "default", "dev", "eth0"], netns=pod)
    return pod


def node_dataplane(ns: str, spec: NodeSpec, ipr: IPRoute) -> Dataplane:
    routes = RouteTable(KernelRouteDriver(netns=ns, ipr=ipr), protocol=OURS,
                        class_order=CLASS_ORDER)
    dp = Dataplane.create(ipr, routes, LocalUnderlay("eth0", (spec.underlay,)), netns=ns)
    dp.tunnels.on_vxlan_update(VxlanParams(local=addr(spec), mtu=1450,
                                           address=spec.vtep_addr, mac=spec.vtep_mac))
    dp.remote.on_pool_update(POOL, PoolEncap(vxlan=EncapMode.CROSS_SUBNET))
    for other in NODES:
        if other is spec:
            continue
        dp.remote.on_node_update(RemoteNode(other.name, addr(other),
                                            Vtep(other.vtep_addr, other.vtep_mac, addr(other))))
        dp.remote.on_block_update(RemoteBlock(other.block, other.name))
    dp.on_update(OwnBlocksUpdate((spec.block,)))
    dp.on_update(WorkloadsUpdate((WorkloadEndpoint(f"pod-{spec.name}", f"nrw{spec.name}",
                                                   (spec.pod_addr,)),)))
    routes.mark_in_sync()
    return dp


@pytest.fixture
def lab(netns_set):
    p = run_prefix("nrd")
    r = netns_set.add(f"{p}-r")
    sysctl(r, "net.ipv4.ip_forward", "1")
    sh(["ip", "link", "add", "bra", "type", "bridge"], netns=r)
    sh(["ip", "link", "set", "bra", "up"], netns=r)
    sh(["ip", "addr", "add", "198.18.1.1/24", "dev", "bra"], netns=r)
    nodes, pods, iprs = {}, {}, []
    for spec in NODES:
        ns = netns_set.add(f"{p}-{spec.name}")
        nodes[spec.name] = ns
        veth_pair("eth0", ns, f"r{spec.name}", r)
        sh(["ip", "addr", "add", spec.underlay, "dev", "eth0"], netns=ns)
        if spec.name.startswith("a"):
            sh(["ip", "link", "set", f"r{spec.name}", "master", "bra"], netns=r)
            sh(["ip", "route", "add", "198.18.2.0/24", "via", spec.router], netns=ns)
        else:
            sh(["ip", "addr", "add", "198.18.2.1/24", "dev", f"r{spec.name}"], netns=r)
            sh(["ip", "route", "add", "198.18.1.0/24", "via", spec.router], netns=ns)
        pods[spec.name] = make_pod(netns_set, p, ns, f"nrw{spec.name}", spec.pod_addr)
    dps = {}
    try:
        for spec in NODES:
            ipr = IPRoute(netns=nodes[spec.name], flags=0, groups=0)
            iprs.append(ipr)
            dps[spec.name] = node_dataplane(nodes[spec.name], spec, ipr)
        yield r, nodes, pods, dps
    finally:
        for dp in dps.values():
            dp.routes.driver.rsock.close()
        for ipr in iprs:
            ipr.close()


def test_same_subnet_direct_cross_subnet_vxlan(lab):
    r, nodes, pods, dps = lab
    for name, dp in dps.items():
        res = dp.apply()
        assert not res.failed, (name, res.summary())
        assert res.waiting_for_interface == 0
    # Route forms on a1.
    got = {x["dst"]: x for x in json.loads(sh(
        ["ip", "-j", "-4", "route", "show", "proto", str(OURS)], netns=nodes["a1"]).stdout)}
    assert got["198.19.2.0/26"]["gateway"] == "198.18.1.12" and got["198.19.2.0/26"]["dev"] == "eth0"
    assert got["198.19.3.0/26"]["gateway"] == "198.19.3.1"
    assert got["198.19.3.0/26"]["dev"] == "vxlan.nr" and "onlink" in got["198.19.3.0/26"]["flags"]
    assert got["198.19.1.0/26"]["type"] == "blackhole"
    assert got["198.19.1.2"]["dev"] == "nrwa1"
    # Counters: r forwards only UDP 4789 between racks; a2 sees plain pod ICMP.
    # Only the routed inter-rack link counts: this kernel has br_netfilter built
    # in, so bridged same-rack frames traverse r's forward hook too.
    sh(["nft", "-f", "-"], netns=r, input=(
        "table ip nrtest { chain cfw { type filter hook forward priority 0;\n"
        ' oifname "rb1" udp dport 4789 counter comment "vxlan"\n'
        ' oifname "rb1" ip saddr 198.19.0.0/16 counter comment "pod-plain"\n'
        ' iifname "rb1" ip saddr 198.19.0.0/16 counter comment "pod-plain-back"\n }\n}\n'))
    sh(["nft", "-f", "-"], netns=nodes["a2"], input=(
        "table ip nrtest { chain cpre { type filter hook prerouting priority 0;\n"
        ' udp dport 4789 counter comment "vxlan"\n'
        ' ip saddr 198.19.1.2 ip protocol icmp counter comment "pod-icmp"\n }\n}\n'))

    assert ping(pods["a1"], "198.19.2.2"), "same-subnet pod ping failed"
    a2 = counters(nodes["a2"], "nrtest")
    assert a2["pod-icmp"] > 0 and a2["vxlan"] == 0, a2

    assert ping(pods["a1"], "198.19.3.2"), "cross-subnet pod ping (VXLAN) failed"
    assert ping(pods["b1"], "198.19.2.2"), "cross-subnet pod ping b1->a2 failed"
    rc = counters(r, "nrtest")
    assert rc["vxlan"] > 0 and rc["pod-plain"] == 0 and rc["pod-plain-back"] == 0, rc
    # The cross-rack flow b1->a2 reached a2 encapsulated.
    assert counters(nodes["a2"], "nrtest")["vxlan"] > 0  # b1->a2 came in as VXLAN
    # Proxy ARP was switched on by the workload manager.
    assert sh(["cat", "/proc/sys/net/ipv4/conf/nrwa1/proxy_arp"], netns=nodes["a1"]).stdout.strip() == "1"


def test_restart_keeps_traffic_flowing_and_converges(lab):
    """A new Dataplane over routes already present: no churn, pods keep pinging."""
    r, nodes, pods, dps = lab
    for dp in dps.values():
        dp.apply()
    before = sh(["ip", "-4", "route", "show", "proto", str(OURS)], netns=nodes["a1"]).stdout
    a1 = next(s for s in NODES if s.name == "a1")
    ipr = IPRoute(netns=nodes["a1"], flags=0, groups=0)
    try:
        dp2 = node_dataplane(nodes["a1"], a1, ipr)
        res = dp2.apply()
        assert res.added == res.replaced == res.deleted == 0 and not res.failed
        dp2.routes.driver.rsock.close()
    finally:
        ipr.close()
    assert sh(["ip", "-4", "route", "show", "proto", str(OURS)], netns=nodes["a1"]).stdout == before
    assert ping(pods["a1"], "198.19.3.2")


def test_nat_outgoing_masquerades_pool_traffic_to_outside(netns_set):
    p = run_prefix("nrn")
    node = netns_set.add(f"{p}-n")
    out = netns_set.add(f"{p}-o")
    veth_pair("eth0", node, "eth0", out)
    sh(["ip", "addr", "add", "198.18.3.11/24", "dev", "eth0"], netns=node)
    sh(["ip", "addr", "add", "198.18.3.99/24", "dev", "eth0"], netns=out)
    sysctl(node, "net.ipv4.ip_forward", "1")
    pod = make_pod(netns_set, p, node, "nrwn1", "198.19.1.2")
    sysctl(node, "net.ipv4.conf.nrwn1.proxy_arp", "1")
    sh(["ip", "route", "add", "198.19.1.2/32", "dev", "nrwn1"], netns=node)
    # The outside host has no route back to the pool: only masquerade makes it work.
    assert not ping(pod, "198.18.3.99")

    nat = NatOutgoing(netns=node)
    nat.on_update([POOL], [POOL])
    assert nat.complete_deferred_work() is True
    first = sh(["nft", "list", "table", "ip", "noderouter_nat"], netns=node).stdout
    nat.queue_resync()
    assert nat.complete_deferred_work() is True  # re-applied: converges to the same table
    assert sh(["nft", "list", "table", "ip", "noderouter_nat"], netns=node).stdout == first
    assert nat.complete_deferred_work() is False  # nothing changed: no nft call
    tables = sh(["nft", "list", "tables"], netns=node).stdout
    assert tables.count("noderouter_nat") == 1
    assert ping(pod, "198.18.3.99")
    # Pod-to-pool traffic is not masqueraded: the rule excludes pool destinations.
    assert "ip daddr != @all_pools" in first

    nat.remove()
    nat.remove()  # idempotent
    assert "noderouter_nat" not in sh(["nft", "list", "tables"], netns=node).stdout
