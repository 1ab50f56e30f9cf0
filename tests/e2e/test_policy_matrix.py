"""Network policy proven pair by pair in the lab (issue 14): the upstream e2e model
(x, y, z x a, b, c; TCP and UDP 80 and 81) on two nodes in different racks, real
daemons, etcd, CNI plugin, BGP through BIRD and FRR ToRs. Every case probes all 288
(source, destination, port, protocol) cells for real and must equal the oracle's
table (tests.policy.oracle, no product code); a mismatch prints both '.'/'X' grids.

The random cases (hypothesis) run ``POLICY_LAB_EXAMPLES`` examples (default 10,
derandomized: the same 10 on every run, so CI is stable); set it higher to search.
"""

from __future__ import annotations

import ipaddress
import os
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import build_lab
from tests.e2e.policy_lab import NAMESPACES, POD_NAMES, PolicyMatrix
from tests.policy.model import k8s, ours
from tests.policy.strategies import policy, port_spec

pytestmark = pytest.mark.e2e

T0 = time.monotonic()


@pytest.fixture(scope="module")
def matrix():
    lab = build_lab("tor", nodes_per_rack=1, pods_per_node=0)
    m = None
    try:
        t = time.monotonic()
        m = PolicyMatrix(lab).build()
        print(f"\nmodel built in {time.monotonic() - t:.1f}s {m.build_times}: "
              + ", ".join(f"{p.id}@{p.node}" for p in m.pods))
        yield m
    finally:
        if m is not None:
            m.close()
            total = sum(s["seconds"] for s in m.stats)
            print(f"\n{len(m.stats)} matrix checks, {total:.1f}s probing+waiting; slowest: "
                  + ", ".join(f"{s['case']} {s['seconds']}s (settle {s['settle']}s)/{s['rounds']}r"
                              for s in sorted(m.stats, key=lambda s: -s["seconds"])[:5]))
        errors = lab.down()
        assert not errors, errors


@pytest.fixture
def m(matrix):
    matrix.reset()
    return matrix


def sel(**labels) -> dict:
    return {"matchLabels": labels}


NS = {ns: {"namespaceSelector": sel(ns=ns)} for ns in NAMESPACES}
A = sel(pod="a")


def block_of(m: PolicyMatrix, pod_id: str) -> str:
    """The /26 IPAM block (lab block_size) that holds ``pod_id``'s address."""
    return str(ipaddress.ip_network(f"{m.pod(pod_id).ip}/26", strict=False))


def test_the_model_spans_two_racks_with_same_node_pairs(matrix):
    nodes = {p.node for p in matrix.pods}
    assert len(nodes) == 2
    racks = {matrix.lab.node(n).rack.letter for n in nodes}
    assert racks == {"a", "b"}
    per_node = [sum(p.node == n for p in matrix.pods) for n in nodes]
    assert min(per_node) >= 2                      # same-node pairs exist on both


def test_a_wrong_expected_table_fails_with_the_grid_diff(m):
    """The harness can fail: one flipped expected cell must be reported as a grid."""
    expected = m.expected()
    expected[("x/a", "y/b", 81, "UDP")] = False
    with pytest.raises(AssertionError) as info:
        m.check("deliberately wrong", expected=expected, deadline=0.5)
    text = str(info.value)
    assert "expected (oracle):" in text and "UDP/81" in text and "1 cells differ" in text
    row = [ln for ln in text.splitlines() if ln.startswith("x/a")]
    assert any("X" in r for r in row) and any("X" not in r for r in row), text


