"""Policy calculation (pure): resources -> what one node's dataplane must enforce.

Input: every NetworkPolicy, Namespace and WorkloadEndpoint of the cluster and the
node's name. Output: a ``PolicyPlan`` — per local endpoint the ordered policy
chains of each direction (``None`` = no policy selects the pod in that direction,
so it is not isolated and everything passes), the rules of each policy chain, and
the contents of the named sets those rules use. Like Felix's active rules
calculator, only policies that select a local endpoint are kept, and only the sets
their rules reference.

Kubernetes semantics (k8s.io/api networking/v1): a pod is isolated in a direction
iff a policy selecting it has that type; allowed = the union of those policies'
rules. A peer with only podSelector means the policy's namespace, only
namespaceSelector means every pod of the matching namespaces, both means AND.
ipBlock = cidr minus excepts (as disjoint CIDRs for an interval set). Named ports
resolve on the destination pod: an (address, protocol, port) set of the pods that
can be the destination (the selected pods for ingress; the peer's pods, or every
pod, for egress).

Ordering (Calico's): policies in (order, name) order, Kubernetes policies at 1000,
rules in list order, the first rule that matches decides — Allow ends this
direction's policy evaluation with a pass, Deny drops. With only Kubernetes
policies (all Allow) this is exactly the union.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from felix_like.policy_model import (
    Namespace,
    NetworkPolicy,
    Peer,
    PortSpec,
    Rule,
    WorkloadEndpoint,
)

ALLOW = "allow"
DENY = "deny"


@dataclass(frozen=True)
class RuleMatch:
    """One dataplane rule: all conditions must hold (None = no condition)."""

    action: str                                  # ALLOW | DENY
    src_set: str | None = None                   # address set (ingress peers)
    dst_set: str | None = None                   # address set (egress peers)
    protocol: str | None = None                  # tcp | udp | sctp
    port_range: tuple[int, int] | None = None    # destination ports, inclusive
    named_port_set: str | None = None            # (dst address, protocol, port) set


@dataclass(frozen=True)
class PolicyChain:
    name: str
    policy: tuple[str, str, str]                 # (kind, namespace, name)
    direction: str                               # Ingress | Egress
    rules: tuple[RuleMatch, ...]


@dataclass(frozen=True)
class EndpointPlan:
    interface: str
    endpoint: tuple[str, str]                    # (namespace, pod)
    addresses: tuple[str, ...]
    ingress: tuple[str, ...] | None              # policy chain names in order; None = open
    egress: tuple[str, ...] | None


@dataclass(frozen=True)
class PolicyPlan:
    endpoints: tuple[EndpointPlan, ...]
    chains: tuple[PolicyChain, ...]
    address_sets: tuple[tuple[str, frozenset[str]], ...]     # name -> CIDRs/addresses
    named_port_sets: tuple[tuple[str, frozenset[tuple[str, str, int]]], ...]
    conflicts: tuple[str, ...] = ()              # endpoints left unprogrammed, and why

    def address_set(self, name: str) -> frozenset[str]:
        return dict(self.address_sets)[name]

    def named_port_set(self, name: str) -> frozenset[tuple[str, str, int]]:
        return dict(self.named_port_sets)[name]


def _digest(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def policy_chain_name(policy: NetworkPolicy, direction: str) -> str:
    return f"p{'i' if direction == 'Ingress' else 'e'}-{_digest(*policy.key)}"


def peer_set_name(policy: NetworkPolicy, peer: Peer) -> str:
    """The address set of a peer: named by what decides its contents, so two rules
    with the same peer share one set and a chain never changes when members do."""
    if peer.ip_block is not None:
        return f"b-{_digest('block', peer.ip_block.ranges())}"
    scope = policy.namespace if peer.namespace_selector is None else None
    return f"s-{_digest('sel', scope, peer.namespace_selector and peer.namespace_selector.canonical(), peer.pod_selector and peer.pod_selector.canonical())}"  # noqa: E501


def named_set_name(policy: NetworkPolicy, direction: str, peer: Peer | None,
                   port: PortSpec) -> str:
    """The (address, protocol, port) set of a named port in a rule (see ``_Builder.named_set``
    for its candidates)."""
    if direction == "Ingress":
        key: tuple = ("in", policy.key)
    elif peer is not None and peer.ip_block is None:
        key = ("out", policy.namespace,
               peer.namespace_selector and peer.namespace_selector.canonical(),
               peer.pod_selector and peer.pod_selector.canonical())
    else:
        key = ("any",)
    return f"n-{_digest('np', key, port.port, port.protocol)}"


class _Builder:
    def __init__(self, namespaces: Iterable[Namespace], endpoints: Iterable[WorkloadEndpoint]):
        self.ns_labels = {ns.name: ns.label_map for ns in namespaces}
        self.endpoints = sorted(endpoints, key=lambda e: e.key)
        self.address_sets: dict[str, frozenset[str]] = {}
        self.named_sets: dict[str, frozenset[tuple[str, str, int]]] = {}

    def labels_of_namespace(self, name: str) -> dict[str, str]:
        # A namespace not (yet) known still carries the label Kubernetes always sets.
        return self.ns_labels.get(name, {"kubernetes.io/metadata.name": name})

    def peer_endpoints(self, policy: NetworkPolicy, peer: Peer) -> list[WorkloadEndpoint]:
        out = []
        for ep in self.endpoints:
            if peer.namespace_selector is None:
                if ep.namespace != policy.namespace:
                    continue
            elif not peer.namespace_selector.matches(self.labels_of_namespace(ep.namespace)):
                continue
            if peer.pod_selector is not None and not peer.pod_selector.matches(ep.label_map):
                continue
            out.append(ep)
        return out

    def selected(self, policy: NetworkPolicy) -> list[WorkloadEndpoint]:
        return [ep for ep in self.endpoints
                if ep.namespace == policy.namespace and policy.pod_selector.matches(ep.label_map)]

    def peer_set(self, policy: NetworkPolicy, peer: Peer) -> str:
        name = peer_set_name(policy, peer)
        if peer.ip_block is not None:
            self.address_sets[name] = frozenset(peer.ip_block.ranges())
            return name
        self.address_sets[name] = frozenset(
            ip for ep in self.peer_endpoints(policy, peer) for ip in ep.ips)
        return name

    def named_set(self, policy: NetworkPolicy, direction: str, peer: Peer | None,
                  port: PortSpec) -> str:
        if direction == "Ingress":
            # The destination is the selected pod itself.
            candidates = self.selected(policy)
        elif peer is not None and peer.ip_block is None:
            candidates = self.peer_endpoints(policy, peer)
        else:
            # Any destination / an ipBlock: only pods can have named ports.
            candidates = self.endpoints
        name = named_set_name(policy, direction, peer, port)
        self.named_sets[name] = frozenset(
            (ip, np.protocol.lower(), np.port)
            for ep in candidates for np in ep.named_ports
            if np.name == port.port and np.protocol == port.protocol for ip in ep.ips)
        return name

    def rule_matches(self, policy: NetworkPolicy, direction: str, rule: Rule) -> list[RuleMatch]:
        action = ALLOW if rule.action == "Allow" else DENY
        peers: list[Peer | None] = list(rule.peers) or [None]
        ports: list[PortSpec | None] = list(rule.ports) or [None]
        out = []
        for peer in peers:
            addr_set = self.peer_set(policy, peer) if peer is not None else None
            for port in ports:
                kw: dict = {}
                if addr_set is not None:
                    kw["src_set" if direction == "Ingress" else "dst_set"] = addr_set
                if port is not None:
                    kw["protocol"] = port.protocol.lower()
                    if isinstance(port.port, int):
                        kw["port_range"] = (port.port, port.end_port or port.port)
                    elif isinstance(port.port, str):
                        kw["named_port_set"] = self.named_set(policy, direction, peer, port)
                out.append(RuleMatch(action, **kw))
        return out


def calculate(policies: Iterable[NetworkPolicy], namespaces: Iterable[Namespace],
              endpoints: Iterable[WorkloadEndpoint], node: str | None = None) -> PolicyPlan:
    """The plan for ``node``'s endpoints (every endpoint when ``node`` is None)."""
    b = _Builder(namespaces, endpoints)
    ordered = sorted(policies, key=NetworkPolicy.sort_key)
    local = [ep for ep in b.endpoints if node is None or ep.node == node]
    # Two endpoints claiming one host interface is a datastore conflict (a stale record
    # after a CNI DEL that never ran, or a bug). nft would silently merge their chains,
    # so program neither: the interface then falls to the fail-closed drop.
    claims: dict[str, list[WorkloadEndpoint]] = {}
    for ep in local:
        claims.setdefault(ep.host_interface, []).append(ep)
    conflicts = tuple(
        f"interface {ifname} claimed by " + ", ".join(f"{e.namespace}/{e.pod}" for e in eps)
        for ifname, eps in sorted(claims.items()) if len(eps) > 1)
    local = [ep for ep in local if len(claims[ep.host_interface]) == 1]
    chains: dict[str, PolicyChain] = {}
    plans = []
    for ep in sorted(local, key=lambda e: e.host_interface):
        per_dir: dict[str, list[str] | None] = {"Ingress": None, "Egress": None}
        for pol in ordered:
            if pol.namespace != ep.namespace or not pol.pod_selector.matches(ep.label_map):
                continue
            for direction in pol.policy_types:
                name = policy_chain_name(pol, direction)
                if name not in chains:
                    rules = pol.ingress if direction == "Ingress" else pol.egress
                    matches = [m for r in rules for m in b.rule_matches(pol, direction, r)]
                    chains[name] = PolicyChain(name, pol.key, direction, tuple(matches))
                per_dir[direction] = (per_dir[direction] or []) + [name]
        plans.append(EndpointPlan(
            ep.host_interface, ep.key, ep.ips,
            tuple(per_dir["Ingress"]) if per_dir["Ingress"] is not None else None,
            tuple(per_dir["Egress"]) if per_dir["Egress"] is not None else None))
    return PolicyPlan(
        tuple(plans),
        tuple(sorted(chains.values(), key=lambda c: c.name)),
        tuple(sorted(b.address_sets.items())),
        tuple(sorted(b.named_sets.items())),
        conflicts)


