"""BIRD 2 and FRR speaking ipv6 unicast over IPv6 sessions, for the BGP room's IPv6 tests
(issue 15): the contract capture (``capture_samples --pairs6``) and the speaker
integration test. ``lab.routers`` is IPv4-only; these subclasses reuse its process
handling and write their own IPv6 configuration.

Addresses: IPv6 only inside 2001:2::/48, added inside the test's own namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from lab.netns import sh
from lab.routers import BirdRouter, FrrRouter, RouterRoute

# The IPv6 side of the fabric of tests/bgp/conftest.py (same segment, same hosts).
SPEAKER6, BIRD6, FRR6 = "2001:2:0:fb::10", "2001:2:0:fb::1", "2001:2:0:fb::2"
SUBNET6_LEN = 64
POOL6 = "2001:2:0:1900::/56"


def add_ipv6(netns: str, ifname: str, address: str) -> None:
    """``address``/64 on ``ifname`` inside ``netns``, without duplicate address detection
    (else the address is tentative for a second and BGP cannot bind it)."""
    a = ipaddress.IPv6Address(address)
    if a not in ipaddress.IPv6Network("2001:2::/48"):
        raise ValueError(f"{address}: lab IPv6 addresses stay inside 2001:2::/48")
    sh(["sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0"], netns=netns)
    sh(["ip", "-6", "addr", "add", f"{a}/{SUBNET6_LEN}", "dev", ifname, "nodad"], netns=netns)


def _v6(prefixes: Sequence[str]) -> list[str]:
    return [str(ipaddress.IPv6Network(p)) for p in prefixes]


@dataclass
class Bird6(BirdRouter):
    """BIRD with IPv6 sessions (``peers6``: (address, asn)) exporting ``routes6`` (static
    blackholes) with ``next hop self``: on a shared segment BIRD sends the global and the
    link-local next hop (32 bytes, RFC 2545)."""

    peers6: Sequence[tuple[str, int]] = ()
    routes6: Sequence[str] = ()
    source6: str = BIRD6
    extra_routes6: Sequence[str] = field(default=())  # routes6 lines with attributes

    def __post_init__(self) -> None:
        super().__post_init__()
        self.routes6 = _v6(self.routes6)

    @staticmethod
    def proto_name(peer: str) -> str:
        return "n_" + peer.replace(".", "_").replace(":", "_")

    def config_text(self) -> str:
        out = [f"router id {self.router_id};", "log stderr all;",
               "protocol device { scan time 2; }", "protocol direct { ipv6; }",
               "protocol kernel { scan time 5; learn off; ipv6 { import none; export none; }; }",
               "protocol static s6 {", "  ipv6 { preference 250; };",
               *(f"  route {p} blackhole;" for p in self.routes6),
               *self.extra_routes6, "}"]
        for addr, asn in self.peers6:
            out += [f"protocol bgp {self.proto_name(addr)} {{",
                    f"  local {self.source6} as {self.asn};", f"  neighbor {addr} as {asn};",
                    "  hold time 9;", "  keepalive time 3;", "  connect retry time 2;",
                    "  connect delay time 1;", "  error wait time 1, 10;",
                    "  graceful restart on;", f"  graceful restart time {self.gr_restart_time};",
                    "  ipv6 { import all; export where source = RTS_STATIC; next hop self; };",
                    "}"]
        return "\n".join(out) + "\n"

    def routes(self) -> dict[str, RouterRoute]:
        """Best IPv6 routes (master6) with their next hops; source: the peer or static."""
        out = self.cli("show route all table master6")
        routes: dict[str, RouterRoute] = {}
        prefix = proto = None
        hops: list[str] = []
        for line in out.splitlines() + [""]:
            m = re.match(r"^([0-9a-f:]+/\d+)\s+\S+\s+\[(\S+)", line)
            if m or not line:
                if prefix and prefix not in routes:
                    src = ("static" if proto == "s6" else
                           self._peer_of(proto) if proto and proto.startswith("n_") else proto)
                    routes[prefix] = RouterRoute(prefix, tuple(hops), src or "")
                if m:
                    prefix, proto, hops = m.group(1), m.group(2), []
                continue
            mv = re.match(r"^\s+via (\S+) on", line)
            if mv:
                hops.append(mv.group(1))
        return {p: r for p, r in routes.items() if r.source != "direct1"}

    def _peer_of(self, proto: str) -> str:
        for addr, _ in self.peers6:
            if self.proto_name(addr) == proto:
                return addr
        return proto


@dataclass
class Frr6(FrrRouter):
    """FRR bgpd with IPv6 sessions only (``no bgp default ipv4-unicast``), originating
    ``routes6`` with ``network``; directly connected, it sends global + link-local next
    hops."""

    peers6: Sequence[tuple[str, int]] = ()
    routes6: Sequence[str] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.routes6 = _v6(self.routes6)

    def _frr_conf(self) -> str:
        out = ["frr defaults traditional", f"hostname {os.path.basename(self.workdir)}",
               "log stdout informational", "!", f"router bgp {self.asn}",
               f" bgp router-id {self.router_id}", " no bgp ebgp-requires-policy",
               " no bgp default ipv4-unicast", " no bgp network import-check",
               " bgp graceful-restart",
               f" bgp graceful-restart restart-time {self.gr_restart_time}"]
        for addr, asn in self.peers6:
            out += [f" neighbor {addr} remote-as {asn}", f" neighbor {addr} timers 3 9",
                    f" neighbor {addr} timers connect 1"]
        out += [" address-family ipv6 unicast", *(f"  network {p}" for p in self.routes6)]
        for addr, _ in self.peers6:
            out += [f"  neighbor {addr} activate",
                    f"  neighbor {addr} soft-reconfiguration inbound"]
        out += [" exit-address-family", "!"]
        return "\n".join(out) + "\n"

    def established(self, peer: str) -> bool:
        data = json.loads(self.cli("show bgp summary json") or "{}")
        peers = data.get("ipv6Unicast", {}).get("peers", {})
        return peers.get(peer, {}).get("state") == "Established"

    def routes(self) -> dict[str, RouterRoute]:
        """Best IPv6 routes with their global next hops (peer address as source)."""
        data = json.loads(self.cli("show bgp ipv6 unicast json") or "{}")
        routes = {}
        for prefix, paths in data.get("routes", {}).items():
            chosen = [p for p in paths if p.get("bestpath") or p.get("multipath")] or paths[:1]
            if not chosen:
                continue
            hops = tuple(sorted({h.get("ip", "") for p in chosen for h in p.get("nexthops", [])
                                 if h.get("scope", "global") == "global"}))
            src = chosen[0].get("peerId", "")
            routes[prefix] = RouterRoute(prefix, hops, "static" if src == "(unspec)" else src)
        return routes