# ---------------------------------------------------------------------- one-shot cases
# name -> policies; each is applied with one `policy apply -f` and checked.
CASES: dict[str, list[dict]] = {
    "no-policy": [],
    "deny-all-ingress-x": [k8s("deny", "x", {"podSelector": {}})],
    "deny-all-egress-x": [k8s("deny", "x", {"podSelector": {}, "policyTypes": ["Egress"]})],
    "deny-all-both-y": [k8s("deny", "y", {"podSelector": {},
                                         "policyTypes": ["Ingress", "Egress"]})],
    "deny-all-ingress-everywhere": [k8s("deny", ns, {"podSelector": {}}) for ns in NAMESPACES],
    "deny-ingress-one-pod": [k8s("deny-a", "x", {"podSelector": A})],
    "explicit-empty-ingress-list": [k8s("d", "z", {"podSelector": {}, "ingress": [],
                                                   "policyTypes": ["Ingress"]})],
    "empty-egress-list-is-not-egress": [k8s("d", "x", {"podSelector": {}, "egress": []})],
    "allow-all-ingress-rule": [k8s("all", "x", {"podSelector": {}, "ingress": [{}]})],
    "allow-from-same-namespace": [k8s("same", "x", {
        "podSelector": A, "ingress": [{"from": [{"podSelector": {}}]}]})],
    "allow-from-namespace": [k8s("from-y", "x", {
        "podSelector": A, "ingress": [{"from": [NS["y"]]}]})],
    "allow-from-all-namespaces": [k8s("from-all", "x", {
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})],
    "allow-from-pod-in-other-namespace-AND": [k8s("yb", "x", {
        "podSelector": A, "ingress": [{"from": [{**NS["y"], "podSelector": sel(pod="b")}]}]})],
    "namespace-OR-pod": [k8s("y-or-b", "x", {
        "podSelector": A, "ingress": [{"from": [NS["y"], {"podSelector": sel(pod="b")}]}]})],
    "pod-a-of-every-namespace": [k8s("any-a", "z", {
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {},
                                                  "podSelector": A}]}]})],
    "match-expressions": [k8s("expr", "y", {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In",
                                              "values": ["a", "b"]}]},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "NotIn", "values": ["x"]}]},
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]}}]}]})],
    "does-not-exist-selector": [k8s("dne", "x", {
        "podSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "NotIn", "values": ["c"]}]}}]}]})],
    "ingress-tcp-80-only": [k8s("p80", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})],
    "ingress-udp-81-only": [k8s("u81", "y", {
        "podSelector": {}, "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]})],
    "ingress-protocol-only": [k8s("udp", "z", {
        "podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]})],
    "from-namespace-on-port": [k8s("y80", "x", {
        "podSelector": {}, "ingress": [{"from": [NS["y"]], "ports": [{"port": 80}]}]})],
    "endport-tcp-80-81": [k8s("range", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 81}]}]})],
    "endport-udp-81-90": [k8s("range", "y", {
        "podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 81,
                                                   "endPort": 90}]}]})],
    "named-port-ingress": [k8s("web", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"port": "web"},
                                                  {"port": "serve-81-udp",
                                                   "protocol": "UDP"}]}]})],
    "named-port-egress": [k8s("eweb", "y", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [NS["x"]], "ports": [{"port": "web"}]}]})],
    "egress-to-port-only": [k8s("p81", "x", {
        "podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 81}]}]})],
    "egress-to-namespace": [k8s("to-z", "y", {
        "podSelector": A, "policyTypes": ["Egress"], "egress": [{"to": [NS["z"]]}]})],
    "egress-rules-default-both-types": [k8s("both", "z", {
        "podSelector": sel(pod="b"), "egress": [{"to": [NS["x"]]}]})],
    "multiple-policies-unioned": [
        k8s("from-y", "x", {"podSelector": A, "ingress": [{"from": [NS["y"]]}]}),
        k8s("c-on-80", "x", {"podSelector": A, "ingress": [
            {"from": [{"podSelector": sel(pod="c")}], "ports": [{"port": 80}]}]}),
        k8s("egress-z", "x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [NS["z"]]}]}),
    ],
    # Same-node and cross-rack: the sender's egress allow must RETURN so the
    # receiver's ingress still runs.
    "egress-allow-then-ingress-deny": [
        k8s("x-to-y", "x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [NS["y"]]}]}),
        k8s("ya-from-z", "y", {"podSelector": A, "ingress": [{"from": [NS["z"]]}]}),
    ],
    "policies-in-every-namespace": [
        k8s("in-x", "x", {"podSelector": sel(pod="b"), "ingress": [{"from": [NS["z"]]}]}),
        k8s("in-y", "y", {"podSelector": {}, "policyTypes": ["Egress"],
                          "egress": [{"ports": [{"port": 80, "protocol": "UDP"}]}]}),
        k8s("in-z", "z", {"podSelector": sel(pod="c"), "ingress": [
            {"from": [{"podSelector": {}}]}]}),
    ],
    "ours-deny-by-order-before-allow": [
        k8s("allow-all", "x", {"podSelector": {}, "ingress": [{}]}),
        ours("deny-y", "x", {"order": 10, "podSelector": {}, "ingress": [
            {"action": "Deny", "from": [NS["y"]]}]}),
    ],
    "ours-allow-by-order-before-deny": [
        ours("deny-y-late", "x", {"order": 2000, "podSelector": {}, "ingress": [
            {"action": "Deny", "from": [NS["y"]]}, {"action": "Allow"}]}),
        k8s("allow-y-a", "x", {"podSelector": {}, "ingress": [
            {"from": [{**NS["y"], "podSelector": A}]}]}),
    ],
    "ours-unordered-after-k8s": [
        ours("deny-rest", "z", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"action": "Deny", "ports": [{"port": 80}]}, {}]}),
        k8s("allow-x", "z", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [NS["x"]]}]}),
    ],
    "ours-same-order-ties-by-name": [
        ours("b-allow", "x", {"order": 5, "podSelector": {}, "ingress": [{}]}),
        ours("a-deny", "x", {"order": 5, "podSelector": {}, "ingress": [
            {"action": "Deny", "ports": [{"port": 81, "protocol": "UDP"}]}]}),
    ],
    "ours-deny-egress-udp": [
        ours("no-udp-out", "y", {"order": 1, "podSelector": {}, "policyTypes": ["Egress"],
                                 "egress": [{"action": "Deny", "ports": [
                                     {"protocol": "UDP"}]}, {"action": "Allow"}]}),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_case(m, name):
    if CASES[name]:
        m.apply(*CASES[name])
    m.check(name)


# ---------------------------------------------------------------------- address cases
def test_ipblock_with_except(m):
    """Ingress to x/a from the block of the other node, minus one pod's /32; and the
    whole pool minus x/a's own block."""
    far = [p for p in m.pods if p.node != m.pod("x/a").node]
    m.apply(k8s("block", "x", {"podSelector": A, "ingress": [{"from": [{"ipBlock": {
        "cidr": block_of(m, far[0].id), "except": [f"{far[0].ip}/32"]}}]}]}))
    m.check("ipblock-except-ingress")
    m.apply(k8s("eblock", "y", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "198.19.0.0/16", "except": [block_of(m, "x/a")]}}],
         "ports": [{"port": 80}, {"port": 81, "protocol": "UDP"}]}]}))
    m.check("ipblock-except-egress-on-ports")