_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}


def _in_cidrs(address: str, cidrs: Iterable[str]) -> bool:
    addr = ipaddress.ip_address(address)
    return any(addr.version == net.version and addr in net
               for net in map(ipaddress.ip_network, cidrs))


def plan_allows(plan: PolicyPlan, src: str, dst: str, protocol: str | int, dport: int) -> bool:
    """Would the plan let a NEW connection src -> dst pass this node? (pure)

    The same decision the rendered chains make: the sender's egress if it is a
    local endpoint, then the receiver's ingress if it is one; in each, the policy
    chains in order and the first matching rule decides. Used to find established
    flows a policy change now denies (their conntrack entries are deleted), and a
    base for a future ``policy explain``.
    """
    proto = _PROTO_NAMES.get(protocol, None) if isinstance(protocol, int) else protocol.lower()
    sets = dict(plan.address_sets)
    named = dict(plan.named_port_sets)
    chains = {c.name: c for c in plan.chains}
    by_address = {ip: ep for ep in plan.endpoints for ip in ep.addresses}

    def matches(m: RuleMatch) -> bool:
        if m.src_set is not None and not _in_cidrs(src, sets[m.src_set]):
            return False
        if m.dst_set is not None and not _in_cidrs(dst, sets[m.dst_set]):
            return False
        if m.protocol is not None and m.protocol != proto:
            return False
        if m.port_range is not None and not m.port_range[0] <= dport <= m.port_range[1]:
            return False
        return m.named_port_set is None or (
            str(ipaddress.ip_address(dst)), proto, dport) in named[m.named_port_set]

    def direction_allows(chain_names: tuple[str, ...] | None) -> bool:
        if chain_names is None:
            return True
        for name in chain_names:
            for m in chains[name].rules:
                if matches(m):
                    return m.action == ALLOW
        return False

    sender, receiver = by_address.get(src), by_address.get(dst)
    if sender is not None and not direction_allows(sender.egress):
        return False
    return receiver is None or direction_allows(receiver.ingress)
