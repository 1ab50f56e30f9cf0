"""The lab's address plan. Every lab address lies in 198.18.0.0/15 (RFC 2544's
benchmarking range): if anything ever leaked to the root namespace it would go
nowhere, unlike a private range or this machine's own 192.0.2.0/24.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
SPINE_SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
POD_POOL = ipaddress.IPv4Network("198.19.0.0/16")
ETCD_ADDRESS = ipaddress.IPv4Address("198.18.0.10")
SPINE_AS = 64700


def assert_lab_address(addr) -> None:
    """Refuse any address (or network) outside the benchmarking range."""
    net = ipaddress.ip_network(str(addr), strict=False)
    if not net.subnet_of(LAB_RANGE):
        raise ValueError(f"{addr} is outside the lab range {LAB_RANGE}; refusing to use it")


@dataclass(frozen=True)
class RackPlan:
    """Rack ``index`` (1-based): subnet 198.18.<index>.0/24, ToR at .1, nodes from .11."""

    index: int
    letter: str

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.18.{self.index}.0/24")

    @property
    def tor_address(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def tor_spine_address(self) -> ipaddress.IPv4Address:
        return SPINE_SUBNET.network_address + 1 + self.index

    @property
    def tor_as(self) -> int:
        return 64700 + self.index

    @property
    def node_as(self) -> int:
        # One AS per rack for the nodes: eBGP to the ToR (Calico's AS-per-rack design).
        return 64600 + self.index

    def node_address(self, n: int) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 10 + n

    def node_name(self, n: int) -> str:
        return f"node-{self.letter}{n}"
