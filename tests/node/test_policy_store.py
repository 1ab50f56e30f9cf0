"""The policy resources' etcd encoding and their cache in ``NodeState`` (issue 14). Pure."""

from __future__ import annotations

import json

import pytest
import yaml

from bgpd.node.policy_store import (
    PolicyKeys,
    decode,
    encode,
    endpoint_document,
    namespace_document,
)
from bgpd.node.state import NodeState
from felix_like.policy_model import (
    NamedPort,
    Namespace,
    NetworkPolicy,
    PolicyError,
    WorkloadEndpoint,
    load_documents,
    load_yaml,
)
from ipam.store import KV, WatchEvent

pytestmark = pytest.mark.unit

K8S = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: shop
  annotations: {note: "kept verbatim"}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchLabels: {app: web}}
    ports:
    - {port: 5432, endPort: 5433}
"""


def test_key_layout():
    keys = PolicyKeys("/noderouter/")
    assert keys.policy("shop", "allow-web") == \
        "/noderouter/policy/v1/networkpolicies/shop/allow-web"
    assert keys.namespace("shop") == "/noderouter/policy/v1/namespaces/shop"
    assert keys.endpoint("node-a", "shop", "db-0") == \
        "/noderouter/policy/v1/workloadendpoints/node-a/shop/db-0"
    assert keys.kind("workloadendpoints") == "/noderouter/policy/v1/workloadendpoints/"
    with pytest.raises(ValueError, match="unknown policy kind 'pools'"):
        keys.kind("pools")
    ep = WorkloadEndpoint("shop", "db-0", (), (), "", "", ())
    with pytest.raises(PolicyError, match="spec.node: required"):
        keys.key_of(ep)


def test_a_kubernetes_policy_is_stored_verbatim_and_reads_back_equal():
    doc = yaml.safe_load(K8S)
    value = encode(doc)
    assert json.loads(value) == doc                    # annotations and all
    key = PolicyKeys().policy("shop", "allow-web")
    res = decode(key, value)
    assert res == load_yaml(K8S)[0]
    assert isinstance(res, NetworkPolicy) and res.ingress[0].ports[0].end_port == 5433


def test_decode_refuses_bad_records_naming_the_key():
    key = PolicyKeys().policy("shop", "allow-web")
    with pytest.raises(PolicyError, match=r"^/noderouter/policy/v1/networkpolicies/shop/"
                                          r"allow-web: \(json\)"):
        decode(key, b"{nope")
    bad = json.loads(encode(yaml.safe_load(K8S)))
    bad["spec"]["ingress"][0]["ports"][0]["port"] = 0
    with pytest.raises(PolicyError, match=r"networkpolicies/shop/allow-web: "
                                          r"spec\.ingress\[0\]\.ports\[0\]\.port: "
                                          r"port 0 is outside 1-65535"):
        decode(key, encode(bad))
    # A valid record under another resource's key is not that resource.
    with pytest.raises(PolicyError, match="the record is networkpolicies/shop/allow-web"):
        decode(PolicyKeys().policy("shop", "other"), encode(json.loads(encode(
            yaml.safe_load(K8S)))))


def test_namespace_and_endpoint_documents_round_trip():
    ns_doc = namespace_document("shop", {"team": "a"})
    ns = decode(PolicyKeys().namespace("shop"), encode(ns_doc))
    assert ns == Namespace("shop", (("kubernetes.io/metadata.name", "shop"), ("team", "a")))
    ep = WorkloadEndpoint("shop", "db-0", (("app", "db"),), ("198.19.1.5",), "", "node-a",
                          (NamedPort("pg", "TCP", 5432),))
    back = decode(PolicyKeys().endpoint("node-a", "shop", "db-0"),
                  encode(endpoint_document(ep)))
    assert back == ep
    assert load_documents([endpoint_document(ep)]) == [ep]


def kv(key: str, value: bytes) -> KV:
    return KV(key, value, 1, 1)


def test_node_state_caches_policy_kinds_without_gating_routes():
    st = NodeState("node-a")
    for name in ("nodes", "pools", "blocks"):
        st.apply(("snapshot", name, 1, []))
    assert st.in_sync and not st.policy_in_sync        # routes never wait for policy
    keys = PolicyKeys()
    good = encode(yaml.safe_load(K8S))
    pkey = keys.policy("shop", "allow-web")
    st.apply(("snapshot", "networkpolicies", 1,
              [kv(pkey, good), kv(keys.policy("shop", "junk"), b"[]")]))
    st.apply(("snapshot", "namespaces", 1, []))
    assert not st.policy_in_sync
    st.apply(("snapshot", "workloadendpoints", 1, []))
    assert st.policy_in_sync
    assert list(st.networkpolicies) == [pkey]           # the bad record is skipped

    # A put that replaces a valid record with an invalid one drops the old one: it no
    # longer exists in etcd.
    st.apply(("event", "networkpolicies", WatchEvent("put", pkey, b"{", 2)))
    assert st.networkpolicies == {}
    st.apply(("event", "networkpolicies", WatchEvent("put", pkey, good, 3)))
    assert st.networkpolicies[pkey].name == "allow-web"
    st.apply(("event", "networkpolicies", WatchEvent("delete", pkey, b"", 4)))
    assert st.networkpolicies == {}


def test_workload_dir_gives_each_pod_its_identity_from_cni_args(tmp_path):
    """The join key with WorkloadEndpoint records: (namespace, pod) from CNI_ARGS; without
    them the pod is its container id in namespace default."""
    from bgpd.cni.records import WorkloadRecord, write_record
    from bgpd.node.calculator import Workload
    from bgpd.node.workloads import WorkloadDir

    common = dict(ifname="eth0", netns="/run/netns/x", mtu=1450, route_protocol=73,
                  node="node-a")
    write_record(str(tmp_path), WorkloadRecord(
        container_id="c1", host_ifname="nrw1", ip="198.19.1.2", handle="h1",
        attrs={"namespace": "shop", "pod": "db-0"}, **common))
    write_record(str(tmp_path), WorkloadRecord(
        container_id="c2", host_ifname="nrw2", ip="198.19.1.3", handle="h2", **common))
    wd = WorkloadDir(str(tmp_path))
    assert wd.poll()
    assert sorted(wd.workloads(), key=lambda w: w.name) == [
        Workload("c1", "198.19.1.2", "nrw1", "shop", "db-0"),
        Workload("c2", "198.19.1.3", "nrw2", "default", "c2")]
