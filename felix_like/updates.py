"""The dataplane's vocabulary: values only (Felix's proto messages, in dataclasses).

The calculator (``bgpd.node.calculator``, pure) speaks this vocabulary; the daemon's
cycle hands every message to ``Dataplane.on_update(msg)``, which gives it to every
manager; a manager's ``on_update`` only records what it cares about and marks itself
dirty, and ``Dataplane.apply()`` then does the kernel work in dependency order.

Review notes (invariants)
- No I/O imports here, nor anything from ``bgpd``: values and pure helpers only, so
  the calculator can use them and stay pure.
- Every message is a frozen dataclass and carries a *whole desired set* for its concern
  (the daemon recalculates from snapshots), except ``LearnedRouteChanges``: the RIB's
  incremental changes, handed over as the mapping the speaker gave us (ownership moves
  with the message; nobody mutates it afterwards -- copying 100k entries per burst
  would cost more than the rest of the path).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from felix_like import policy_model
from tunnels.encap import PoolEncap, Vtep

RT_TABLE_MAIN = 254  # the kernel's main routing table (rtnetlink RT_TABLE_MAIN)


# --- route classes: who produces a route (one producer per class) -----------------------
# Listed highest priority first in CLASS_ORDER: when two classes want one key the earlier
# wins (a local workload /32 beats a borrowed /32 learned over BGP).
CLASS_WORKLOAD = "workload"
CLASS_REMOTE_BLOCKS = "remote-blocks"
CLASS_BGP = "bgp"
CLASS_BLACKHOLE = "blackhole"
CLASS_ORDER = (CLASS_WORKLOAD, CLASS_REMOTE_BLOCKS, CLASS_BGP, CLASS_BLACKHOLE)


# --- routes ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NextHop:
    """One next hop of a multipath route: a gateway, optionally a device and onlink."""

    gateway: str
    ifname: str | None = None
    onlink: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """One desired IPv4 or IPv6 route.

    ``dst`` is a CIDR with no host bits ("198.19.1.0/26", "2001:2:0:19::/122"); a
    gateway is of the same family (``routetable`` refuses a mix); ``ifname`` is resolved
    to an index at apply time so a target may name a device that appears later.
    ``nexthops`` (instead of gateway/ifname/onlink) makes an ECMP route; their
    order does not matter and duplicates collapse.
    """

    dst: str
    gateway: str | None = None
    ifname: str | None = None
    type: str = "unicast"
    onlink: bool = False
    table: int = RT_TABLE_MAIN
    metric: int = 0
    nexthops: tuple[NextHop, ...] = ()


# --- things the managers route to ------------------------------------------------------
@dataclass(frozen=True)
class WorkloadEndpoint:
    """A local pod: its host-side veth and its addresses (each gets a /32 or /128 route)."""

    name: str
    host_ifname: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class RemoteNode:
    name: str
    address: str                 # underlay address
    vtep: Vtep | None = None     # from the node registry, when the node runs VXLAN


@dataclass(frozen=True)
class RemoteBlock:
    cidr: str
    node: str


@dataclass(frozen=True)
class LearnedContext:
    """What the classification of a learned route depends on (``felix_like.classify``).
    It changes only when our blocks, the pools or the node registry change, so the
    learned-routes manager reclassifies just the routes that changed (a node with 100k
    learned routes must not redo them all for every pod it creates)."""

    own_name: str
    own_ranges: tuple[tuple[int, int], ...]
    pool_ranges: tuple[tuple[int, int], ...]
    node_names_by_addr: Mapping[str, str]      # underlay address -> node name
    subnet_range: tuple[int, int]
    uplink: str


class LearnedRoute(Protocol):
    """What the learned-routes manager needs of a RIB route (``bgpd.bgp.rib.Route``):
    its next hops. Equal routes are one object (the RIB interns them), so the manager
    classifies once per object."""

    @property
    def nexthops(self) -> tuple[str, ...]: ...


# --- messages --------------------------------------------------------------------------
@dataclass(frozen=True)
class OwnBlocksUpdate:
    """Every block this node owns (confirmed affinity): blackholed and announced."""

    blocks: tuple[str, ...]


@dataclass(frozen=True)
class WorkloadsUpdate:
    """Every local workload endpoint."""

    endpoints: tuple[WorkloadEndpoint, ...]


@dataclass(frozen=True)
class PoolsUpdate:
    """Every pool: its encapsulation (remote blocks), NAT outgoing (the NAT manager)."""

    encaps: Mapping[str, PoolEncap]
    all_pools: tuple[str, ...]
    nat_pools: tuple[str, ...]


@dataclass(frozen=True)
class RemoteNodesUpdate:
    """Every other node of the registry, with its VTEP when it runs VXLAN."""

    nodes: tuple[RemoteNode, ...]


@dataclass(frozen=True)
class LearnedContextUpdate:
    """The classification context changed: ``routes`` (the RIB's best routes, all of
    them) are classified again and replace the learned route class at once. Route
    changes queued before this message are superseded by ``routes``."""

    context: LearnedContext
    routes: Mapping[str, LearnedRoute]


@dataclass(frozen=True)
class LearnedRouteChanges:
    """RIB changes since the last message: {prefix: route, or None when withdrawn}."""

    changes: Mapping[str, LearnedRoute | None]


@dataclass(frozen=True)
class VxlanDeviceUpdate:
    """Our VXLAN device (``tunnels.devices.VxlanParams``'s fields)."""

    vni: int
    port: int
    local: str | None
    mtu: int | None
    address: str | None
    mac: str | None
    name: str


@dataclass(frozen=True)
class IpipDeviceUpdate:
    enabled: bool
    mtu: int | None
    address: str | None


@dataclass(frozen=True)
class PolicyInputsUpdate:
    """Everything network policy depends on, whole (issue 14): every policy and
    namespace, and the endpoints -- this node's workloads (host interface and IPs from
    the CNI records, labels and named ports from their etcd records) plus the other
    nodes' pods (addresses from IPAM and their records; peers of rule selectors). An empty
    ``policies`` means no policy exists: the policy manager then keeps no table at all."""

    policies: tuple[policy_model.NetworkPolicy, ...]
    namespaces: tuple[policy_model.Namespace, ...]
    endpoints: tuple[policy_model.WorkloadEndpoint, ...]


DataplaneUpdate = (OwnBlocksUpdate | WorkloadsUpdate | PoolsUpdate | RemoteNodesUpdate
                   | LearnedContextUpdate | LearnedRouteChanges | VxlanDeviceUpdate
                   | IpipDeviceUpdate | PolicyInputsUpdate)


# --- pure helpers shared by the calculator and the managers ---------------------------
# IPv6 addresses as integers are shifted above every IPv4 one, so ranges of the two
# families never contain each other (::c613:1/128 is not 198.19.0.1) and the range
# checks need no family test (issue 15).
V6_INT_BASE = 1 << 128


def ip_int(text: str) -> int:
    if ":" in text:
        return V6_INT_BASE + int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    return int.from_bytes(socket.inet_aton(text), "big")


def prefix_range(prefix: str) -> tuple[int, int]:
    """``a.b.c.d/len`` or an IPv6 prefix as (first, last) address (IPv6 above
    ``V6_INT_BASE``); ipaddress costs ~10x more per route."""
    addr, _, plen = prefix.partition("/")
    if ":" in addr:
        size = 1 << (128 - int(plen or 128))
        first = ip_int(addr) & ~(size - 1)
        return first, first + size - 1
    size = 1 << (32 - int(plen or 32))
    first = ip_int(addr) & ~(size - 1) & 0xFFFFFFFF
    return first, first + size - 1