def test_ipblock_outside_the_pods_allows_none_of_them(m):
    m.apply(k8s("spine", "z", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {
        "cidr": "198.18.0.0/16"}}]}]}))
    m.check("ipblock-nodes-only")


# ---------------------------------------------------------------------- changes over time
def test_policy_update_and_delete(m):
    m.apply(k8s("p", "x", {"podSelector": A, "ingress": [{"from": [NS["y"]]}]}))
    m.check("update: from y")
    m.apply(k8s("p", "x", {"podSelector": A, "ingress": [{"from": [NS["z"]]}],
                           "policyTypes": ["Ingress", "Egress"]}))
    m.check("update: from z, egress closed")
    m.apply(k8s("p", "x", {"podSelector": sel(pod="b"), "ingress": [{"ports": [
        {"port": 81, "protocol": "UDP"}]}]}))
    m.check("update: other pod selected")
    m.delete("x", "p")
    m.check("deleted")


def test_k8s_policy_replaced_by_ours_of_the_same_name(m):
    m.apply(k8s("same", "y", {"podSelector": {}, "ingress": [{"from": [NS["x"]]}]}))
    m.check("k8s allow from x")
    m.apply(ours("same", "y", {"order": 1, "podSelector": {}, "ingress": [
        {"action": "Deny", "from": [NS["x"]]}, {"action": "Allow"}]}))
    m.check("ours deny from x, allow the rest")


def test_delete_one_of_two_policies(m):
    m.apply(k8s("one", "x", {"podSelector": {}, "ingress": [{"from": [NS["y"]]}]}),
            k8s("two", "x", {"podSelector": {}, "ingress": [{"from": [NS["z"]]}]}))
    m.check("two unioned")
    m.delete("x", "two")
    m.check("one left")


def test_pod_label_changes(m):
    m.apply(k8s("from-b", "x", {"podSelector": A, "ingress": [
        {"from": [{"namespaceSelector": {}, "podSelector": sel(pod="b")}]}]}))
    m.check("from pod=b anywhere")
    m.label_pod("y/c", "pod=b")              # a peer gains the label (other node or same)
    m.check("y/c relabelled pod=b")
    m.label_pod("y/b", "pod-")               # a peer loses it
    m.check("y/b without pod label")
    m.label_pod("x/c", "pod=a")              # the target set grows
    m.check("x/c relabelled pod=a: now selected")
    m.label_pod("x/a", "pod=z")              # and shrinks
    m.check("x/a relabelled: no longer selected")


