"""What the status API serves: plain JSON-able data built from the last ``NodeSnapshot``.

The views run on the status server's threads; they read only the snapshot the cycle
published (a frozen value), never the daemon's live state (issue 13: reading the route
table and the learned routes while the loop changed them raced). ``routes`` also dumps
the kernel's routes of our protocol (read-only netlink) to show what agrees.

No secret reaches these views: peers are shown by address, AS and description.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from bgpd.node.errors import NodeError
from bgpd.node.snapshot import NodeSnapshot
from bgpd.node.status_server import StatusServer


class NotReady(NodeError, RuntimeError):
    """No snapshot yet: the daemon is still starting."""


def peers_view(snap: NodeSnapshot) -> list[dict]:
    out = []
    for s in snap.peers:
        row = s.as_dict()
        row["rejected"] = dict(row["rejected"])
        row["description"] = snap.peer_descriptions.get(s.address, "")
        row["uptime"] = round(s.uptime, 1) if s.uptime is not None else None
        row["rejected_total"] = sum(s.rejected.values())
        out.append(row)
    return sorted(out, key=lambda r: ipaddress.IPv4Address(r["address"]))


def _kernel_routes(route_protocol: int) -> dict[str, dict]:
    """Our routes as the kernel has them (a fresh dump, read-only)."""
    from felix_like.nlwire import RouteSocket

    sock = RouteSocket.open()
    try:
        actual = sock.dump(route_protocol, frozenset({254}))
    finally:
        sock.close()
    out = {}
    for (table, dst, plen, _metric), (rtype, gw, oif, onlink) in actual.items():
        out[f"{ipaddress.IPv4Address(dst)}/{plen}"] = {
            "table": table, "type": rtype, "oif": oif, "onlink": onlink,
            "gateway": str(ipaddress.IPv4Address(gw)) if gw else None}
    return out


def routes_view(snap: NodeSnapshot, request: dict) -> list[dict]:
    prefix = request.get("prefix")
    want = ipaddress.IPv4Network(prefix) if prefix else None
    desired = snap.desired_routes.winners() if snap.desired_routes is not None else {}
    learned = snap.learned
    announced = snap.announce
    try:
        kernel = _kernel_routes(snap.route_protocol)
        kernel_error = None
    except Exception as exc:  # noqa: BLE001 - the view still shows the rest
        kernel, kernel_error = {}, str(exc)
    rows = []
    for p in sorted(set(desired) | set(learned) | set(announced) | set(kernel),
                    key=ipaddress.IPv4Network):
        if want and not ipaddress.IPv4Network(p).overlaps(want):
            continue
        cls, t = desired.get(p, (None, None))
        route = learned.get(p)
        rows.append({
            "prefix": p, "class": cls,
            "via": (t.gateway or ",".join(h.gateway for h in t.nexthops)  # ECMP: all hops
                    or (t.type if t.type != "unicast" else "direct")) if t else None,
            "dev": (t.ifname or ",".join(h.ifname or "" for h in t.nexthops) or None)
            if t else None,
            "learned_from": list(route.peers) if route is not None else [],
            "nexthops": list(route.nexthops) if route is not None else [],
            "announced": p in announced,
            "in_kernel": p in kernel,
            "agree": (p in kernel) == (t is not None) if kernel_error is None else None,
        })
    return rows


def status_view(snap: NodeSnapshot) -> dict:
    peers = peers_view(snap)
    return {
        "node": snap.node,
        "as_number": snap.as_number,
        "router_id": snap.router_id,
        "address": snap.address,
        "mesh": snap.mesh,
        "peers": [{k: p[k] for k in ("address", "asn", "description", "state", "uptime",
                                     "accepted", "announced", "rejected_total", "last_error")}
                  for p in peers],
        "blocks": list(snap.own_blocks),
        "borrowed": sorted(a for a in snap.announce if a.endswith("/32")),
        "pools": [{"cidr": p.cidr, "ipip_mode": p.ipip_mode, "vxlan_mode": p.vxlan_mode,
                   "nat_outgoing": p.nat_outgoing, "disabled": p.disabled}
                  for p in snap.pools],
        "vtep": {"address": snap.vtep[0], "mac": snap.vtep[1]} if snap.vtep else None,
        "workloads": snap.workloads,
        "routes": snap.route_counts(),
        "pending": [{"prefix": p, "why": why} for p, why in snap.pending],
        "sync": {"datastore": snap.datastore_in_sync, "routes_swept": snap.routes_swept,
                 "ready": snap.ready, **snap.readiness},
        "exabgp_pid": snap.exabgp_pid,
        "exabgp_starts": snap.exabgp_starts,
        "last_error": snap.last_error,
        "cycle": snap.cycle,
        "time": time.time(),
    }


def register_all(server: StatusServer, snapshot: Callable[[], NodeSnapshot | None]) -> None:
    """Each view reads the latest published snapshot (one read per request)."""

    def latest() -> NodeSnapshot:
        snap = snapshot()
        if snap is None:
            raise NotReady("the daemon is starting; no snapshot published yet")
        return snap

    server.register("status", lambda req: status_view(latest()))
    server.register("peers", lambda req: peers_view(latest()))
    server.register("routes", lambda req: routes_view(latest(), req))
    server.register("counters", lambda req: dict(latest().counters))
