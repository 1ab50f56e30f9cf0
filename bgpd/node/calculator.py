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
  any other next hop (a ToR, a route reflector's client) is plain routing; equal
  paths via several such next hops become one ECMP route (``Target.nexthops``).
- mesh peers from the node registry; which tunnel devices the pools need.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from bgpd.node.registry import MeshPeer, NodeInfo, by_address, mesh_peers
from felix_like.managers import RemoteBlock, RemoteNode, WorkloadEndpoint
from felix_like.routetable import NextHop, Target
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


@dataclass(frozen=True)
class LearnedContext:
    """What the classification of a learned route depends on. It changes only when our
    blocks, the pools or the node registry change, so the daemon can reclassify just the
    routes that changed (a node with 100k learned routes must not redo them all for every
    pod it creates)."""

    own_name: str
    own_ranges: tuple[tuple[int, int], ...]
    pool_ranges: tuple[tuple[int, int], ...]
    nodes_by_addr: Mapping[str, NodeInfo]
    subnet_range: tuple[int, int]
    uplink: str


# What one learned route becomes: a remote block (encapsulation decided by the
# RemoteBlockManager), a plain route, or a reason why it is not routed.
Classified = RemoteBlock | Target | str

OWN_BLOCK_REASON = "inside one of our own blocks"


def _ip_int(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def _range(prefix: str) -> tuple[int, int]:
    """``a.b.c.d/len`` as (first, last) address; ipaddress costs ~10x more per route."""
    addr, _, plen = prefix.partition("/")
    size = 1 << (32 - int(plen or 32))
    first = _ip_int(addr) & ~(size - 1) & 0xFFFFFFFF
    return first, first + size - 1


def _within(r: tuple[int, int], ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= r[0] and r[1] <= hi for lo, hi in ranges)


def learned_context(inp: Inputs) -> LearnedContext:
    own = inp.own
    return LearnedContext(
        own_name=own.name,
        own_ranges=tuple(_range(b.cidr) for b in inp.blocks
                         if b.node == own.name and b.confirmed),
        pool_ranges=tuple(_range(p.cidr) for p in inp.pools),
        nodes_by_addr=by_address(inp.nodes),
        subnet_range=_range(own.subnet),
        uplink=inp.uplink)


@dataclass(frozen=True)
class ViaNode:
    """A next hop that is another node: its blocks are remote blocks, anything else a
    plain route through ``plain`` (see ``classify_path``)."""

    node: str
    plain: Target


# What a next-hop set means for every prefix learned through it (``classify_path``).
PathClass = Target | ViaNode | str


def classify_path(nexthops: tuple[str, ...], ctx: LearnedContext) -> PathClass:
    """``classify`` with the per-prefix part factored out, for a group of prefixes that
    share one best route (the RIB hands 100k prefixes from one ToR over as one group).

    A ``Target`` (its ``dst`` empty) is the route for every prefix of the group; a
    ``ViaNode`` makes prefixes inside a pool remote blocks of that node and the rest plain
    routes via ``plain`` (``classify_prefix``). Equal paths via routers (two ToRs, RRs'
    clients) are one ECMP route over all of them; among nodes the lowest address owns
    the group's pool prefixes, so every node picks the same.
    """
    if not nexthops:
        return "no next hop"
    lo, hi = ctx.subnet_range
    if len(nexthops) == 1:
        nexthop = nexthops[0]
        ifname = ctx.uplink if lo <= _ip_int(nexthop) <= hi else None
        plain = Target(dst="", gateway=nexthop, ifname=ifname)
        node = ctx.nodes_by_addr.get(nexthop)
        if node is not None and node.name != ctx.own_name:
            return ViaNode(node.name, plain)
        return plain
    hops = sorted(nexthops, key=_ip_int)
    plain = Target(dst="", nexthops=tuple(
        NextHop(nh, ctx.uplink if lo <= _ip_int(nh) <= hi else None) for nh in hops))
    for nh in hops:  # the lowest-addressed node owns the group's pool prefixes (classify)
        node = ctx.nodes_by_addr.get(nh)
        if node is not None and node.name != ctx.own_name:
            return ViaNode(node.name, plain)
    return plain


def within_any(prefix: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    return _within(_range(prefix), ranges)


def classify_prefix(prefix: str, path: PathClass, ctx: LearnedContext,
                    check_own: bool = True) -> Classified:
    """The per-prefix step after ``classify_path``. A plain route comes back as the path's
    template (``dst`` empty): ``classify`` names the dst, ``LearnedRoutes`` shares it.

    ``check_own``: defence in depth -- the import policy already refuses a route inside
    one of our own blocks (see ``LearnedRoutes._classify`` for when it can be skipped).
    """
    if check_own and within_any(prefix, ctx.own_ranges):
        return OWN_BLOCK_REASON
    if isinstance(path, ViaNode):
        # A block learned from a node keeps one next hop: it has exactly one owner, and
        # RemoteBlockManager shapes the route per node (direct, IPIP onlink via tunl0,
        # VXLAN via that node's VTEP with its static neighbour/FDB entries) -- hops
        # through two nodes would send part of the traffic to a node that does not host
        # the pods (two nodes claim one block only while its affinity moves). The owner
        # also beats a ToR that re-announces the block: direct, no hairpin.
        if within_any(prefix, ctx.pool_ranges):
            return RemoteBlock(prefix, path.node)
        return path.plain
    return path


def classify(prefix: str, nexthops: tuple[str, ...], ctx: LearnedContext) -> Classified:
    """What one learned route becomes (``classify_path`` + ``classify_prefix``)."""
    c = classify_prefix(prefix, classify_path(nexthops, ctx), ctx)
    return replace(c, dst=prefix) if isinstance(c, Target) else c


def classify_all(learned: tuple[LearnedRoute, ...], ctx: LearnedContext
                 ) -> dict[str, Classified]:
    return {r.prefix: classify(r.prefix, r.nexthops, ctx) for r in learned}


def _remote_node(n: NodeInfo) -> RemoteNode:
    vtep = Vtep(n.vtep_address, n.vtep_mac, n.address) if n.vtep_address and n.vtep_mac else None
    return RemoteNode(n.name, n.address, vtep)


def _sorted(values, prefix_of):
    return tuple(sorted(values, key=lambda v: _range(prefix_of(v))[0] * 64 +
                        int(prefix_of(v).partition("/")[2] or 32)))


def calculate(inp: Inputs) -> Desired:
    own = inp.own
    own_blocks = tuple(sorted((b.cidr for b in inp.blocks if b.node == own.name and b.confirmed),
                              key=ipaddress.IPv4Network))
    workloads = tuple(WorkloadEndpoint(w.name, w.host_ifname, (w.ip,))
                      for w in sorted(inp.workloads, key=lambda w: ipaddress.IPv4Address(w.ip)))
    classified = classify_all(inp.learned, learned_context(inp))
    remote = [c for c in classified.values() if isinstance(c, RemoteBlock)]
    plain = [c for c in classified.values() if isinstance(c, Target)]
    pending = [(p, c) for p, c in classified.items() if isinstance(c, str)]
    active = [p for p in inp.pools if not p.disabled]
    return Desired(
        own_blocks=own_blocks,
        workloads=workloads,
        pool_encaps={p.cidr: p.encap for p in inp.pools},
        remote_blocks=_sorted(remote, lambda b: b.cidr),
        remote_nodes=tuple(_remote_node(n) for _, n in sorted(inp.nodes.items())
                           if n.name != own.name),
        plain_routes=_sorted(plain, lambda t: t.dst),
        announce=frozenset(own_blocks) | frozenset(f"{ip}/32" for ip in inp.borrowed),
        mesh_peers=mesh_peers(own, inp.nodes.values()) if inp.mesh else (),
        need_ipip=any(p.ipip_mode != "Never" for p in active),
        need_vxlan=any(p.vxlan_mode != "Never" for p in active),
        nat_pools=tuple(p.cidr for p in inp.pools if p.nat_outgoing),
        all_pools=tuple(p.cidr for p in inp.pools),
        pending=_sorted(pending, lambda pc: pc[0]),
    )
