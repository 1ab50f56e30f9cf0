"""The calculator: datastore + RIB snapshots in, the node's desired state out. Pure.

Inputs are immutable snapshots (the daemon hands over new ones when etcd or the
RIB changes); the output says what the dataplane and the BGP speaker should
make true. No I/O, no clock: the same inputs always give the same output, which
is what the unit tests pin.

Route classes (one producer each, so the reconciler can tell who wants what):
- ``blackhole``: every confirmed block affine to this node. Traffic to an
  unallocated address of our own block dies here instead of bouncing back to
  the fabric. Pending claims are never routed (nor announced).
- ``workload``: a /32 to each local pod via its host-side veth.
- ``remote``: routes learned over BGP (after import policy), shaped by the
  pool's encapsulation: direct via the next hop on the uplink when it shares
  our subnet, else IPIP (tunl0 onlink) or VXLAN (peer VTEP on the vxlan device)
  as the pool's mode says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from bgpd.node_registry import MeshPeer, NodeInfo, by_address, mesh_peers
from felix_like.routetable import Target
from tunnels.encap import Encap, EncapMode, LocalUnderlay, PoolEncap, Vtep, route_for_block
from tunnels.errors import TunnelError

CLASS_BLACKHOLE = "blackhole"
CLASS_WORKLOAD = "workload"
CLASS_REMOTE = "remote"
ROUTE_CLASSES = (CLASS_BLACKHOLE, CLASS_WORKLOAD, CLASS_REMOTE)


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
    vxlan_device: str = "vxlan.nr"


@dataclass(frozen=True)
class Desired:
    routes: Mapping[str, tuple[Target, ...]]
    announce: frozenset[str]
    vteps: tuple[Vtep, ...]
    mesh_peers: tuple[MeshPeer, ...]
    need_ipip: bool
    need_vxlan: bool
    nat_pools: tuple[str, ...]
    all_pools: tuple[str, ...]
    pending: tuple[tuple[str, str], ...]   # (prefix, why it is not routed yet)


def _pool_of(prefix: ipaddress.IPv4Network, pools: tuple[PoolView, ...]) -> PoolView | None:
    for p in pools:
        if prefix.subnet_of(p.network):
            return p
    return None


def calculate(inp: Inputs) -> Desired:
    own = inp.own
    own_blocks = sorted((b for b in inp.blocks if b.node == own.name and b.confirmed),
                        key=lambda b: ipaddress.IPv4Network(b.cidr))
    blackholes = tuple(Target(dst=b.cidr, type="blackhole") for b in own_blocks)
    workloads = tuple(Target(dst=f"{w.ip}/32", ifname=w.host_ifname)
                      for w in sorted(inp.workloads, key=lambda w: ipaddress.IPv4Address(w.ip)))

    local = LocalUnderlay(uplink=inp.uplink, subnets=(
        f"{own.address}/{ipaddress.IPv4Network(own.subnet).prefixlen}",))
    nodes_by_addr = by_address(inp.nodes)
    own_nets = [ipaddress.IPv4Network(b.cidr) for b in own_blocks]
    remote: list[Target] = []
    vteps: dict[str, Vtep] = {}
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
        pool = _pool_of(net, inp.pools)
        peer_node = nodes_by_addr.get(nexthop)
        if pool is None or peer_node is None:
            # Not a pod route, or a next hop that is no node (a ToR): plain routing.
            ifname = inp.uplink if local.contains(nexthop) else None
            remote.append(Target(dst=route.prefix, gateway=nexthop, ifname=ifname))
            continue
        vtep = None
        if peer_node.vtep_address and peer_node.vtep_mac:
            vtep = Vtep(peer_node.vtep_address, peer_node.vtep_mac, peer_node.address)
        try:
            spec = route_for_block(route.prefix, pool.encap, local, nexthop, vtep,
                                   vxlan_device=inp.vxlan_device)
        except TunnelError as exc:
            pending.append((route.prefix, str(exc)))
            continue
        if spec.encap == Encap.VXLAN and spec.vtep is not None:
            vteps[spec.vtep.underlay] = spec.vtep
        remote.append(Target(dst=spec.dst, gateway=spec.gateway, ifname=spec.ifname,
                             onlink=spec.onlink))

    active_pools = [p for p in inp.pools if not p.disabled]
    announce = frozenset([b.cidr for b in own_blocks] +
                         [f"{ip}/32" for ip in inp.borrowed])
    return Desired(
        routes={CLASS_BLACKHOLE: blackholes, CLASS_WORKLOAD: workloads,
                CLASS_REMOTE: tuple(remote)},
        announce=announce,
        vteps=tuple(sorted(vteps.values(), key=lambda v: ipaddress.IPv4Address(v.underlay))),
        mesh_peers=mesh_peers(own, inp.nodes.values()) if inp.mesh else (),
        need_ipip=any(p.ipip_mode != "Never" for p in active_pools),
        need_vxlan=any(p.vxlan_mode != "Never" for p in active_pools),
        nat_pools=tuple(p.cidr for p in inp.pools if p.nat_outgoing),
        all_pools=tuple(p.cidr for p in inp.pools),
        pending=tuple(pending),
    )
