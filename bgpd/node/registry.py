"""The node registry: who is in the cluster, as stored in etcd.

Key: ``<prefix>/nodes/<name>`` → JSON ``NodeInfo``, written with a lease the
daemon keeps alive, so a node that stops for good disappears when its lease
expires (its blocks are then withdrawn everywhere).

The pure parts live here (record format, mesh peer selection); the etcd I/O is
in ``bgpd.node.registry_store``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from bgpd.node.errors import NodeError

_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class RegistryError(NodeError, ValueError):
    """A node record that cannot be used; the message names the node and the field."""


@dataclass(frozen=True)
class NodeInfo:
    name: str
    address: str
    subnet: str
    as_number: int
    tunnel_address: str | None = None   # tunl0 address (IPIP), from the pool
    vtep_address: str | None = None     # VXLAN device address, from the pool
    vtep_mac: str | None = None
    # Dual stack (issue 15): the node's global IPv6 underlay address and subnet, both or
    # neither. Records of older daemons lack them (from_json takes known keys only), and
    # older daemons ignore them.
    ipv6_address: str | None = None
    ipv6_subnet: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise RegistryError(f"node name {self.name!r} is not a DNS-1123 name")
        try:
            addr = ipaddress.IPv4Address(self.address)
            net = ipaddress.IPv4Network(self.subnet)
            for field_name in ("tunnel_address", "vtep_address"):
                value = getattr(self, field_name)
                if value is not None:
                    ipaddress.IPv4Address(value)
        except ValueError as exc:
            raise RegistryError(f"node {self.name}: {exc}") from None
        if addr not in net:
            raise RegistryError(f"node {self.name}: address {addr} is not in subnet {net}")
        self._check_ipv6()
        if not 1 <= int(self.as_number) <= 4294967295:
            raise RegistryError(f"node {self.name}: AS {self.as_number} out of range")
        if self.vtep_mac is not None and not _MAC.fullmatch(self.vtep_mac):
            raise RegistryError(f"node {self.name}: VTEP MAC {self.vtep_mac!r} is not aa:bb:..")

    def _check_ipv6(self) -> None:
        if (self.ipv6_address is None) != (self.ipv6_subnet is None):
            raise RegistryError(f"node {self.name}: ipv6_address and ipv6_subnet go together "
                                f"(got {self.ipv6_address!r}, {self.ipv6_subnet!r})")
        if self.ipv6_address is None:
            return
        try:
            addr6 = ipaddress.IPv6Address(self.ipv6_address)
            net6 = ipaddress.IPv6Network(self.ipv6_subnet)
        except ValueError as exc:
            raise RegistryError(f"node {self.name}: {exc}") from None
        if addr6 not in net6:
            raise RegistryError(f"node {self.name}: IPv6 address {addr6} is not in subnet {net6}")
        if addr6.is_link_local or addr6.is_multicast or addr6.is_loopback or addr6.is_unspecified:
            raise RegistryError(f"node {self.name}: IPv6 address {addr6} is not a global "
                                f"unicast address")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> NodeInfo:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            return cls(**known)
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"bad node record: {exc}") from None


@dataclass(frozen=True)
class MeshPeer:
    """A full-mesh BGP peer derived from the registry."""

    name: str
    address: str
    as_number: int
    passive: bool


def mesh_peers(own: NodeInfo, nodes: Iterable[NodeInfo]) -> tuple[MeshPeer, ...]:
    """Every other node, once. Only one side dials: the higher address waits (passive),
    so two nodes never race two TCP connections into a collision."""
    me = ipaddress.IPv4Address(own.address)
    out = []
    for n in sorted(nodes, key=lambda n: ipaddress.IPv4Address(n.address)):
        if n.name == own.name or n.address == own.address:
            continue
        out.append(MeshPeer(n.name, n.address, n.as_number,
                            passive=me > ipaddress.IPv4Address(n.address)))
    return tuple(out)


def by_address(nodes: Mapping[str, NodeInfo]) -> dict[str, NodeInfo]:
    return {n.address: n for n in nodes.values()}
