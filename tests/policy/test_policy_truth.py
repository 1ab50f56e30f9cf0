"""policy_calc + policy_nft, run through an interpreter of the rendered rules, must
give the oracle's truth table on the upstream e2e model (x,y,z x a,b,c; 80/81
TCP/UDP). On a mismatch both tables are printed as '.'/'X' grids."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix_like.policy_calc import calculate
from felix_like.policy_model import Namespace, NetworkPolicy, WorkloadEndpoint, load_documents
from felix_like.policy_nft import render_full
from tests.policy import model
from tests.policy.model import k8s, ours
from tests.policy.nft_eval import Packet, Ruleset
from tests.policy.oracle import PORTS, PROTOCOLS, Oracle, Pod, explain_mismatch, grid
from tests.policy.strategies import policy, port_spec

pytestmark = pytest.mark.unit


def product_table(pods, ns_labels, policies) -> tuple[dict, str]:
    resources = load_documents(model.resource_docs(pods, ns_labels) + policies, "case")
    plan = calculate([r for r in resources if isinstance(r, NetworkPolicy)],
                     [r for r in resources if isinstance(r, Namespace)],
                     [r for r in resources if isinstance(r, WorkloadEndpoint)], node="n1")
    script = render_full(plan)
    rules = Ruleset(script)
    table = {}
    for s in pods:
        for d in pods:
            if s is d:
                continue
            for port in PORTS:
                for proto in PROTOCOLS:
                    pkt = Packet(model.interface(s), model.interface(d), s.ip, d.ip,
                                 proto.lower(), port)
                    table[(s.id, d.id, port, proto)] = rules.forward(pkt)
    return table, script


def assert_matches_oracle(policies, pods=None, ns_labels=None) -> dict:
    pods = pods or model.pods()
    ns_labels = ns_labels or model.namespace_labels()
    expected = Oracle(ns_labels, pods, policies).table()
    actual, script = product_table(pods, ns_labels, policies)
    if actual != expected:
        pytest.fail(f"{explain_mismatch(pods, expected, actual)}\n\nruleset:\n{script}")
    return expected


SEL_X_A = {"matchLabels": {"pod": "a"}}

CASES = {
    "deny-all-ingress": [k8s("deny", "x", {"podSelector": {}})],
    "deny-all-egress": [k8s("deny", "x", {"podSelector": {}, "policyTypes": ["Egress"]})],
    "deny-all-both": [k8s("deny", "y", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})],
    "explicit-empty-ingress": [k8s("d", "x", {"podSelector": {}, "ingress": [],
                                               "policyTypes": ["Ingress"]})],
    "egress-empty-list-is-not-egress": [k8s("d", "x", {"podSelector": {}, "egress": []})],
    "allow-all-ingress": [k8s("all", "x", {"podSelector": {}, "ingress": [{}]})],
    "allow-from-namespace": [k8s("from-y", "x", {
        "podSelector": SEL_X_A,
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})],
    "allow-from-pod-in-other-namespace-AND": [k8s("yb", "x", {
        "podSelector": SEL_X_A,
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}]})],
    "namespace-OR-pod": [k8s("y-or-b", "x", {
        "podSelector": SEL_X_A,
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                              {"podSelector": {"matchLabels": {"pod": "b"}}}]}]})],
    "all-namespaces-pod-a": [k8s("any-a", "z", {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {},
                               "podSelector": {"matchLabels": {"pod": "a"}}}]}]})],
    "ipblock-with-except": [k8s("block", "x", {
        "podSelector": SEL_X_A,
        "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.200.0/28",
                                           "except": ["198.19.200.4/30"]}}]}]})],
    "egress-ipblock": [k8s("eblock", "y", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "198.19.200.0/29"}}], "ports": [{"port": 80}]}]})],
    "named-port-ingress": [k8s("web", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"port": "web"}, {"port": "serve-81-udp",
                                                                    "protocol": "UDP"}]}]})],
    "named-port-egress": [k8s("eweb", "y", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}],
                    "ports": [{"port": "web"}]}]})],
    "named-port-egress-any-peer": [k8s("eweb", "y", {
        "podSelector": {}, "egress": [{"ports": [{"port": "web"}]}]})],
    "endport-range-udp": [k8s("range", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 80,
                                                   "endPort": 81}]}]})],
    "egress-to-port-only": [k8s("p81", "x", {
        "podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 81}]}]})],
    "protocol-only": [k8s("udp", "z", {"podSelector": {}, "ingress": [{"ports": [
        {"protocol": "UDP"}]}]})],
    "multiple-policies-unioned": [
        k8s("from-y", "x", {"podSelector": SEL_X_A, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        k8s("c-on-80", "x", {"podSelector": SEL_X_A, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}], "ports": [{"port": 80}]}]}),
        k8s("egress-z", "x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
    ],
    "match-expressions": [k8s("expr", "y", {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In",
                                              "values": ["a", "b"]}]},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "NotIn", "values": ["x"]}]},
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]}}]}]})],
    # Same-node pod to pod runs the sender's egress chain and then the receiver's ingress
    # chain: an egress allow must RETURN (with the mark), not accept, or y/a's ingress
    # policy would be skipped for traffic from x.
    "egress-allow-then-ingress-deny": [
        k8s("x-to-y", "x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        k8s("ya-from-z", "y", {"podSelector": SEL_X_A, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
    ],
    "ipv6-block-does-not-match-ipv4": [k8s("v6", "x", {
        "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "2001:2::/48"}}]}]})],
    "deny-by-order-before-allow": [
        k8s("allow-all", "x", {"podSelector": {}, "ingress": [{}]}),
        ours("deny-y", "x", {"order": 10, "podSelector": {}, "ingress": [
            {"action": "Deny", "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    ],
    "allow-by-order-before-deny": [
        ours("deny-y-late", "x", {"order": 2000, "podSelector": {}, "ingress": [
            {"action": "Deny", "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]},
            {"action": "Allow"}]}),
        k8s("allow-y-a", "x", {"podSelector": {}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                       "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    ],
    "unordered-ours-after-k8s": [
        ours("deny-rest", "z", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"action": "Deny", "ports": [{"port": 80}]}, {}]}),
        k8s("allow-x", "z", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
    ],
    "same-order-ties-by-name": [
        ours("b-allow", "x", {"order": 5, "podSelector": {}, "ingress": [{}]}),
        ours("a-deny", "x", {"order": 5, "podSelector": {}, "ingress": [
            {"action": "Deny", "ports": [{"port": 81, "protocol": "UDP"}]}]}),
    ],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_matches_oracle(name):
    assert_matches_oracle(CASES[name])


# --- the oracle itself, against hand-written grids (as upstream's network_policy.go) ---
def test_oracle_deny_all_ingress_grid():
    pods = model.pods()
    table = Oracle(model.namespace_labels(), pods, CASES["deny-all-ingress"]).table()
    g = grid(pods, table, 80, "TCP").splitlines()
    # From x/a: its own namespace is closed, y and z are open.
    assert g[1].startswith("x/a") and g[1][4:].replace(" ", "") == "-XX" + "." * 6
    # Into x from anywhere: closed; into y/z: open.
    for s in pods:
        for d in pods:
            if s is not d:
                assert table[(s.id, d.id, 80, "TCP")] == (d.namespace != "x")


def test_oracle_named_port_resolves_on_destination():
    pods = model.pods()
    table = Oracle(model.namespace_labels(), pods, CASES["named-port-ingress"]).table()
    assert table[("y/a", "x/a", 80, "TCP")] and not table[("y/a", "x/a", 81, "TCP")]
    assert table[("y/a", "x/b", 81, "TCP")] and not table[("y/a", "x/b", 80, "TCP")]
    assert not table[("y/a", "x/c", 80, "TCP")] and not table[("y/a", "x/c", 81, "TCP")]
    assert table[("y/a", "x/c", 81, "UDP")] and not table[("y/a", "x/c", 80, "UDP")]


def test_oracle_ipblock_except():
    pods = model.pods()
    table = Oracle(model.namespace_labels(), pods, CASES["ipblock-with-except"]).table()
    allowed = sorted(s.id for s in pods if s.id != "x/a" and table[(s.id, "x/a", 80, "TCP")])
    # .1-.15 minus .4-.7: x/b (.2), x/c (.3), z/b (.8), z/c (.9)
    assert allowed == ["x/b", "x/c", "z/b", "z/c"]


def test_mismatch_is_printed_as_grids():
    pods = model.pods()
    exp = Oracle(model.namespace_labels(), pods, CASES["deny-all-ingress"]).table()
    act = dict(exp)
    act[("y/a", "x/a", 80, "TCP")] = True
    text = explain_mismatch(pods, exp, act)
    assert "expected (oracle):" in text and "1 cells differ" in text
    assert "TCP/80" in text and "y/a" in text


# --- random policies and labels ----------------------------------------------------------
_label_values = st.sampled_from(["a", "b", "c"])
_pod_sel = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"matchLabels": st.fixed_dictionaries({"pod": _label_values})}),
    st.fixed_dictionaries({"matchExpressions": st.lists(st.fixed_dictionaries({
        "key": st.sampled_from(["pod", "tier"]),
        "operator": st.sampled_from(["In", "NotIn"]),
        "values": st.lists(_label_values | st.just("web"), min_size=1, max_size=2,
                           unique=True)}), min_size=1, max_size=2)}),
    st.just({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
    st.just({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
)
_ns_sel = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"matchLabels": st.fixed_dictionaries(
        {"ns": st.sampled_from(["x", "y", "z"])})}),
    st.fixed_dictionaries({"matchExpressions": st.just([{"key": "team", "operator": "In",
                                                        "values": ["red"]}])}),
)
_cidrs = st.sampled_from([("198.19.200.0/28", ["198.19.200.4/30"]), ("198.19.200.0/29", []),
                          ("198.19.200.8/29", ["198.19.200.9/32"]), ("0.0.0.0/0", []),
                          ("198.18.0.0/24", [])])


@st.composite
def _peer(draw):
    kind = draw(st.sampled_from(["pod", "ns", "both", "block"]))
    if kind == "block":
        cidr, excepts = draw(_cidrs)
        block = {"cidr": cidr}
        if excepts:
            block["except"] = excepts
        return {"ipBlock": block}
    peer = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(_pod_sel)
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(_ns_sel)
    return peer


_port = port_spec([None, "TCP", "UDP", "SCTP"],
                  ["web", "serve-80-tcp", "serve-81-udp", "serve-80-udp", "missing"])


def _policy(index):
    return policy(f"p{index}", _pod_sel, _peer(), _port, ["x", "y", "z"],
                  [None, 1, 500, 1000, 1500])


@st.composite
def _scenario(draw):
    n = draw(st.integers(min_value=1, max_value=4))
    policies = [draw(_policy(i)) for i in range(n)]
    overrides = {}
    for ns in model.NAMESPACES:
        for name in model.POD_NAMES:
            if draw(st.integers(0, 3)) == 0:
                labels = {"pod": draw(_label_values)}
                if draw(st.booleans()):
                    labels["tier"] = draw(st.sampled_from(["web", "db"]))
                overrides[(ns, name)] = labels
    ns_labels = {}
    for ns in model.NAMESPACES:
        labels = {"ns": ns}
        if draw(st.booleans()):
            labels["team"] = draw(st.sampled_from(["red", "blue"]))
        ns_labels[ns] = labels
    return policies, overrides, ns_labels


def v6_pods(overrides=None):
    """The same model with IPv6 addresses (2001:2::/48, the lab's IPv6 range)."""
    return [Pod(p.namespace, p.name, f"2001:2::{i + 1}", p.labels, p.named_ports)
            for i, p in enumerate(model.pods(overrides))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_matches_oracle_ipv6(name):
    policies = CASES[name]
    if name == "ipv6-block-does-not-match-ipv4":
        # Here the block does match: every pod is inside 2001:2::/48.
        table = assert_matches_oracle(policies, v6_pods())
        assert table[("y/a", "x/a", 80, "TCP")]
    else:
        assert_matches_oracle(policies, v6_pods())


def test_ipv6_block_except():
    policies = [k8s("v6", "x", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {
        "cidr": "2001:2::/120", "except": ["2001:2::4/126"]}}]}]})]
    table = assert_matches_oracle(policies, v6_pods())
    assert not table[("y/a", "x/a", 80, "TCP")] and table[("z/b", "x/a", 80, "TCP")]


@settings(max_examples=int(os.environ.get("POLICY_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenario())
def test_random_policies_match_oracle(scenario):
    policies, overrides, ns_labels = scenario
    assert_matches_oracle(policies, model.pods(overrides), ns_labels)
