"""What the status API serves: plain JSON-able data built from the daemon's state.

No secret reaches these views: peers are shown by address, AS and description.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

from felix_like.managers import CLASS_ORDER

if TYPE_CHECKING:
    from bgpd.node.daemon import NodeDaemon
    from bgpd.node.status_server import StatusServer


def peers_view(d: NodeDaemon) -> list[dict]:
    names = {p.address: p.description for p in d._applied_peers}  # noqa: SLF001
    out = []
    for s in (d.speaker.status() if d.speaker else []):
        row = s.as_dict()
        row["description"] = names.get(s.address, "")
        row["uptime"] = round(s.uptime, 1) if s.uptime is not None else None
        row["rejected_total"] = sum(s.rejected.values())
        out.append(row)
    return sorted(out, key=lambda r: ipaddress.IPv4Address(r["address"]))


def _kernel_routes(d: NodeDaemon) -> dict[str, dict]:
    """Our routes as the kernel has them (a fresh dump, read-only)."""
    from felix_like.nlwire import RouteSocket

    sock = RouteSocket.open()
    try:
        actual = sock.dump(d.cfg.dataplane.route_protocol, frozenset({254}))
    finally:
        sock.close()
    out = {}
    for (table, dst, plen, _metric), (rtype, gw, oif, onlink) in actual.items():
        out[f"{ipaddress.IPv4Address(dst)}/{plen}"] = {
            "table": table, "type": rtype, "oif": oif, "onlink": onlink,
            "gateway": str(ipaddress.IPv4Address(gw)) if gw else None}
    return out


def routes_view(d: NodeDaemon, request: dict) -> list[dict]:
    prefix = request.get("prefix")
    want = ipaddress.IPv4Network(prefix) if prefix else None
    desired = {}
    # Lowest priority first, so the class that wins a prefix is the one shown.
    for cls in reversed(CLASS_ORDER):
        for t in d.routes.desired_targets(cls):
            desired[t.dst] = (cls, t)
    learned = d.speaker.routes() if d.speaker else {}
    announced = d.desired.announce if d.desired else frozenset()
    try:
        kernel = _kernel_routes(d)
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


def status_view(d: NodeDaemon) -> dict:
    cfg = d.cfg
    peers = peers_view(d)
    own_blocks = list(d.desired.own_blocks) if d.desired else []
    ready, readiness = d.health.ready()
    return {
        "node": cfg.node.name,
        "as_number": cfg.node.as_number,
        "router_id": str(cfg.router_id),
        "address": str(cfg.underlay.address),
        "mesh": cfg.bgp.mesh,
        "peers": [{k: p[k] for k in ("address", "asn", "description", "state", "uptime",
                                     "accepted", "announced", "rejected_total", "last_error")}
                  for p in peers],
        "blocks": own_blocks,
        "borrowed": sorted(a for a in (d.desired.announce if d.desired else ())
                           if a.endswith("/32")),
        "pools": [{"cidr": c, "ipip_mode": p.ipip_mode, "vxlan_mode": p.vxlan_mode,
                   "nat_outgoing": p.nat_outgoing, "disabled": p.disabled}
                  for c, p in sorted(d.pools.items())],
        "vtep": {"address": d.vtep[0], "mac": d.vtep[1]} if d.vtep else None,
        "workloads": len(d.workload_dir.records),
        "routes": d.route_counts(),
        "pending": [{"prefix": p, "why": why}
                    for p, why in (d.learned.pending() if d.learned else [])],
        "sync": {"datastore": d.datastore_in_sync, "routes_swept": d._routes_marked,  # noqa: SLF001
                 "ready": ready, **readiness},
        "exabgp_pid": d.speaker.exabgp_pid if d.speaker else None,
        "exabgp_starts": d.speaker.starts if d.speaker else 0,
        "last_error": d._last_error,  # noqa: SLF001
        "time": time.time(),
    }


def register_all(server: StatusServer, d: NodeDaemon) -> None:
    server.register("status", lambda req: status_view(d))
    server.register("peers", lambda req: peers_view(d))
    server.register("routes", lambda req: routes_view(d, req))
    server.register("counters", lambda req: d.speaker.counters() if d.speaker else {})
