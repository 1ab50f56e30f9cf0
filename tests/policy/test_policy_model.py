"""Policy input validation: every problem named as file:line: field: problem, and
the whole input refused when any document is bad."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from felix_like.policy_model import (
    IPBlock,
    NetworkPolicy,
    PolicyError,
    WorkloadEndpoint,
    load_documents,
    load_yaml,
)

pytestmark = pytest.mark.unit

BAD = Path(__file__).with_name("bad_policy.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        load_yaml(text, "f.yaml")
    return exc.value.problems


def test_bad_file_lists_every_problem_with_its_line():
    with pytest.raises(PolicyError) as exc:
        load_yaml(BAD.read_text(), "bad.yaml")
    assert exc.value.problems == [
        "bad.yaml:18: spec.podSelector.matchExpressions[0].operator: "
        "'Inn' is not one of In, NotIn, Exists, DoesNotExist",
        "bad.yaml:23: spec.ingress[0].from[0].ipBlock.cidr: 198.19.200.1/24 has host bits set "
        "(did you mean 198.19.200.0/24?)",
        "bad.yaml:25: spec.ingress[0].ports[0].port: port 0 is outside 1-65535",
        "bad.yaml:26: spec.ingress[0].ports[1].port: port 70000 is outside 1-65535",
        "bad.yaml:28: spec.ingress[0].ports[2].endPort: endPort 80 is below port 81",
        "bad.yaml:30: spec.ingress[0].ports[3].endPort: endPort cannot be used with a named "
        "port (http)",
        "bad.yaml:32: spec.ingress[0].ports[4].protokol: unknown field "
        "(allowed: endPort, port, protocol)",
    ]


HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n"


@pytest.mark.parametrize("spec, expected", [
    ("spec: {podSelector: {matchLabels: {'bad key!': a}}}",
     "f.yaml:4: spec.podSelector.matchLabels.bad key!: label key 'bad key!' is not a valid"),
    ("spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}",
     "spec.podSelector.matchExpressions[0].values: operator In needs at least one value"),
    ("spec: {podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}",
     "operator Exists takes no values"),
    ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 198.19.0.0/16, "
     "except: [198.18.0.0/24]}}]}]}", "198.18.0.0/24 is not strictly inside cidr 198.19.0.0/16"),
    ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 198.19.0.0/16}, "
     "podSelector: {}}]}]}", "ipBlock cannot be combined"),
    ("spec: {podSelector: {}, egress: [{to: [{}]}]}", "a peer needs podSelector"),
    ("spec: {podSelector: {}, ingress: [{ports: [{endPort: 90}]}]}",
     "endPort needs a numeric port"),
    ("spec: {podSelector: {}, ingress: [{ports: [{port: 80, protocol: ICMP}]}]}",
     "protocol 'ICMP' is not one of TCP, UDP, SCTP"),
    ("spec: {podSelector: {}, ingress: [{ports: [{port: Web_Port}]}]}", "port name 'Web_Port'"),
    ("spec: {podSelector: {}, ingress: [{action: Deny}]}",
     "spec.ingress[0].action: unknown field (allowed: from, ports)"),
    ("spec: {podSelector: {}, order: 10}", "spec.order: unknown field"),
    ("spec: {podSelector: {}, policyTypes: [Ingress, Ingress]}", "Ingress listed twice"),
    ("spec: {podSelector: {}, policyTypes: [Sideways]}", "'Sideways' is not Ingress or Egress"),
    ("spce: {}", "f.yaml:4: spce: unknown field"),
])
def test_k8s_policy_problems(spec, expected):
    found = problems(HEAD + spec)
    assert any(expected in p for p in found), found


def test_one_bad_document_refuses_the_whole_file():
    good = HEAD + "spec: {podSelector: {}}\n"
    bad = (HEAD.replace("name: p", "name: q")
           + "spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n")
    assert len(load_yaml(good)) == 1
    found = problems(good + "---\n" + bad)
    assert found == ["f.yaml:9: spec.ingress[0].ports[0].port: port 0 is outside 1-65535"]


def test_duplicate_keys_and_names_refused():
    assert any("duplicate key 'spec'" in p for p in problems(HEAD + "spec: {}\nspec: {}\n"))
    doc = HEAD + "spec: {podSelector: {}}\n"
    assert any("defined twice (first at line 1)" in p for p in problems(doc + "---\n" + doc))


def test_unsupported_kind_named():
    found = problems("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    assert found[0].startswith("f.yaml:2: kind: v1/Pod is not supported")


def test_k8s_defaults_and_noderouter_superset():
    res = load_yaml(HEAD + "spec:\n  podSelector: {}\n  egress: [{}]\n---\n" + HEAD.replace(
        "name: p", "name: q") + "spec: {podSelector: {}, egress: []}\n---\n"
        "apiVersion: noderouter.io/v1\nkind: NetworkPolicy\nmetadata: {name: r, namespace: x}\n"
        "spec: {podSelector: {}, ingress: [{action: Deny, ports: [{port: 80}]}]}\n---\n"
        "apiVersion: noderouter.io/v1\nkind: NetworkPolicy\nmetadata: {name: s, namespace: x}\n"
        "spec: {order: 12.5, podSelector: {}, policyTypes: [Egress]}\n")
    p, q, r, s = res
    assert isinstance(p, NetworkPolicy) and p.policy_types == ("Ingress", "Egress")
    assert p.order == 1000.0 and p.kind == "k8s"
    # `egress: []` does not make a policy an egress policy (Kubernetes' defaulting).
    assert q.policy_types == ("Ingress",)
    assert r.kind == "noderouter" and r.order == math.inf and r.ingress[0].action == "Deny"
    assert s.order == 12.5 and s.policy_types == ("Egress",)
    assert sorted([p, q, r, s], key=NetworkPolicy.sort_key) == [s, p, q, r]


def test_metadata_from_kubectl_accepted_verbatim():
    text = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n"
            "  namespace: x\n  uid: 5d7e\n  resourceVersion: '12'\n  annotations: {a: b}\n"
            "  creationTimestamp: '2026-01-01T00:00:00Z'\n  generation: 1\n"
            "spec: {podSelector: {}}\nstatus: {}\n")
    assert load_yaml(text)[0].name == "p"


def test_workload_endpoint_and_namespace():
    res = load_documents([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"a": "b"}}},
        {"apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
         "metadata": {"name": "pa", "namespace": "x", "labels": {"pod": "a"}},
         "spec": {"interface": "nrwxa", "node": "n1", "ips": ["198.19.200.1"],
                  "ports": [{"name": "web", "port": 8080}]}},
    ])
    ns, ep = res
    assert dict(ns.labels) == {"a": "b", "kubernetes.io/metadata.name": "x"}
    assert isinstance(ep, WorkloadEndpoint) and ep.named_ports[0].protocol == "TCP"
    with pytest.raises(PolicyError, match=r"spec.interface: 'way-too-long-name0' is not"):
        load_documents([{"apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
                         "metadata": {"name": "pa", "namespace": "x"},
                         "spec": {"interface": "way-too-long-name0", "ips": []}}])


def test_ipblock_ranges_subtract_excepts():
    block = IPBlock("198.19.200.0/28", ("198.19.200.4/30", "198.19.200.8/32"))
    assert block.ranges() == ("198.19.200.0/30", "198.19.200.9/32", "198.19.200.10/31",
                              "198.19.200.12/30")
