"""The encapsulation decision: pure functions, no I/O.

Per pool, IPIP mode and VXLAN mode are each Always / CrossSubnet / Never (at
most one of them enabled, as in Calico). "Same subnet" means one of the local
node's underlay subnets contains the peer's underlay address: then CrossSubnet
sends traffic unencapsulated, ``via <peer> dev <uplink>``.

Route forms produced (``RouteSpec``), matching Calico:
- direct: ``<block> via <peer> dev <uplink>``
- IPIP:   ``<block> via <peer underlay> dev tunl0 onlink``
- VXLAN:  ``<block> via <peer VTEP address> dev <vxlan dev> onlink`` plus a
  static neighbour (VTEP address -> VTEP MAC) and an FDB entry (VTEP MAC ->
  peer underlay address) on the vxlan device; VTEP data comes from the node
  registry, never from BGP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from tunnels.errors import TunnelError

IPIP_DEVICE = "tunl0"
VXLAN_DEVICE = "vxlan.nr"
IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50


class EncapMode(StrEnum):
    ALWAYS = "Always"
    CROSS_SUBNET = "CrossSubnet"
    NEVER = "Never"


class Encap(StrEnum):
    NONE = "none"
    IPIP = "ipip"
    VXLAN = "vxlan"


@dataclass(frozen=True)
class PoolEncap:
    """A pool's encapsulation settings."""

    ipip: EncapMode = EncapMode.NEVER
    vxlan: EncapMode = EncapMode.NEVER

    def __post_init__(self) -> None:
        if self.ipip != EncapMode.NEVER and self.vxlan != EncapMode.NEVER:
            raise TunnelError(f"a pool cannot use both IPIP ({self.ipip}) and VXLAN "
                              f"({self.vxlan}); set one of them to Never")


@dataclass(frozen=True)
class Vtep:
    """A peer's VXLAN tunnel endpoint (from the node registry)."""

    address: str      # the VTEP's address on the peer's vxlan device (from the pool)
    mac: str          # the peer vxlan device's MAC
    underlay: str     # the peer's underlay address (FDB destination)


@dataclass(frozen=True)
class LocalUnderlay:
    """The local node's underlay: its uplink device and the subnets on it."""

    uplink: str
    subnets: tuple[str, ...]  # e.g. ("198.18.1.11/24",): interface address with prefix

    def contains(self, address: str) -> bool:
        addr = ipaddress.IPv4Address(address)
        return any(addr in ipaddress.IPv4Interface(s).network for s in self.subnets)


@dataclass(frozen=True)
class RouteSpec:
    """How to reach one remote block; felix_like turns it into a route target."""

    dst: str
    encap: Encap
    gateway: str
    ifname: str
    onlink: bool
    vtep: Vtep | None = None  # VXLAN: the neighbour + FDB entries this route relies on


def choose_encap(pool: PoolEncap, local: LocalUnderlay, peer_address: str) -> Encap:
    """Always -> encapsulate; CrossSubnet -> only when the peer is off our subnets."""
    same = local.contains(peer_address)
    for mode, encap in ((pool.ipip, Encap.IPIP), (pool.vxlan, Encap.VXLAN)):
        if mode == EncapMode.ALWAYS or (mode == EncapMode.CROSS_SUBNET and not same):
            return encap
    return Encap.NONE


def route_for_block(dst: str, pool: PoolEncap, local: LocalUnderlay, peer_address: str,
                    vtep: Vtep | None = None, ipip_device: str = IPIP_DEVICE,
                    vxlan_device: str = VXLAN_DEVICE) -> RouteSpec:
    """The route to a peer node's block.

    Raises TunnelError when VXLAN is chosen but the peer has no VTEP yet (the
    caller keeps the block pending until the node registry supplies one).
    """
    encap = choose_encap(pool, local, peer_address)
    if encap == Encap.IPIP:
        # onlink: the peer's underlay address is not on tunl0's (empty) subnet.
        return RouteSpec(dst, encap, peer_address, ipip_device, True)
    if encap == Encap.VXLAN:
        if vtep is None:
            raise TunnelError(f"block {dst}: VXLAN to {peer_address} needs the peer's VTEP "
                              f"(address and MAC from the node registry), which is not known yet")
        return RouteSpec(dst, encap, vtep.address, vxlan_device, True, vtep)
    return RouteSpec(dst, encap, peer_address, local.uplink, False)


def tunnel_mtu(encap: Encap, uplink_mtus: Iterable[int], configured: int | None = None) -> int:
    """Smallest uplink MTU minus the encapsulation overhead, unless configured."""
    if configured:
        return configured
    mtus = list(uplink_mtus)
    if not mtus:
        raise TunnelError("cannot derive a tunnel MTU: no uplink MTU known; configure it")
    overhead = {Encap.IPIP: IPIP_OVERHEAD, Encap.VXLAN: VXLAN_OVERHEAD, Encap.NONE: 0}[encap]
    return min(mtus) - overhead
