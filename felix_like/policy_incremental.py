"""Incremental policy calculation (issue 14): the same ``PolicyPlan`` as
``policy_calc.calculate``, kept up to date one update at a time.

``calculate`` matches every policy against every endpoint and every peer selector
against every endpoint: ~1-3 s at 1,000 policies x 1,000 pods, on every change.
Here, as in Felix's calculation graph, the work of one update is bounded by what it
can touch:

- a policy's chains (rules and the NAMES of the sets they use) depend on the policy
  alone (set names are digests of their selectors, ``peer_set_name``): computed once
  per policy version;
- which local endpoints a policy selects: an endpoint update re-matches only the
  policies of its namespace; a policy update only the local endpoints of its
  namespace (index: namespace -> endpoints, namespace -> policies);
- set contents: per set, each endpoint's contribution; an endpoint update
  recomputes its own contribution to each set, a namespace's label change the
  contributions of that namespace's endpoints to the sets with a namespace
  selector; a set's frozenset is rebuilt only when a contribution changed;
- an ``EndpointPlan`` is rebuilt only for endpoints whose selecting policies (or
  their order or types) or own record changed.

``plan()`` assembles the ``PolicyPlan`` from those pieces (sorting ~1,000 names).
``calculate`` stays the reference: tests/policy/test_policy_incremental.py checks,
over random update sequences, that both give equal plans.

Keys are the manager's: a policy's ``key``, a namespace's name, an endpoint's
``(node, namespace, pod)`` (one pod seen on two nodes is two endpoints).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from felix_like.policy_calc import (
    EndpointPlan,
    PolicyChain,
    PolicyPlan,
    _Builder,
    named_set_name,
    peer_set_name,
    policy_chain_name,
)
from felix_like.policy_model import (
    Namespace,
    NetworkPolicy,
    Peer,
    PortSpec,
    Selector,
    WorkloadEndpoint,
)

EndpointKey = tuple[str, str, str]          # (node, namespace, pod)


@dataclass(frozen=True)
class MemberSpec:
    """Which endpoints a set holds and what each contributes (``calculate``'s
    ``peer_endpoints`` / ``selected`` / every endpoint, as data)."""

    scope: str | None                       # only this namespace (None = any)
    namespace_selector: Selector | None     # namespaces whose labels match (None = any)
    pod_selector: Selector | None           # pods whose labels match (None = any)
    named_port: tuple[str, str] | None      # (name, protocol): named-port items; None: IPs

    def holds(self, ep: WorkloadEndpoint, ep_labels: dict[str, str],
              ns_labels: Callable[[str], dict[str, str]]) -> bool:
        if self.scope is not None and ep.namespace != self.scope:
            return False
        if (self.namespace_selector is not None
                and not self.namespace_selector.matches(ns_labels(ep.namespace))):
            return False
        return self.pod_selector is None or self.pod_selector.matches(ep_labels)

    def items(self, ep: WorkloadEndpoint) -> frozenset:
        if self.named_port is None:
            return frozenset(ep.ips)
        name, protocol = self.named_port
        return frozenset((ip, np.protocol.lower(), np.port)
                         for np in ep.named_ports if np.name == name and np.protocol == protocol
                         for ip in ep.ips)


class _SpecRecorder(_Builder):
    """``calculate``'s rule building, with sets recorded as specs instead of filled:
    the chains come out of the very code the reference uses."""

    def __init__(self) -> None:
        super().__init__((), ())
        self.address_specs: dict[str, MemberSpec | frozenset[str]] = {}
        self.named_specs: dict[str, MemberSpec] = {}

    def peer_set(self, policy: NetworkPolicy, peer: Peer) -> str:
        name = peer_set_name(policy, peer)
        if peer.ip_block is not None:
            self.address_specs[name] = frozenset(peer.ip_block.ranges())
        else:
            self.address_specs[name] = _peer_spec(policy, peer, None)
        return name

    def named_set(self, policy: NetworkPolicy, direction: str, peer: Peer | None,
                  port: PortSpec) -> str:
        named = (port.port, port.protocol)
        if direction == "Ingress":
            spec = MemberSpec(policy.namespace, None, policy.pod_selector, named)
        elif peer is not None and peer.ip_block is None:
            spec = _peer_spec(policy, peer, named)
        else:
            spec = MemberSpec(None, None, None, named)
        name = named_set_name(policy, direction, peer, port)
        self.named_specs[name] = spec
        return name


def _peer_spec(policy: NetworkPolicy, peer: Peer, named: tuple[str, str] | None) -> MemberSpec:
    scope = policy.namespace if peer.namespace_selector is None else None
    return MemberSpec(scope, peer.namespace_selector, peer.pod_selector, named)


@dataclass
class _PolicyInfo:
    policy: NetworkPolicy
    chains: tuple[PolicyChain, ...]                   # in policy_types order
    address_specs: dict[str, MemberSpec | frozenset[str]]
    named_specs: dict[str, MemberSpec]


def _policy_info(policy: NetworkPolicy) -> _PolicyInfo:
    rec = _SpecRecorder()
    chains = []
    for direction in policy.policy_types:
        rules = policy.ingress if direction == "Ingress" else policy.egress
        matches = [m for r in rules for m in rec.rule_matches(policy, direction, r)]
        chains.append(PolicyChain(policy_chain_name(policy, direction), policy.key, direction,
                                  tuple(matches)))
    return _PolicyInfo(policy, tuple(chains), rec.address_specs, rec.named_specs)


class _SetState:
    """One selector-driven set: per endpoint what it contributes (non-empty only)."""

    def __init__(self, spec: MemberSpec) -> None:
        self.spec = spec
        self.refs = 0
        self.members: dict[EndpointKey, frozenset] = {}
        self._contents: frozenset | None = frozenset()

    def update(self, key: EndpointKey, items: frozenset) -> None:
        if items:
            if self.members.get(key) != items:
                self.members[key] = items
                self._contents = None
        elif self.members.pop(key, None) is not None:
            self._contents = None

    def contents(self) -> frozenset:
        if self._contents is None:
            self._contents = frozenset().union(*self.members.values())
        return self._contents


class IncrementalPolicyCalculator:
    """Holds the cluster's policy resources; ``plan()`` equals ``calculate`` over them
    for ``node`` (None = every endpoint is local)."""

    def __init__(self, node: str | None) -> None:
        self.node = node
        self._policies: dict[tuple[str, str, str], _PolicyInfo] = {}
        self._policies_by_ns: dict[str, set[tuple[str, str, str]]] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._endpoints: dict[EndpointKey, WorkloadEndpoint] = {}
        self._ep_labels: dict[EndpointKey, dict[str, str]] = {}
        self._endpoints_by_ns: dict[str, set[EndpointKey]] = {}
        # Local endpoints: which policies select each, and the reverse.
        self._selected_by: dict[EndpointKey, set[tuple[str, str, str]]] = {}
        self._selects: dict[tuple[str, str, str], set[EndpointKey]] = {}
        self._ep_plans: dict[EndpointKey, EndpointPlan] = {}
        self._dirty_eps: set[EndpointKey] = set()
        self._sets: dict[str, _SetState] = {}          # selector sets, address and named
        self._block_sets: dict[str, tuple[frozenset[str], int]] = {}   # contents, refs

    # --- inputs ------------------------------------------------------------------------
    def _ns_labels(self, name: str) -> dict[str, str]:
        # A namespace not (yet) known still carries the label Kubernetes always sets.
        labels = self._namespaces.get(name)
        return labels if labels is not None else {"kubernetes.io/metadata.name": name}

    def _is_local(self, ep: WorkloadEndpoint) -> bool:
        return self.node is None or ep.node == self.node

    def upsert_policy(self, policy: NetworkPolicy) -> None:
        key = policy.key
        old = self._policies.get(key)
        if old is not None and old.policy == policy:
            return
        if old is not None:
            self._drop_policy(key)
        info = _policy_info(policy)
        self._policies[key] = info
        self._policies_by_ns.setdefault(policy.namespace, set()).add(key)
        for name, spec in info.address_specs.items():
            self._ref_set(name, spec)
        for name, spec in info.named_specs.items():
            self._ref_set(name, spec)
        selected = set()
        for ek in self._endpoints_by_ns.get(policy.namespace, ()):
            if ek in self._selected_by and policy.pod_selector.matches(self._ep_labels[ek]):
                selected.add(ek)
                self._selected_by[ek].add(key)
        self._selects[key] = selected
        self._dirty_eps |= selected

    def remove_policy(self, key: tuple[str, str, str]) -> None:
        if key in self._policies:
            self._drop_policy(key)

    def _drop_policy(self, key: tuple[str, str, str]) -> None:
        info = self._policies.pop(key)
        self._policies_by_ns[info.policy.namespace].discard(key)
        for name in (*info.address_specs, *info.named_specs):
            self._unref_set(name)
        for ek in self._selects.pop(key):
            self._selected_by[ek].discard(key)
            self._dirty_eps.add(ek)

    def _ref_set(self, name: str, spec: MemberSpec | frozenset[str]) -> None:
        if isinstance(spec, frozenset):
            contents, refs = self._block_sets.get(name, (spec, 0))
            self._block_sets[name] = (contents, refs + 1)
            return
        state = self._sets.get(name)
        if state is None:
            state = self._sets[name] = _SetState(spec)
            for ek, ep in self._endpoints.items():
                if spec.holds(ep, self._ep_labels[ek], self._ns_labels):
                    state.update(ek, spec.items(ep))
        state.refs += 1

    def _unref_set(self, name: str) -> None:
        if name in self._block_sets:
            contents, refs = self._block_sets[name]
            if refs == 1:
                del self._block_sets[name]
            else:
                self._block_sets[name] = (contents, refs - 1)
            return
        state = self._sets[name]
        state.refs -= 1
        if state.refs == 0:
            del self._sets[name]

    def upsert_namespace(self, ns: Namespace) -> None:
        self._set_namespace_labels(ns.name, ns.label_map)

    def remove_namespace(self, name: str) -> None:
        self._set_namespace_labels(name, None)

    def _set_namespace_labels(self, name: str, labels: dict[str, str] | None) -> None:
        if self._namespaces.get(name) == labels:
            return
        if labels is None:
            self._namespaces.pop(name, None)
        else:
            self._namespaces[name] = labels
        members = [(ek, self._endpoints[ek]) for ek in self._endpoints_by_ns.get(name, ())]
        for state in self._sets.values():
            if state.spec.namespace_selector is None:
                continue
            for ek, ep in members:
                self._refresh_member(state, ek, ep)

    def _refresh_member(self, state: _SetState, ek: EndpointKey,
                        ep: WorkloadEndpoint | None) -> None:
        if ep is not None and state.spec.holds(ep, self._ep_labels[ek], self._ns_labels):
            state.update(ek, state.spec.items(ep))
        else:
            state.update(ek, frozenset())

    def upsert_endpoint(self, ep: WorkloadEndpoint) -> None:
        ek = (ep.node, ep.namespace, ep.pod)
        old = self._endpoints.get(ek)
        if old == ep:
            return
        if old is not None:
            self.remove_endpoint(ek)
        self._endpoints[ek] = ep
        labels = self._ep_labels[ek] = ep.label_map
        self._endpoints_by_ns.setdefault(ep.namespace, set()).add(ek)
        for state in self._sets.values():
            self._refresh_member(state, ek, ep)
        if self._is_local(ep):
            selecting = set()
            for pk in self._policies_by_ns.get(ep.namespace, ()):
                if self._policies[pk].policy.pod_selector.matches(labels):
                    selecting.add(pk)
                    self._selects[pk].add(ek)
            self._selected_by[ek] = selecting
            self._dirty_eps.add(ek)

    def remove_endpoint(self, ek: EndpointKey) -> None:
        ep = self._endpoints.pop(ek, None)
        if ep is None:
            return
        del self._ep_labels[ek]
        self._endpoints_by_ns[ep.namespace].discard(ek)
        for state in self._sets.values():
            state.update(ek, frozenset())
        for pk in self._selected_by.pop(ek, ()):
            self._selects[pk].discard(ek)
        self._ep_plans.pop(ek, None)
        self._dirty_eps.discard(ek)

    # --- output ------------------------------------------------------------------------
    def _endpoint_plan(self, ek: EndpointKey) -> EndpointPlan:
        ep = self._endpoints[ek]
        per_dir: dict[str, list[str] | None] = {"Ingress": None, "Egress": None}
        ordered = sorted((self._policies[pk].policy for pk in self._selected_by[ek]),
                         key=NetworkPolicy.sort_key)
        for pol in ordered:
            for chain in self._policies[pol.key].chains:
                per_dir[chain.direction] = (per_dir[chain.direction] or []) + [chain.name]
        return EndpointPlan(
            ep.host_interface, ep.key, ep.ips,
            tuple(per_dir["Ingress"]) if per_dir["Ingress"] is not None else None,
            tuple(per_dir["Egress"]) if per_dir["Egress"] is not None else None)

    def plan(self) -> PolicyPlan:
        for ek in self._dirty_eps:
            self._ep_plans[ek] = self._endpoint_plan(ek)
        self._dirty_eps.clear()
        # Two endpoints claiming one host interface: program neither (see calculate).
        claims: dict[str, list[EndpointKey]] = {}
        for ek in self._selected_by:
            claims.setdefault(self._endpoints[ek].host_interface, []).append(ek)
        conflicts = tuple(
            f"interface {ifname} claimed by "
            + ", ".join(f"{ns}/{pod}" for _, ns, pod in sorted(eks, key=lambda k: (k[1], k[2])))
            for ifname, eks in sorted(claims.items()) if len(eks) > 1)
        local = sorted((eks[0] for eks in claims.values() if len(eks) == 1),
                       key=lambda ek: self._endpoints[ek].host_interface)
        active = {pk for ek in local for pk in self._selected_by[ek]}
        chains: dict[str, PolicyChain] = {}
        address_sets: dict[str, frozenset[str]] = {}
        named_sets: dict[str, frozenset] = {}
        for pk in active:
            info = self._policies[pk]
            chains.update((c.name, c) for c in info.chains)
            for name in info.address_specs:
                address_sets[name] = (self._block_sets[name][0] if name in self._block_sets
                                      else self._sets[name].contents())
            for name in info.named_specs:
                named_sets[name] = self._sets[name].contents()
        return PolicyPlan(
            tuple(self._ep_plans[ek] for ek in local),
            tuple(chains[name] for name in sorted(chains)),
            tuple(sorted(address_sets.items())),
            tuple(sorted(named_sets.items())),
            conflicts)
