"""The calculator: datastore + RIB snapshots in, the node's desired state out. Pure.

Inputs are immutable snapshots (the daemon hands over new ones when etcd or the
RIB changes); the output is what the dataplane managers (``felix_like.managers``)
and the BGP speaker should make true. No I/O, no clock: the same inputs always
give the same output, which is what the unit tests pin.

What it decides (the managers then decide *how*):
- owned blocks: confirmed blocks affine to this node → blackholes and
  announcements. Pending claims are never routed nor announced.
- workloads: local pods (from the CNI records) → /32 routes via their veths.
- learned routes, split by next hop: a next hop that is a registered node and a
  prefix inside a pool is a *remote block* — ``RemoteBlockManager`` shapes it
  with the pool's encapsulation (direct, IPIP, VXLAN: one place decides that);
  any other next hop (a ToR, a route reflector's client) is plain routing.
- mesh peers from the node registry; which tunnel devices the pools need.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from bgpd.node_registry import MeshPeer, NodeInfo, by_address, mesh_peers
from felix_like.managers import RemoteBlock, RemoteNode, WorkloadEndpoint
from felix_like.routetable import Target
from tunnels.encap import EncapMode, PoolEncap, Vtep


@dataclass(frozen=True)
class PoolView:
    cidr: str
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    nat_outgoing: bool = False
    disabled: bool = False

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def encap(self) -> PoolEncap:
        return PoolEncap(EncapMode(self.ipip_mode), EncapMode(self.vxlan_mode))


@dataclass(frozen=True)
class BlockView:
    cidr: str
    node: str | None
    confirmed: bool


@dataclass(frozen=True)
class Workload:
    name: str
    ip: str
    host_ifname: str


@dataclass(frozen=True)
class LearnedRoute:
    prefix: str
    nexthops: tuple[str, ...]


@dataclass(frozen=True)
class Inputs:
    own: NodeInfo
    uplink: str
    pools: tuple[PoolView, ...] = ()
    blocks: tuple[BlockView, ...] = ()
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    learned: tuple[LearnedRoute, ...] = ()
    workloads: tuple[Workload, ...] = ()
    borrowed: tuple[str, ...] = ()     # our pods' /32s inside other nodes' blocks
    mesh: bool = True


@dataclass(frozen=True)
class Desired:
    own_blocks: tuple[str, ...]
    workloads: tuple[WorkloadEndpoint, ...]
    pool_encaps: Mapping[str, PoolEncap]
    remote_blocks: tuple[RemoteBlock, ...]     # learned from a node: encap decided downstream
    remote_nodes: tuple[RemoteNode, ...]
    plain_routes: tuple[Target, ...]           # learned via a non-node next hop (ToR)
    announce: frozenset[str]
    mesh_peers: tuple[MeshPeer, ...]
    need_ipip: bool
    need_vxlan: bool
    nat_pools: tuple[str, ...]
    all_pools: tuple[str, ...]
    pending: tuple[tuple[str, str], ...]       # (prefix, why it is not routed)


def _inside(net: ipaddress.IPv4Network, pools: tuple[PoolView, ...]) -> bool:
    return any(net.subnet_of(p.network) for p in pools)


def _remote_node(n: NodeInfo) -> RemoteNode:
    vtep = Vtep(n.vtep_address, n.vtep_mac, n.address) if n.vtep_address and n.vtep_mac else None
    return RemoteNode(n.name, n.address, vtep)


def calculate(inp: Inputs) -> Desired:
    own = inp.own
    own_blocks = tuple(sorted((b.cidr for b in inp.blocks if b.node == own.name and b.confirmed),
                              key=ipaddress.IPv4Network))
    own_nets = [ipaddress.IPv4Network(b) for b in own_blocks]
    workloads = tuple(WorkloadEndpoint(w.name, w.host_ifname, (w.ip,))
                      for w in sorted(inp.workloads, key=lambda w: ipaddress.IPv4Address(w.ip)))
    subnet = ipaddress.IPv4Network(own.subnet)
    nodes_by_addr = by_address(inp.nodes)
    remote: list[RemoteBlock] = []
    plain: list[Target] = []
    pending: list[tuple[str, str]] = []
    for route in sorted(inp.learned, key=lambda r: ipaddress.IPv4Network(r.prefix)):
        net = ipaddress.IPv4Network(route.prefix)
        if any(net.subnet_of(b) for b in own_nets):
            # Defence in depth: the import policy already refuses these.
            pending.append((route.prefix, "inside one of our own blocks"))
            continue
        if not route.nexthops:
            continue
        # One next hop per route today; the lowest address, so every node picks the same.
        nexthop = min(route.nexthops, key=ipaddress.IPv4Address)
        node = nodes_by_addr.get(nexthop)
        if node is not None and node.name != own.name and _inside(net, inp.pools):
            remote.append(RemoteBlock(route.prefix, node.name))
            continue
        ifname = inp.uplink if ipaddress.IPv4Address(nexthop) in subnet else None
        plain.append(Target(dst=route.prefix, gateway=nexthop, ifname=ifname))

    active = [p for p in inp.pools if not p.disabled]
    return Desired(
        own_blocks=own_blocks,
        workloads=workloads,
        pool_encaps={p.cidr: p.encap for p in inp.pools},
        remote_blocks=tuple(remote),
        remote_nodes=tuple(_remote_node(n) for _, n in sorted(inp.nodes.items())
                           if n.name != own.name),
        plain_routes=tuple(plain),
        announce=frozenset(own_blocks) | frozenset(f"{ip}/32" for ip in inp.borrowed),
        mesh_peers=mesh_peers(own, inp.nodes.values()) if inp.mesh else (),
        need_ipip=any(p.ipip_mode != "Never" for p in active),
        need_vxlan=any(p.vxlan_mode != "Never" for p in active),
        nat_pools=tuple(p.cidr for p in inp.pools if p.nat_outgoing),
        all_pools=tuple(p.cidr for p in inp.pools),
        pending=tuple(pending),
    )
