"""The calculator: datastore snapshots in, the node's desired state out. Pure.

Inputs are immutable snapshots (the cycle hands over new ones when etcd or the
workloads change); the output is what the dataplane (as ``felix_like.updates``
messages, ``Desired.dataplane_updates()``) and the BGP speaker should make true. No
I/O, no clock: the same inputs always give the same output, which is what the unit
tests pin.

What it decides (the managers then decide *how*):
- owned blocks: confirmed blocks affine to this node → blackholes and
  announcements. Pending claims are never routed nor announced.
- workloads: local pods (from the CNI records) → /32 routes via their veths.
- the context learned routes are classified in (``learned_context``: our blocks,
  the pools, which next hop is which node): ``felix_like.classify`` then makes a
  route via a node's address inside a pool a *remote block*, anything else a plain
  route (equal paths via several routers: one ECMP route).
- network policy inputs (``policy_inputs``): this node's workloads joined with their
  WorkloadEndpoint records from etcd by (namespace, pod) -- a workload without a
  record lives in namespace ``default`` (or the one the CNI was told) with no labels;
  one whose record the watch has not caught up with waits, unprogrammed;
  other nodes' pods from their IPAM allocations joined with their records.
- mesh peers from the node registry; which pools give the tunnel devices their
  addresses (``tunnel_pools``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from bgpd.node.registry import MeshPeer, NodeInfo, mesh_peers
from felix_like import policy_model
from felix_like.updates import (
    DataplaneUpdate,
    LearnedContext,
    OwnBlocksUpdate,
    PolicyInputsUpdate,
    PoolsUpdate,
    RemoteNode,
    RemoteNodesUpdate,
    WorkloadEndpoint,
    WorkloadsUpdate,
    prefix_range,
)
from tunnels.encap import EncapMode, PoolEncap, Vtep


@dataclass(frozen=True)
class PoolView:
    cidr: str
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    nat_outgoing: bool = False
    disabled: bool = False

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def encap(self) -> PoolEncap:
        return PoolEncap(EncapMode(self.ipip_mode), EncapMode(self.vxlan_mode))


@dataclass(frozen=True)
class BlockView:
    cidr: str
    node: str | None
    confirmed: bool


@dataclass(frozen=True)
class Workload:
    name: str
    ip: str
    host_ifname: str
    namespace: str = "default"      # the pod's identity the CNI was given (K8S_POD_*)
    pod: str = ""                   # "" = unknown: the container id stands for it
    endpoint_revision: int = 0      # etcd revision of the WorkloadEndpoint the CNI wrote
    ip6: str = ""                   # its IPv6 address when the CNI made it dual stack (issue 15)

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.ip, self.ip6) if self.ip6 else (self.ip,)


@dataclass(frozen=True)
class PodAddress:
    """A pod address as IPAM recorded it: the allocating node and the pod identity the
    CNI was given (allocation attrs ``namespace``/``pod``)."""

    node: str
    namespace: str
    pod: str
    ip: str


@dataclass(frozen=True)
class PolicyView:
    """The policy resources from etcd (``NodeState``), once all three kinds are in sync,
    and every pod address of the cluster from IPAM (the peers of rule selectors)."""

    policies: tuple[policy_model.NetworkPolicy, ...] = ()
    namespaces: tuple[policy_model.Namespace, ...] = ()
    endpoints: tuple[policy_model.WorkloadEndpoint, ...] = ()
    pod_addresses: tuple[PodAddress, ...] = ()
    endpoints_revision: int = 0     # how far the endpoints' watch got (etcd revision)


@dataclass(frozen=True)
class Inputs:
    own: NodeInfo
    uplink: str
    pools: tuple[PoolView, ...] = ()
    blocks: tuple[BlockView, ...] = ()
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    workloads: tuple[Workload, ...] = ()
    borrowed: tuple[str, ...] = ()     # our pods' /32s inside other nodes' blocks
    mesh: bool = True
    policy: PolicyView | None = None   # None: the policy kinds are not in sync yet


@dataclass(frozen=True)
class Desired:
    own_blocks: tuple[str, ...]
    workloads: tuple[WorkloadEndpoint, ...]
    pool_encaps: Mapping[str, PoolEncap]
    remote_nodes: tuple[RemoteNode, ...]
    announce: frozenset[str]
    mesh_peers: tuple[MeshPeer, ...]
    nat_pools: tuple[str, ...]
    all_pools: tuple[str, ...]
    policy: PolicyInputsUpdate | None = None

    def dataplane_updates(self) -> tuple[DataplaneUpdate, ...]:
        """The whole desired dataplane state as messages for ``Dataplane.on_update``
        (each manager ignores what did not change)."""
        return (OwnBlocksUpdate(self.own_blocks),
                WorkloadsUpdate(self.workloads),
                PoolsUpdate(self.pool_encaps, self.all_pools, self.nat_pools),
                RemoteNodesUpdate(self.remote_nodes),
                *((self.policy,) if self.policy is not None else ()))


def policy_endpoints(node: str, workloads: tuple[Workload, ...],
                     records: tuple[policy_model.WorkloadEndpoint, ...],
                     pod_addresses: tuple[PodAddress, ...] = (),
                     endpoints_revision: int | None = None,
                     ) -> tuple[policy_model.WorkloadEndpoint, ...]:
    """This node's workloads as policy endpoints, then the other nodes' pods.

    One source of truth per fact: a local pod exists, with its interface and address,
    because the CNI's workload record says so (the kernel's truth, also what routes
    it); who it is -- labels, named ports -- is its WorkloadEndpoint in etcd, keyed by
    the (namespace, pod) in that record, written by CNI ADD (``args.cni.labels`` and
    ``.ports``) and changed by ``noderouter workload label``. A workload whose record
    names a WorkloadEndpoint revision the watch has not reached yet
    (``endpoints_revision``, None = do not wait) is left out: its interface stays
    unprogrammed, so it passes nothing (fail closed) rather than run for a moment
    without the labels a policy selects it by. Records of this node with no workload are stale and left out:
    their pod is gone. Another node's pod is known from its IPAM allocation (node,
    namespace, pod, address) and/or its record (labels, named ports, maybe IPs): one
    endpoint per (node, namespace, pod) with the addresses of both. Without a record it
    has no labels, so only selectors that match every pod of its namespace pick it."""
    mine = {(r.namespace, r.pod): r for r in records if r.node == node}
    out = []
    for w in sorted(workloads, key=lambda w: w.host_ifname):
        if endpoints_revision is not None and w.endpoint_revision > endpoints_revision:
            continue
        pod = w.pod or w.name
        rec = mine.get((w.namespace, pod))
        out.append(policy_model.WorkloadEndpoint(
            w.namespace, pod, rec.labels if rec else (), w.addresses, w.host_ifname, node,
            rec.named_ports if rec else ()))
    remote_records = {(r.node, r.namespace, r.pod): r for r in records if r.node != node}
    remote_ips: dict[tuple[str, str, str], set[str]] = {}
    for a in pod_addresses:
        if a.node != node:
            remote_ips.setdefault((a.node, a.namespace, a.pod), set()).add(a.ip)
    for key in sorted(remote_records.keys() | remote_ips.keys()):
        rec = remote_records.get(key)
        ips = set(remote_ips.get(key, ())) | set(rec.ips if rec else ())
        if not ips:
            continue
        out.append(policy_model.WorkloadEndpoint(
            key[1], key[2], rec.labels if rec else (), tuple(sorted(ips)), "", key[0],
            rec.named_ports if rec else ()))
    return tuple(out)


def policy_inputs(inp: Inputs) -> PolicyInputsUpdate | None:
    if inp.policy is None:
        return None
    key = policy_model.NetworkPolicy.sort_key
    return PolicyInputsUpdate(
        policies=tuple(sorted(inp.policy.policies, key=key)),
        namespaces=tuple(sorted(inp.policy.namespaces, key=lambda n: n.name)),
        endpoints=policy_endpoints(inp.own.name, inp.workloads, inp.policy.endpoints,
                                   inp.policy.pod_addresses, inp.policy.endpoints_revision))


def learned_context(inp: Inputs) -> LearnedContext:
    own = inp.own
    return LearnedContext(
        own_name=own.name,
        own_ranges=tuple(prefix_range(b.cidr) for b in inp.blocks
                         if b.node == own.name and b.confirmed),
        pool_ranges=tuple(prefix_range(p.cidr) for p in inp.pools),
        node_names_by_addr={n.address: n.name for n in inp.nodes.values()},
        subnet_range=prefix_range(own.subnet),
        uplink=inp.uplink)


def tunnel_pools(pools: tuple[PoolView, ...]) -> tuple[str | None, str | None]:
    """(VXLAN pool, IPIP pool): the first active pool that needs each tunnel device,
    whose range the device's address comes from; None when no pool needs it."""
    # IPv4 pools only: the IPIP and VXLAN devices carry an IPv4 address, and taking it from
    # an IPv6 pool (allowed in the config since issue 15) would break IPv4 encapsulation.
    active = [p for p in pools if not p.disabled and ":" not in p.cidr]
    return (next((p.cidr for p in active if p.vxlan_mode != "Never"), None),
            next((p.cidr for p in active if p.ipip_mode != "Never"), None))


