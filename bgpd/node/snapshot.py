"""``NodeSnapshot``: what the node looked like at the end of one cycle. A frozen value.

The cycle (``bgpd.node.cycle``) publishes one per run; the status API (``views``) and
anything else on another thread read only the latest snapshot -- never the daemon, the
state cache, the route table or the learned-routes manager, which the loop thread keeps
changing (reading them from the status thread raced: "dictionary changed size during
iteration", issue 13). Publishing is one attribute assignment, atomic in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from felix_like.routetable import DesiredRoutes

EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class PoolRow:
    cidr: str
    ipip_mode: str
    vxlan_mode: str
    nat_outgoing: bool
    disabled: bool


@dataclass(frozen=True)
class NodeSnapshot:
    # who we are (config)
    node: str
    as_number: int
    router_id: str
    address: str
    mesh: bool
    route_protocol: int
    # what the cycle saw and decided
    cycle: int = 0
    taken_at: float = 0.0                                   # the cycle's `now` (monotonic)
    peers: tuple = ()                                       # bgpd.bgp.peers.PeerStatus
    peer_descriptions: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    counters: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    desired_routes: DesiredRoutes | None = None             # per class, frozen copy
    learned: Mapping = field(default_factory=lambda: EMPTY)   # prefix -> rib.Route
    pending: tuple[tuple[str, str], ...] = ()               # learned, not routed: why
    announce: frozenset[str] = frozenset()
    own_blocks: tuple[str, ...] = ()
    pools: tuple[PoolRow, ...] = ()
    vtep: tuple[str, str] | None = None                     # (address, mac)
    workloads: int = 0
    datastore_in_sync: bool = False
    routes_swept: bool = False
    ready: bool = False
    readiness: Mapping[str, bool] = field(default_factory=lambda: EMPTY)
    exabgp_pid: int | None = None
    exabgp_starts: int = 0
    last_error: str = ""

    def route_counts(self) -> dict[str, int]:
        return self.desired_routes.counts() if self.desired_routes is not None else {}
