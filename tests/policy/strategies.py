"""Hypothesis strategies for random NetworkPolicies, shared by the oracle test against the
calculation (tests/policy/test_policy_truth.py) and the lab matrix (tests/e2e/
test_policy_matrix.py). Each caller supplies what differs between them -- the selectors, the
peers (real CIDRs there, symbolic lab blocks here), the protocols and named ports its pods
serve, the namespaces and the orders -- and gets policies drawn the same way."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.policy.model import k8s, ours

POLICY_TYPES = st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]])


@st.composite
def port_spec(draw, protocols, named_ports):
    """One entry of a rule's ``ports``: no port, 80, 81, the range 80-81 or a named port."""
    proto = draw(st.sampled_from(protocols))
    kind = draw(st.sampled_from(["none", "80", "81", "range", "named"]))
    spec = {}
    if proto:
        spec["protocol"] = proto
    if kind in ("80", "81"):
        spec["port"] = int(kind)
    elif kind == "range":
        spec["port"], spec["endPort"] = 80, 81
    elif kind == "named":
        spec["port"] = draw(st.sampled_from(named_ports))
    return spec


@st.composite
def rule(draw, peers, ports, peer_key, extended):
    """An ingress (``from``) or egress (``to``) rule; ``extended`` adds Calico's action."""
    out = {}
    if draw(st.booleans()):
        out[peer_key] = draw(st.lists(peers, min_size=1, max_size=2))
    if draw(st.booleans()):
        out["ports"] = draw(st.lists(ports, min_size=1, max_size=2))
    if extended and draw(st.booleans()):
        out["action"] = draw(st.sampled_from(["Allow", "Deny"]))
    return out


@st.composite
def policy(draw, name, pod_selectors, peers, ports, namespaces, orders):
    """A k8s NetworkPolicy, or (half the time) a noderouter.io/v1 one with order and Deny."""
    extended = draw(st.booleans())
    spec = {"podSelector": draw(pod_selectors)}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(rule(peers, ports, "from", extended), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(rule(peers, ports, "to", extended), max_size=2))
    types = draw(POLICY_TYPES)
    if types:
        spec["policyTypes"] = types
    ns = draw(st.sampled_from(namespaces))
    if extended:
        order = draw(st.sampled_from(orders))
        if order is not None:
            spec["order"] = order
        return ours(name, ns, spec)
    return k8s(name, ns, spec)