def _net_order(cidr: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(cidr)
    return net.version, int(net.network_address), net.prefixlen


def _remote_node(n: NodeInfo) -> RemoteNode:
    vtep = Vtep(n.vtep_address, n.vtep_mac, n.address) if n.vtep_address and n.vtep_mac else None
    return RemoteNode(n.name, n.address, vtep)


def calculate(inp: Inputs) -> Desired:
    own = inp.own
    # Both families (issue 15): IPv4 first, then IPv6, each by address.
    own_blocks = tuple(sorted((b.cidr for b in inp.blocks if b.node == own.name and b.confirmed),
                              key=_net_order))
    workloads = tuple(WorkloadEndpoint(w.name, w.host_ifname, w.addresses)
                      for w in sorted(inp.workloads, key=lambda w: _net_order(w.ip)))
    return Desired(
        own_blocks=own_blocks,
        workloads=workloads,
        pool_encaps={p.cidr: p.encap for p in inp.pools},
        remote_nodes=tuple(_remote_node(n) for _, n in sorted(inp.nodes.items())
                           if n.name != own.name),
        # IPv4 only until the speaker has IPv6 sessions (issue 15): an IPv6 block still
        # gets its blackhole (own_blocks) but is not handed to the IPv4 speaker.
        announce=(frozenset(b for b in own_blocks if ":" not in b)
                  | frozenset(f"{ip}/32" for ip in inp.borrowed if ":" not in ip)),
        mesh_peers=mesh_peers(own, inp.nodes.values()) if inp.mesh else (),
        nat_pools=tuple(p.cidr for p in inp.pools if p.nat_outgoing),
        all_pools=tuple(p.cidr for p in inp.pools),
        policy=policy_inputs(inp),
    )
