"""`noderouter policy|namespace|workload ...` against a real etcd (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bgpd.cli.main import main

pytestmark = pytest.mark.integration

BAD = Path(__file__).with_name("bad_policy.yaml")

DENY_DB = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-db
  namespace: prod
spec:
  podSelector:
    matchLabels: {role: db}
  policyTypes: [Ingress]
---
apiVersion: noderouter.io/v1
kind: NetworkPolicy
metadata:
  name: web-only
  namespace: prod
spec:
  order: 10
  podSelector:
    matchLabels: {role: db}
  ingress:
  - from:
    - podSelector:
        matchLabels: {role: web}
    ports:
    - port: 5432
---
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {team: a}
"""


@pytest.fixture
def run(etcd_server):
    runner = CliRunner()
    env = {"NODEROUTER_ETCD_ENDPOINTS": etcd_server.endpoint, "NODEROUTER_ETCD_ROOT": "/nrt"}

    def invoke(*args, code=0, input=None):
        res = runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res.stdout if code == 0 else res.output
    return invoke


@pytest.fixture
def keys(etcd_server):
    from ipam.store import EtcdStore

    store = EtcdStore(etcd_server.endpoint)

    def under(prefix: str = "/nrt/") -> dict[str, dict]:
        _, kvs = store.range(prefix)
        return {kv.key: json.loads(kv.value) for kv in kvs}
    try:
        yield under
    finally:
        store.close()


def test_apply_list_get_delete(run, keys, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(DENY_DB)
    out = run("policy", "apply", "-f", str(f))
    assert out.splitlines() == ["networkpolicy prod/deny-db configured",
                                "networkpolicy prod/web-only configured",
                                "namespace prod configured"]
    stored = keys()
    assert sorted(stored) == ["/nrt/policy/v1/namespaces/prod",
                              "/nrt/policy/v1/networkpolicies/prod/deny-db",
                              "/nrt/policy/v1/networkpolicies/prod/web-only"]
    # Verbatim: the Kubernetes document as applied.
    assert stored["/nrt/policy/v1/networkpolicies/prod/deny-db"] == {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-db", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"]}}

    rows = json.loads(run("policy", "list", "-o", "json"))
    assert [(r["namespace"], r["name"], r["kind"], r["types"], r["order"]) for r in rows] == [
        ("prod", "deny-db", "networking.k8s.io/v1", ["Ingress"], 1000.0),
        ("prod", "web-only", "noderouter.io/v1", ["Ingress"], 10.0)]
    assert rows[0]["selector"] == "role==db"
    table = run("policy", "list").splitlines()
    assert table[0].split()[:3] == ["NAMESPACE", "NAME", "KIND"]
    assert table[1].split()[:2] == ["prod", "deny-db"]

    doc = json.loads(run("policy", "get", "web-only", "-n", "prod", "-o", "json"))
    assert doc["spec"]["order"] == 10 and doc["kind"] == "NetworkPolicy"
    assert "port: 5432" in run("policy", "get", "web-only", "-n", "prod")
    assert "policy default/web-only not found" in run("policy", "get", "web-only", code=1)

    assert run("policy", "delete", "deny-db", "-n", "prod") == \
        "networkpolicy prod/deny-db deleted\n"
    assert "/nrt/policy/v1/networkpolicies/prod/deny-db" not in keys()
    assert "not found" in run("policy", "delete", "deny-db", "-n", "prod", code=1)
    assert [r["name"] for r in json.loads(run("policy", "list", "-o", "json"))] == ["web-only"]


def test_invalid_input_is_refused_whole_and_nothing_is_written(run, keys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD.read_text())
    err = run("policy", "apply", "-f", str(f), code=1)
    lines = err.splitlines()
    # The first document is valid, the second is not: neither is written.
    assert lines[0] == (f"{f}:18: spec.podSelector.matchExpressions[0].operator: "
                        "'Inn' is not one of In, NotIn, Exists, DoesNotExist")
    assert f"{f}:25: spec.ingress[0].ports[0].port: port 0 is outside 1-65535" in lines
    assert lines[-1].startswith("refused:") and "nothing was written" in lines[-1]
    assert keys() == {}
    err = run("policy", "apply", "-f", "-", input="kind: [\n", code=1)
    assert err.startswith("<stdin>:") and "(yaml)" in err
    assert keys() == {}


def test_namespace_and_workload_labels(run, keys):
    out = json.loads(run("namespace", "label", "prod", "team=a", "tier=1", "-o", "json"))
    assert out["labels"] == {"kubernetes.io/metadata.name": "prod", "team": "a", "tier": "1"}
    run("namespace", "label", "prod", "tier-", "env=x")
    assert keys()["/nrt/policy/v1/namespaces/prod"]["metadata"]["labels"] == {
        "env": "x", "team": "a"}
    assert "Invalid value for LABELS: 'oops'" in run("namespace", "label", "prod", "oops", code=2)
    # A bad label value is the model's problem, refused with the field named.
    err = run("namespace", "label", "prod", "team=not valid!", code=1)
    assert "metadata.labels" in err and keys()["/nrt/policy/v1/namespaces/prod"][
        "metadata"]["labels"]["team"] == "a"

    run("workload", "label", "p1", "role=db", "--node", "node-a", "--port", "pg=5432")
    run("workload", "label", "p1", "app=x", "--node", "node-a", "--ip", "198.19.1.5")
    stored = keys()["/nrt/policy/v1/workloadendpoints/node-a/default/p1"]
    assert stored["metadata"] == {"name": "p1", "namespace": "default",
                                  "labels": {"app": "x", "role": "db"}}
    assert stored["spec"] == {"node": "node-a", "ips": ["198.19.1.5"],
                              "ports": [{"name": "pg", "protocol": "TCP", "port": 5432}]}
    rows = json.loads(run("workload", "list", "-o", "json"))
    assert rows == [{"node": "node-a", "namespace": "default", "pod": "p1",
                     "labels": ["app=x", "role=db"], "ips": ["198.19.1.5"],
                     "ports": ["pg=5432/TCP"], "problem": None}]
    assert json.loads(run("workload", "list", "--node", "node-b", "-o", "json")) == []


def test_explain(run, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(DENY_DB)
    run("policy", "apply", "-f", str(f))
    run("workload", "label", "db", "role=db", "-n", "prod", "--node", "a", "--ip", "198.19.1.5")
    run("workload", "label", "web", "role=web", "-n", "prod", "--node", "b",
        "--ip", "198.19.2.5")
    run("workload", "label", "other", "role=x", "-n", "prod", "--node", "b",
        "--ip", "198.19.2.6")
    ok = json.loads(run("policy", "explain", "198.19.2.5", "198.19.1.5", "5432/TCP",
                        "-o", "json"))
    assert ok["allowed"] is True
    assert ok["ingress_of_dst"] == {"endpoint": "prod/db",
                                    "policies": ["prod/web-only", "prod/deny-db"]}
    assert ok["egress_of_src"] == {"endpoint": "prod/web", "policies": None}
    out = run("policy", "explain", "198.19.2.6", "198.19.1.5", "5432/TCP", code=1)
    assert out.splitlines()[-1] == "verdict: DENY"
    run("policy", "explain", "198.19.2.5", "198.19.1.5", "5433/TCP", code=1)
    assert "Invalid value for PORT/PROTO: '99999/TCP'" in run("policy", "explain", "198.19.2.5",
                                                   "198.19.1.5", "99999/TCP", code=2)
