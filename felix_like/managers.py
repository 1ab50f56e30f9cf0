"""Dataplane managers (Felix pattern) and the loop step that drives them.

One way in: ``Dataplane.on_update(msg)`` hands every message of the vocabulary
(``felix_like.updates``) to every manager; a manager's ``on_update`` (and its finer
``on_*`` methods) only record desired state and mark it dirty; ``complete_deferred_work()``
does the work. ``Dataplane.apply(now)`` calls them in dependency order - learned routes
before remote blocks (they feed it), tunnel devices before routes (a route through a
device needs the device), network policy after the workloads (it programs their
interfaces), routes last - and returns the route table's result. Nothing
outside ``felix_like`` touches the ``RouteTable``: the daemon asks the ``Dataplane``
(``mark_in_sync``, ``queue_resync``, ``desired_snapshot``).

Route classes (highest priority first): workload /32s beat everything (a local
pod wins over a stale borrowed /32 from BGP), then remote blocks (calculated
from the node registry + encap), then BGP-learned routes, then blackholes for
owned blocks (least specific anyway).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from felix_like.errors import DataplaneError
from felix_like.learned_routes import LearnedRoutes
from felix_like.nat import NatOutgoing
from felix_like.policy import PolicyManager
from felix_like.routetable import ApplyResult, DesiredRoutes, RouteTable
from felix_like.sysctls import SysctlError, Sysctls, conf_key, node_sysctls
from felix_like.updates import (
    CLASS_BGP,
    CLASS_BLACKHOLE,
    CLASS_ORDER,
    CLASS_REMOTE_BLOCKS,
    CLASS_WORKLOAD,
    DataplaneUpdate,
    IpipDeviceUpdate,
    OwnBlocksUpdate,
    PolicyInputsUpdate,
    PoolsUpdate,
    RemoteBlock,
    RemoteNode,
    RemoteNodesUpdate,
    Target,
    VxlanDeviceUpdate,
    WorkloadEndpoint,
    WorkloadsUpdate,
)
from tunnels.devices import VxlanParams, ensure_ipip, ensure_vxlan, probe_kind, sync_vxlan_peers
from tunnels.encap import (
    IPIP_DEVICE,
    VXLAN_DEVICE,
    Encap,
    LocalUnderlay,
    PoolEncap,
    Vtep,
    route_for_block,
)
from tunnels.errors import TunnelError

log = structlog.get_logger("felix_like.managers")



# --- pure calculation ------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteRoutes:
    targets: tuple[Target, ...]
    vteps: tuple[Vtep, ...]
    pending: tuple[str, ...]     # blocks we cannot route yet, with the reason


def compute_remote_routes(pools: Mapping[str, PoolEncap], blocks: Iterable[RemoteBlock],
                          nodes: Mapping[str, RemoteNode], local: LocalUnderlay,
                          vxlan_device: str, ipip_device: str) -> RemoteRoutes:
    """Route + VTEP set for remote blocks (pure)."""
    nets = [(ipaddress.ip_network(c), enc) for c, enc in pools.items()]
    targets: list[Target] = []
    vteps: dict[str, Vtep] = {}
    pending: list[str] = []
    for b in sorted(blocks, key=lambda b: b.cidr):
        node = nodes.get(b.node)
        if node is None:
            pending.append(f"{b.cidr}: node {b.node} unknown")
            continue
        net = ipaddress.ip_network(b.cidr)
        enc = next((e for n, e in nets if n.version == net.version and net.subnet_of(n)),
                   PoolEncap())
        try:
            spec = route_for_block(b.cidr, enc, local, node.address, node.vtep,
                                   ipip_device=ipip_device, vxlan_device=vxlan_device)
        except TunnelError as exc:
            pending.append(str(exc))
            continue
        targets.append(Target(spec.dst, gateway=spec.gateway, ifname=spec.ifname,
                              onlink=spec.onlink))
        if spec.encap == Encap.VXLAN and spec.vtep is not None:
            vteps[spec.vtep.mac] = spec.vtep
    return RemoteRoutes(tuple(targets), tuple(vteps.values()), tuple(pending))


# --- managers --------------------------------------------------------------------------
@dataclass
class RemoteBlockManager:
    routes: RouteTable
    local: LocalUnderlay
    vxlan_device: str = VXLAN_DEVICE
    ipip_device: str = IPIP_DEVICE
    pools: dict[str, PoolEncap] = field(default_factory=dict)
    blocks: dict[str, RemoteBlock] = field(default_factory=dict)
    nodes: dict[str, RemoteNode] = field(default_factory=dict)
    vteps: tuple[Vtep, ...] = ()
    _dirty: bool = True

    def on_update(self, msg: DataplaneUpdate) -> None:
        if isinstance(msg, PoolsUpdate):
            if dict(msg.encaps) != self.pools:
                self.pools = dict(msg.encaps)
                self._dirty = True
        elif isinstance(msg, RemoteNodesUpdate):
            nodes = {n.name: n for n in msg.nodes}
            if nodes != self.nodes:
                self.nodes = nodes
                self._dirty = True

    def on_pool_update(self, cidr: str, encap: PoolEncap) -> None:
        self.pools[cidr] = encap
        self._dirty = True

    def on_pool_remove(self, cidr: str) -> None:
        self._dirty |= self.pools.pop(cidr, None) is not None

    def on_block_update(self, block: RemoteBlock) -> None:
        self.blocks[block.cidr] = block
        self._dirty = True

    def on_block_remove(self, cidr: str) -> None:
        self._dirty |= self.blocks.pop(cidr, None) is not None

    def on_node_update(self, node: RemoteNode) -> None:
        self.nodes[node.name] = node
        self._dirty = True

    def on_node_remove(self, name: str) -> None:
        self._dirty |= self.nodes.pop(name, None) is not None

    def complete_deferred_work(self) -> None:
        if not self._dirty:
            return
        rr = compute_remote_routes(self.pools, self.blocks.values(), self.nodes, self.local,
                                   self.vxlan_device, self.ipip_device)
        self.routes.set_routes(CLASS_REMOTE_BLOCKS, rr.targets)
        self.vteps = rr.vteps
        for reason in rr.pending:
            log.info("remote_block_pending", reason=reason)
        self._dirty = False


@dataclass
class TunnelDeviceManager:
    """Ensures tunl0 / the vxlan device and the VTEP peers on it."""

    ipr: object
    routes: RouteTable
    vxlan: VxlanParams | None = None
    ipip_mtu: int | None = None
    ipip_address: str | None = None
    ipip_enabled: bool = False
    _dirty: bool = True
    _vteps: tuple[Vtep, ...] | None = None
    _vteps_applied: tuple[Vtep, ...] | None = None

    def on_update(self, msg: DataplaneUpdate) -> None:
        if isinstance(msg, VxlanDeviceUpdate):
            params = VxlanParams(vni=msg.vni, port=msg.port, local=msg.local, mtu=msg.mtu,
                                 address=msg.address, mac=msg.mac, name=msg.name)
            if params != self.vxlan:
                self.on_vxlan_update(params)
        elif isinstance(msg, IpipDeviceUpdate):
            if (msg.enabled, msg.mtu, msg.address) != (self.ipip_enabled, self.ipip_mtu,
                                                       self.ipip_address):
                self.on_ipip_update(msg.enabled, msg.mtu, msg.address)

    def on_vxlan_update(self, params: VxlanParams | None) -> None:
        self.vxlan = params
        self._dirty = True

    def on_ipip_update(self, enabled: bool, mtu: int | None, address: str | None) -> None:
        self.ipip_enabled, self.ipip_mtu, self.ipip_address = enabled, mtu, address
        self._dirty = True

    def on_vteps(self, vteps: tuple[Vtep, ...]) -> None:
        self._vteps = vteps

    def queue_resync(self) -> None:
        self._dirty = True
        self._vteps_applied = None

    def complete_deferred_work(self) -> None:
        if self._dirty:
            changed = False
            if self.ipip_enabled:
                probe_kind(self.ipr, "ipip")  # TunnelUnsupported names mode + module
                r = ensure_ipip(self.ipr, self.ipip_mtu or 1480, self.ipip_address)
                changed |= r.created or r.recreated
            if self.vxlan is not None:
                probe_kind(self.ipr, "vxlan")
                r = ensure_vxlan(self.ipr, self.vxlan)
                changed |= r.created or r.recreated
                self._vteps_applied = None
            if changed:  # indexes changed: re-resolve routes through the tunnel devices
                names = {IPIP_DEVICE} | ({self.vxlan.name} if self.vxlan else set())
                self.routes.on_links_changed(names)
            self._dirty = False
        if self.vxlan is not None and self._vteps is not None \
                and self._vteps != self._vteps_applied:
            sync_vxlan_peers(self.ipr, self._vteps, self.vxlan.name)
            self._vteps_applied = self._vteps


@dataclass
class WorkloadManager:
    """Host side of pod veths: proxy ARP on the veth and a /32 route to each address."""

    routes: RouteTable
    sysctls: Sysctls
    endpoints: dict[str, WorkloadEndpoint] = field(default_factory=dict)
    _configured: dict[str, WorkloadEndpoint] = field(default_factory=dict)
    _dirty: bool = True

    def on_update(self, msg: DataplaneUpdate) -> None:
        if isinstance(msg, WorkloadsUpdate):
            self.replace_all(msg.endpoints)

    def on_endpoint_update(self, ep: WorkloadEndpoint) -> None:
        self.endpoints[ep.name] = ep
        self._dirty = True

    def on_remove(self, name: str) -> None:
        self._dirty |= self.endpoints.pop(name, None) is not None
        self._configured.pop(name, None)

    def replace_all(self, endpoints: Iterable[WorkloadEndpoint]) -> None:
        new = {ep.name: ep for ep in endpoints}
        for name in self.endpoints.keys() - new.keys():
            self.on_remove(name)
        for ep in new.values():
            if self.endpoints.get(ep.name) != ep:
                self.on_endpoint_update(ep)

    def complete_deferred_work(self) -> None:
        if not self._dirty:
            return
        for ep in self.endpoints.values():
            if self._configured.get(ep.name) == ep:
                continue
            try:
                # proxy_arp: the pod's default route points at the host veth;
                # the host answers ARP for any address it routes elsewhere.
                self.sysctls.set(conf_key(ep.host_ifname, "proxy_arp"), "1")
                # Answer at once: the default proxy_delay holds replies back up
                # to 0.8 s, which every new pod would feel on its first packet.
                self.sysctls.set(("net", "ipv4", "neigh", ep.host_ifname, "proxy_delay"), "0")
                # Strict reverse-path check: a pod cannot spoof another source.
                self.sysctls.set(conf_key(ep.host_ifname, "rp_filter"), "1")
            except SysctlError as exc:
                log.info("workload_interface_missing", endpoint=ep.name, error=str(exc))
                continue  # stays unconfigured; retried next time
            self._configured[ep.name] = ep
        self.routes.set_routes(CLASS_WORKLOAD, [
            # A host route per address: /32, or /128 for a dual-stack pod's IPv6 one.
            Target(f"{a}/{128 if ':' in a else 32}", ifname=ep.host_ifname)
            for ep in self.endpoints.values() for a in ep.addresses])
        # A (re)created veth has a new index.
        self.routes.on_links_changed({ep.host_ifname for ep in self.endpoints.values()})
        self._dirty = len(self._configured) != len(self.endpoints)


@dataclass
class BlackholeManager:
    """A blackhole route for every block this node owns (so the whole block is ours)."""

    routes: RouteTable
    blocks: tuple[str, ...] = ()
    _dirty: bool = False

    def on_update(self, msg: DataplaneUpdate) -> None:
        if isinstance(msg, OwnBlocksUpdate):
            blocks = tuple(sorted(set(msg.blocks)))
            if blocks != self.blocks:
                self.blocks = blocks
                self._dirty = True

    def complete_deferred_work(self) -> None:
        if self._dirty:
            self.routes.set_routes(CLASS_BLACKHOLE,
                                   [Target(b, type="blackhole") for b in self.blocks])
            self._dirty = False


@dataclass
class NatManager:
    """NAT outgoing for the pools that ask for it (``NatOutgoing`` does the nftables)."""

    nat: NatOutgoing

    def on_update(self, msg: DataplaneUpdate) -> None:
        if isinstance(msg, PoolsUpdate):
            self.nat.on_update(msg.all_pools, msg.nat_pools)

    def complete_deferred_work(self) -> None:
        self.nat.complete_deferred_work()


@dataclass
class PolicyDataplaneManager:
    """Feeds ``PolicyInputsUpdate`` to the ``PolicyManager`` (``felix_like.policy``).

    Before the first message (the policy kinds not in sync yet) it does nothing: the
    kernel keeps whatever table it has, so a restart never opens pods a policy closed.
    With no policy at all there is no table (our table drops traffic of a workload
    interface it has not programmed yet -- fail closed -- which a cluster without
    policy must not pay for); the first policy creates it, the last one's deletion
    removes it. A failed nft apply is logged and retried next apply (the manager then
    replaces the whole table); routes are applied regardless."""

    manager: PolicyManager
    inputs: PolicyInputsUpdate | None = None
    last_error: str = ""
    _table_present: bool | None = None        # None: unknown (at start)

    def on_update(self, msg: DataplaneUpdate) -> None:
        if isinstance(msg, PolicyInputsUpdate) and msg != self.inputs:
            self.inputs = msg
            self.manager.replace_all((*msg.policies, *msg.namespaces, *msg.endpoints))

    def queue_resync(self) -> None:
        self.manager.queue_resync()
        if self._table_present is False:
            self._table_present = None        # make sure it is still absent

    def complete_deferred_work(self, now: float) -> None:
        if self.inputs is None:
            return
        try:
            if not self.inputs.policies:
                if self._table_present is not False:
                    self.manager.remove()
                    self._table_present = False
                    log.info("policy_table_removed", reason="no policy")
                self.last_error = ""
                return
            self._table_present = True
            self.manager.complete_deferred_work(now)
            self.last_error = ""
        except DataplaneError as exc:      # PolicyApplyError, RenderError
            self.last_error = str(exc)
            log.error("policy_apply_failed", error=str(exc))


@dataclass
class Dataplane:
    """All managers of one node plus the route table; ``on_update`` is the one way in,
    ``apply()`` one loop step."""

    routes: RouteTable
    sysctls: Sysctls
    tunnels: TunnelDeviceManager
    remote: RemoteBlockManager
    workloads: WorkloadManager
    blackholes: BlackholeManager
    nat: NatOutgoing
    learned: LearnedRoutes | None = None
    policy: PolicyDataplaneManager | None = None
    rp_filter: str | None = None
    clock: object = time.monotonic
    _sysctls_done: bool = False

    def __post_init__(self) -> None:
        if self.learned is None:
            self.learned = LearnedRoutes(self.routes, CLASS_BGP,
                                         on_block_update=self.remote.on_block_update,
                                         on_block_remove=self.remote.on_block_remove)
        # Dependency order of complete_deferred_work (see the module docstring).
        self._nat_manager = NatManager(self.nat)
        self._managers = (self.learned, self.remote, self.tunnels, self.workloads,
                          self.blackholes, self._nat_manager,
                          *((self.policy,) if self.policy is not None else ()))

    @classmethod
    def create(cls, ipr, routes: RouteTable, local: LocalUnderlay, netns: str | None = None,
               vxlan_device: str = VXLAN_DEVICE, rp_filter: str | None = None,
               policy: PolicyManager | None = None) -> Dataplane:
        sysctls = Sysctls(netns)
        return cls(routes=routes, sysctls=sysctls,
                   tunnels=TunnelDeviceManager(ipr, routes),
                   remote=RemoteBlockManager(routes, local, vxlan_device=vxlan_device),
                   workloads=WorkloadManager(routes, sysctls),
                   blackholes=BlackholeManager(routes),
                   nat=NatOutgoing(netns), rp_filter=rp_filter,
                   policy=PolicyDataplaneManager(policy) if policy is not None else None)

    @classmethod
    def for_node(cls, ipr, local: LocalUnderlay, protocol: int, resync_interval: float,
                 clock, vxlan_device: str = VXLAN_DEVICE,
                 policy: PolicyManager | None = None) -> Dataplane:
        """The daemon's dataplane: a route table over real netlink (``ipr``'s namespace)
        owning ``protocol``, and every manager; the route table stays inside."""
        from felix_like.routetable import KernelRouteDriver

        routes = RouteTable(driver=KernelRouteDriver(ipr=ipr), protocol=protocol,
                            class_order=CLASS_ORDER, resync_interval=resync_interval,
                            clock=clock)
        dp = cls.create(ipr, routes, local, vxlan_device=vxlan_device, policy=policy)
        dp.clock = clock
        return dp

    def on_update(self, msg: DataplaneUpdate) -> None:
        """Hand one message to every manager; each records what concerns it (no I/O)."""
        for manager in self._managers:
            manager.on_update(msg)

    def queue_resync(self) -> None:
        self._sysctls_done = False
        self.tunnels.queue_resync()
        self.nat.queue_resync()
        if self.policy is not None:
            self.policy.queue_resync()
        self.routes.queue_resync()

    def mark_in_sync(self) -> None:
        """Every route source is complete: stale routes of ours may now be deleted."""
        self.routes.mark_in_sync()

    def policy_stats(self):
        """The policy manager's ``PolicyStats`` (None without network policy)."""
        return self.policy.manager.stats() if self.policy is not None else None

    @property
    def policy_error(self) -> str:
        """The last policy apply's error ("" when it worked or there is no policy)."""
        return self.policy.last_error if self.policy is not None else ""

    @property
    def routes_in_sync(self) -> bool:
        return self.routes.in_sync

    def learned_pending(self) -> list[tuple[str, str]]:
        """Learned prefixes that are not routed, with the reason."""
        return self.learned.pending()

    def desired_snapshot(self) -> DesiredRoutes:
        """A frozen copy of the desired routes per class, for other threads."""
        return self.routes.desired_snapshot()

    def apply(self, now: float | None = None) -> ApplyResult:
        """One loop step; ``now`` is the caller's clock (the policy manager's resync and
        drift timers), ``self.clock()`` when not given."""
        if not self._sysctls_done:
            self.sysctls.ensure(node_sysctls(self.rp_filter))
            self._sysctls_done = True
        learned, remote, tunnels = self._managers[:3]
        learned.complete_deferred_work()
        remote.complete_deferred_work()
        # Every known node's VTEP, not only those routes use right now: after a restart
        # the routes come back from BGP a moment after the registry, and syncing only the
        # in-use VTEPs would delete the neighbour/FDB entries live traffic still needs.
        tunnels.on_vteps(tuple(sorted(
            (n.vtep for n in remote.nodes.values() if n.vtep is not None),
            key=lambda v: v.underlay)))
        for manager in (tunnels, self.workloads, self.blackholes, self._nat_manager):
            manager.complete_deferred_work()
        if self.policy is not None:
            self.policy.complete_deferred_work(self.clock() if now is None else now)
        return self.routes.apply()
