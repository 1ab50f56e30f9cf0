"""Node dataplane for IPIP with OUR code, run inside the UML guest.

Usage: guest_tunnels_ipip.py CONFIG_JSON
CONFIG_JSON: {"protocol": 201, "pool": {"ipip": "CrossSubnet"},
              "nodes": [{"netns": ..., "uplink": ..., "underlay": "198.18.1.10/24",
                         "tunnel_address": ..., "peers": [{"address": ..., "block": ...}]}]}

For each node (one Python process, namespaces reached the way the daemon will
reach them: pyroute2 IPRoute(netns=...) and felix_like's KernelRouteDriver):
capability probe for ipip -> encapsulation decision per peer -> tunnel MTU ->
ensure_ipip twice (the second must change nothing) -> RouteTable apply, then a
full resync (must change nothing). Prints one JSON report; exit 0 unless an
exception escaped (the test judges the report).
"""

from __future__ import annotations

import dataclasses
import json
import sys

import structlog
from pyroute2 import IPRoute

from felix_like.routetable import KernelRouteDriver, RouteTable, Target
from tunnels.devices import ensure_ipip, probe_kind
from tunnels.encap import Encap, EncapMode, LocalUnderlay, PoolEncap, route_for_block, tunnel_mtu
from tunnels.errors import TunnelError


def node_dataplane(node: dict, pool: PoolEncap, protocol: int) -> dict:
    report: dict = {"netns": node["netns"]}
    local = LocalUnderlay(uplink=node["uplink"], subnets=(node["underlay"],))
    with IPRoute(netns=node["netns"], flags=0) as ipr:
        report["links_before"] = sorted(link.get("ifname") for link in ipr.get_links())
        try:
            probe_kind(ipr, "ipip")
            report["probe_ipip"] = "ok"
        except TunnelError as exc:
            report["probe_ipip"] = f"{type(exc).__name__}: {exc}"
            return report
        specs = [route_for_block(p["block"], pool, local, p["address"]) for p in node["peers"]]
        report["routes"] = [
            {"dst": s.dst, "encap": str(s.encap), "gateway": s.gateway, "ifname": s.ifname,
             "onlink": s.onlink} for s in specs
        ]
        uplink = ipr.link("get", ifname=node["uplink"])[0]
        mtu = tunnel_mtu(Encap.IPIP, [uplink.get("mtu")])
        report["mtu"] = mtu
        report["ensure"] = [
            dataclasses.asdict(ensure_ipip(ipr, mtu, node["tunnel_address"])) for _ in range(2)
        ]
    driver = KernelRouteDriver(netns=node["netns"])
    try:
        table = RouteTable(driver=driver, protocol=protocol, class_order=("tunnel",))
        table.set_routes("tunnel", [
            Target(dst=s.dst, gateway=s.gateway, ifname=s.ifname, onlink=s.onlink) for s in specs
        ])
        table.mark_in_sync()
        first = table.apply()
        table.queue_resync()
        second = table.apply()
    finally:
        driver.close()
    report["apply"] = [first.summary(), second.summary()]
    return report


def main(argv: list[str]) -> int:
    # stdout carries the result; our code's structlog lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    config = json.loads(argv[1])
    pool = PoolEncap(ipip=EncapMode(config["pool"]["ipip"]))
    reports = [node_dataplane(n, pool, config["protocol"]) for n in config["nodes"]]
    print(json.dumps(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