def test_namespace_label_changes(m):
    m.apply(k8s("blue", "x", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": sel(team="blue")}]}]}))
    m.check("from team=blue: nobody yet")
    m.label_namespace("z", "team=blue")
    m.check("z joins team blue")
    m.label_namespace("y", "team=blue")
    m.label_namespace("z", "team-")
    m.check("y in, z out")
    m.label_namespace("x", "team=blue")
    m.check("x itself in")


def test_pod_added_after_the_policy(m):
    m.apply(k8s("from-a", "x", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {}, "podSelector": A}]}]}),
            k8s("x-egress", "x", {"podSelector": sel(pod="d"), "policyTypes": ["Egress"],
                                  "egress": [{"to": [NS["z"]], "ports": [{"port": 81}]}]}))
    m.check("before the new pod")
    nodes = [n.name for n in m.lab.nodes]
    m.mark()
    m.add_pod(nodes[1], "x", "d", labels={"pod": "d"})
    try:
        m.check("x/d added after the policy")
        m.label_pod("x/d", "pod=a")
        m.check("x/d relabelled pod=a")
    finally:
        m.remove_pod("x/d")
    m.check("x/d removed")


# ---------------------------------------------------------------------- random (hypothesis)
EXAMPLES = int(os.environ.get("POLICY_LAB_EXAMPLES", "10"))

_label_values = st.sampled_from(POD_NAMES + ("d",))
_pod_sel = st.one_of(
    st.just({}),
    st.builds(lambda v: sel(pod=v), _label_values),
    st.builds(lambda v: sel(tier=v), st.sampled_from(["web", "db"])),
    st.builds(lambda op, vs: {"matchExpressions": [{"key": "pod", "operator": op,
                                                    "values": vs}]},
              st.sampled_from(["In", "NotIn"]),
              st.lists(_label_values, min_size=1, max_size=2, unique=True)),
    st.builds(lambda op: {"matchExpressions": [{"key": "tier", "operator": op}]},
              st.sampled_from(["Exists", "DoesNotExist"])))
_ns_sel = st.one_of(
    st.just({}),
    st.builds(lambda v: sel(ns=v), st.sampled_from(NAMESPACES)),
    st.builds(lambda v: sel(team=v), st.sampled_from(["red", "blue"])))
# Symbolic address blocks, made real from the lab's pod addresses at run time.
_blocks = st.sampled_from(["pool", "pool-except-a-block", "a-block-except-first", "nodes"])


@st.composite
def _peer(draw):
    kind = draw(st.sampled_from(["pod", "ns", "both", "block"]))
    if kind == "block":
        return {"ipBlock": draw(_blocks)}
    peer = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(_pod_sel)
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(_ns_sel)
    return peer


_port = port_spec([None, "TCP", "UDP"], ["web", "serve-80-tcp", "serve-81-udp", "missing"])


def _policy(index):
    return policy(f"r{index}", _pod_sel, _peer(), _port, NAMESPACES, [None, 1, 1000, 1500])


@st.composite
def _scenario(draw):
    policies = [draw(_policy(i)) for i in range(draw(st.integers(1, 3)))]
    pod_labels = {}
    for ns in NAMESPACES:
        for name in POD_NAMES:
            if draw(st.integers(0, 3)) == 0:
                labels = {"pod": draw(_label_values)}
                if draw(st.booleans()):
                    labels["tier"] = draw(st.sampled_from(["web", "db"]))
                pod_labels[f"{ns}/{name}"] = labels
    ns_labels = {}
    for ns in NAMESPACES:
        if draw(st.integers(0, 2)) == 0:
            ns_labels[ns] = {"ns": ns, "team": draw(st.sampled_from(["red", "blue"]))}
    return policies, pod_labels, ns_labels


def _real_blocks(m: PolicyMatrix, doc: dict) -> dict:
    """The scenario's symbolic ipBlocks as CIDRs of this lab."""
    a_block = block_of(m, "x/a")
    first = min((p for p in m.pods if block_of(m, p.id) == a_block),
                key=lambda p: ipaddress.ip_address(p.ip))
    real = {"pool": {"cidr": "198.19.0.0/16"},
            "pool-except-a-block": {"cidr": "198.19.0.0/16", "except": [a_block]},
            "a-block-except-first": {"cidr": a_block, "except": [f"{first.ip}/32"]},
            "nodes": {"cidr": "198.18.0.0/16"}}

    def walk(v):
        if isinstance(v, dict):
            return {k: (real[x] if k == "ipBlock" and isinstance(x, str) else walk(x))
                    for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v
    return walk(doc)


@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate],   # no shrinking in the lab: too slow
          suppress_health_check=list(HealthCheck))
@given(scenario=_scenario())
def test_random_policies_and_labels(matrix, scenario):
    policies, pod_labels, ns_labels = scenario
    m = matrix
    m.reset()
    docs = [m.namespace_doc(ns, labels) for ns, labels in ns_labels.items()]
    docs += [m.endpoint_doc(m.pod(pid), labels) for pid, labels in pod_labels.items()]
    docs += [_real_blocks(m, p) for p in policies]
    m.apply(*docs)
    m.check(f"random {[p['metadata']['name'] + '@' + p['metadata']['namespace'] for p in policies]}")
