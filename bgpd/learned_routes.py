"""Learned BGP routes -> the dataplane's route table (``felix_like.routetable.RouteTable``).

The speaker's reader thread only records RIB changes; the daemon's loop drains them with
``Speaker.take_route_changes()`` and hands them here, then calls ``table.apply()`` -- so
netlink work never happens on the thread that reads ExaBGP's pipe.

Review notes: an ECMP route (several ``Route.nexthops``) is one multipath ``Target``
(``Target.nexthops``); a single next hop keeps the plain form. The daemon itself goes
through ``bgpd.calculator.classify`` (which also adds the uplink device); this module is the
thin path used by the speaker tests and bench/bench_bgp.py. Routes are class ``bgp`` so a local workload /32 (a class ranked
before it) wins over a borrowed /32 learned from a peer.
"""

from __future__ import annotations

from collections.abc import Mapping

from bgpd.rib import Route
from felix_like.routetable import NextHop, RouteTable, Target

ROUTE_CLASS = "bgp"


def target(route: Route) -> Target:
    if len(route.nexthops) == 1:
        return Target(dst=route.prefix, gateway=route.nexthops[0])
    return Target(dst=route.prefix, nexthops=tuple(NextHop(nh) for nh in route.nexthops))


def apply_changes(table: RouteTable, changes: Mapping[str, Route | None]) -> int:
    """Record RIB changes in ``table`` (no I/O); returns how many were recorded."""
    for prefix, route in changes.items():
        if route is None:
            table.route_remove(ROUTE_CLASS, prefix)
        else:
            table.route_update(ROUTE_CLASS, target(route))
    return len(changes)


def set_all(table: RouteTable, routes: Mapping[str, Route]) -> None:
    """Replace the whole learned set (after a restart, before ``mark_in_sync``)."""
    table.set_routes(ROUTE_CLASS, (target(r) for r in routes.values()))
