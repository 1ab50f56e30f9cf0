"""Network policy end to end (issue 14): a policy applied with the CLI reaches every node
through etcd, the node's policy manager enforces it with nftables, and deleting it opens
the pod again. Real daemons, real CNI plugin, real etcd, BGP through the ToRs."""

from __future__ import annotations

import json

import pytest

from lab.procs import wait_for
from tests.e2e.conftest import build_lab

pytestmark = pytest.mark.e2e

DENY_ALL_INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-db-ingress
  namespace: default
spec:
  podSelector:
    matchLabels: {role: db}
  policyTypes: [Ingress]
"""

ALLOW_FROM_WEB = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: default
spec:
  podSelector:
    matchLabels: {role: db}
  ingress:
  - from:
    - podSelector:
        matchLabels: {role: web}
"""


@pytest.fixture(scope="module")
def lab():
    the_lab = build_lab("tor", nodes_per_rack=1, pods_per_node=2)
    try:
        yield the_lab
    finally:
        errors = the_lab.down()
        assert not errors, errors


def reaches(lab, src: str, dst: str) -> bool:
    return lab.ping(lab.pods[src]["netns"], lab.pods[dst]["ip"], count=1, timeout=1)


def nr_ok(lab, node: str, *args: str) -> str:
    res = lab.nr(node, *args, "--etcd-endpoints", lab.etcd_endpoint)
    assert res.returncode == 0, res.stderr + res.stdout
    return res.stdout


def test_deny_all_ingress_cuts_one_pod_off_and_delete_restores_it(lab, tmp_path):
    a, b = (n.name for n in lab.nodes)
    db, other, client, neighbour = f"{a}/p1", f"{a}/p2", f"{b}/p1", f"{a}/p2"
    wait_for(lambda: reaches(lab, client, db) and reaches(lab, client, other), 30,
             what="pods to reach each other before any policy")

    nr_ok(lab, a, "workload", "label", "p1", "role=db", "--node", a)
    f = tmp_path / "deny.yaml"
    f.write_text(DENY_ALL_INGRESS)
    assert "networkpolicy default/deny-db-ingress configured" in nr_ok(
        lab, b, "policy", "apply", "-f", str(f))

    wait_for(lambda: not reaches(lab, client, db), 20,
             what=f"{client} to be cut off from {db}")
    assert not reaches(lab, neighbour, db)            # same node: the receiver's ingress
    assert reaches(lab, client, other)                # other pods are not selected
    assert reaches(lab, db, client)                   # egress of the db pod stays open
    # The node's own traffic is not filtered: BGP stays up, the node reaches its pod.
    st = lab.status(a)
    assert st["peers"] and all(p["state"] == "established" for p in st["peers"]), st["peers"]
    ping_from_node = lab.exec(a, ["ping", "-c", "1", "-W", "1", "-q", lab.pods[db]["ip"]],
                              check=False)
    assert ping_from_node.returncode == 0, ping_from_node.stdout

    # Allow ingress from pods labelled role=web: a pod on the other node, known to the
    # db's node from its IPAM allocation plus the label in its record.
    web = f"{b}/p2"
    nr_ok(lab, a, "workload", "label", "p2", "role=web", "--node", b)
    f2 = tmp_path / "allow.yaml"
    f2.write_text(ALLOW_FROM_WEB)
    nr_ok(lab, b, "policy", "apply", "-f", str(f2))
    wait_for(lambda: reaches(lab, web, db), 20, what=f"{web} (role=web) to reach {db}")
    assert not reaches(lab, client, db)               # still denied: no role=web
    nr_ok(lab, b, "policy", "delete", "allow-web")

    nr_ok(lab, b, "policy", "delete", "deny-db-ingress")
    wait_for(lambda: reaches(lab, client, db), 20, what=f"{client} to reach {db} again")
    assert reaches(lab, neighbour, db)
    # With no policy left the node keeps no table at all.
    res = lab.exec(a, ["nft", "list", "table", "inet", "noderouter"], check=False)
    assert res.returncode != 0


DENY_LOCKED_INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-locked-ingress
  namespace: default
spec:
  podSelector:
    matchLabels: {role: locked}
  policyTypes: [Ingress]
"""


def test_label_from_the_cni_conf_is_enforced_and_del_removes_the_endpoint(lab, tmp_path):
    """A pod started with ``args.cni.labels`` (through the daemon's CNI fast path): its
    WorkloadEndpoint carries the label, a policy selecting that label isolates the pod,
    and DEL removes the endpoint from etcd."""
    a, b = (n.name for n in lab.nodes)
    locked = lab.add_pod(a, "locked", labels={"role": "locked"})
    client = f"{b}/p1"
    rows = json.loads(nr_ok(lab, b, "workload", "list", "--node", a, "-o", "json"))
    mine = [r for r in rows if r["pod"] == "locked"]
    assert [(r["namespace"], r["labels"], r["ips"]) for r in mine] == [
        ("default", ["role=locked"], [locked["ip"]])], rows
    wait_for(lambda: lab.ping(lab.pods[client]["netns"], locked["ip"], count=1, timeout=1),
             30, what=f"{client} to reach the new pod before any policy")

    f = tmp_path / "deny-locked.yaml"
    f.write_text(DENY_LOCKED_INGRESS)
    nr_ok(lab, b, "policy", "apply", "-f", str(f))
    try:
        wait_for(lambda: not lab.ping(lab.pods[client]["netns"], locked["ip"], count=1,
                                      timeout=1), 20, what="the role=locked pod to be cut off")
        assert reaches(lab, client, f"{a}/p1")          # pods without the label: open
    finally:
        nr_ok(lab, b, "policy", "delete", "deny-locked-ingress")
    lab.del_pod(a, "locked")
    rows = json.loads(nr_ok(lab, b, "workload", "list", "--node", a, "-o", "json"))
    assert [r for r in rows if r["pod"] == "locked"] == []
