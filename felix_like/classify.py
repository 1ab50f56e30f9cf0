"""What a learned BGP route becomes in the dataplane. Pure (values in, values out).

A learned route is one of: a *remote block* (a next hop that is a registered node and a
prefix inside a pool: ``RemoteBlockManager`` shapes it with the pool's encapsulation --
direct, IPIP, VXLAN: one place decides that), a *plain route* via the next hop(s)
(through the uplink when on-link; equal paths via several routers become one ECMP
route), or a reason why it is not routed.

The daemon's calculator builds the ``LearnedContext`` (``bgpd.node.calculator.
learned_context``); ``felix_like.learned_routes.LearnedRoutes`` applies these rules per
next-hop group on the 100k-routes path; ``classify`` is the per-route reference the
tests hold the bulk path to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from felix_like.updates import (
    LearnedContext,
    NextHop,
    RemoteBlock,
    Target,
    ip_int,
    prefix_range,
)

# What one learned route becomes: a remote block (encapsulation decided by the
# RemoteBlockManager), a plain route, or a reason why it is not routed.
Classified = RemoteBlock | Target | str

OWN_BLOCK_REASON = "inside one of our own blocks"


@dataclass(frozen=True)
class ViaNode:
    """A next hop that is another node: its blocks are remote blocks, anything else a
    plain route through ``plain`` (see ``classify_path``)."""

    node: str
    plain: Target


# What a next-hop set means for every prefix learned through it (``classify_path``).
PathClass = Target | ViaNode | str


def within_any(prefix: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    first, last = prefix_range(prefix)
    return any(lo <= first and last <= hi for lo, hi in ranges)


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
        ifname = ctx.uplink if lo <= ip_int(nexthop) <= hi else None
        plain = Target(dst="", gateway=nexthop, ifname=ifname)
        node = ctx.node_names_by_addr.get(nexthop)
        if node is not None and node != ctx.own_name:
            return ViaNode(node, plain)
        return plain
    hops = sorted(nexthops, key=ip_int)
    plain = Target(dst="", nexthops=tuple(
        NextHop(nh, ctx.uplink if lo <= ip_int(nh) <= hi else None) for nh in hops))
    for nh in hops:  # the lowest-addressed node owns the group's pool prefixes (classify)
        node = ctx.node_names_by_addr.get(nh)
        if node is not None and node != ctx.own_name:
            return ViaNode(node, plain)
    return plain


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


def plain_context(uplink: str | None = None, subnet: str = "0.0.0.0/32",
                  own_blocks: Iterable[str] = (), pools: Iterable[str] = ()) -> LearnedContext:
    """A context with no node registry: every learned route is a plain route (the
    speaker tests, the benchmark)."""
    return LearnedContext(own_name="", own_ranges=tuple(prefix_range(b) for b in own_blocks),
                          pool_ranges=tuple(prefix_range(p) for p in pools),
                          node_names_by_addr={}, subnet_range=prefix_range(subnet),
                          uplink=uplink or "")
