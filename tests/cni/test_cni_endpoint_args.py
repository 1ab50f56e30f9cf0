"""The pod's policy identity from a CNI request (issue 14), pure: namespace and name
from ``CNI_ARGS``, labels and named ports from ``args.cni``, where its
WorkloadEndpoint goes in etcd, and the document written there."""

from __future__ import annotations

import json

import pytest

from bgpd.cni.protocol import CniError, Code, PodIdentity, parse_conf, pod_identity
from config.policy_layout import (
    dns_subdomain_problem,
    encode,
    endpoint_container_id,
    endpoint_document,
)
from felix_like.policy_model import NamedPort, load_documents

BASE = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "noderouter-cni",
        "etcd_endpoints": ["198.18.0.10:2379"], "node_name": "node-a"}


def conf(command: str = "ADD", **over):
    return parse_conf(json.dumps({**BASE, **over}), command)


def cni_args(**cni) -> dict:
    return {"args": {"cni": cni}}


def error(fn, *a, **kw) -> CniError:
    with pytest.raises(CniError) as ei:
        fn(*a, **kw)
    return ei.value


def test_labels_and_ports_from_args_cni():
    c = conf(**cni_args(labels=[{"key": "app", "value": "web"},
                                {"key": "example.com/tier", "value": ""}],
                        ports=[{"name": "http", "containerPort": 8080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]))
    assert c.labels == (("app", "web"), ("example.com/tier", ""))
    assert c.named_ports == (("http", "TCP", 8080), ("dns", "UDP", 53))


def test_labels_and_ports_are_read_on_add_only():
    # DEL/CHECK carry the same conf, but nothing of it is written then.
    c = conf("DEL", **cni_args(labels=[{"key": "app", "value": "web"}]))
    assert c.labels == () and c.named_ports == ()


@pytest.mark.parametrize("cni, field", [
    ({"labels": {"app": "web"}}, "args.cni.labels must be a list"),
    ({"labels": ["app=web"]}, "args.cni.labels[0] must be an object"),
    ({"labels": [{"key": "app"}]}, "args.cni.labels[0].value: required"),
    ({"labels": [{"key": "app", "value": "web", "x": 1}]}, "args.cni.labels[0]: unknown field 'x'"),
    ({"labels": [{"key": "-bad", "value": "web"}]}, "args.cni.labels[0].key:"),
    ({"labels": [{"key": "app", "value": "web!"}]}, "args.cni.labels[0].value:"),
    ({"labels": [{"key": "app", "value": 3}]}, "args.cni.labels[0].value:"),
    ({"labels": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]},
     "args.cni.labels[1].key: label 'a' given twice"),
    ({"ports": [{"containerPort": 80}]}, "args.cni.ports[0].name: required"),
    ({"ports": [{"name": "HTTP", "containerPort": 80}]}, "args.cni.ports[0].name:"),
    ({"ports": [{"name": "http", "containerPort": 0}]}, "args.cni.ports[0].containerPort: port 0"),
    ({"ports": [{"name": "http", "port": 70000}]}, "args.cni.ports[0].port: port 70000"),
    ({"ports": [{"name": "http", "containerPort": "80"}]}, "args.cni.ports[0].containerPort:"),
    ({"ports": [{"name": "http"}]}, "args.cni.ports[0].containerPort: give the port"),
    ({"ports": [{"name": "http", "port": 80, "containerPort": 80}]},
     "args.cni.ports[0].containerPort: give the port"),
    ({"ports": [{"name": "http", "port": 80, "protocol": "ICMP"}]}, "args.cni.ports[0].protocol:"),
    ({"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]},
     "args.cni.ports[1].name: port name 'http' given twice"),
])
def test_bad_labels_or_ports_are_code_7_naming_the_field(cni, field):
    e = error(conf, **cni_args(**cni))
    assert e.code == Code.INVALID_CONFIG
    assert field in e.msg, e.msg


def test_pod_identity_from_kubelet_args():
    assert pod_identity({"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-1"}, "c1") == \
        PodIdentity("shop", "web-1")
    # No namespace: default (issue 14). No name: the container id, as the node names it.
    assert pod_identity({"K8S_POD_NAME": "web-1"}, "c1") == PodIdentity("default", "web-1")
    assert pod_identity({}, "0f3a9c") == PodIdentity("default", "0f3a9c")


def test_container_id_that_is_no_pod_name_gets_a_stable_hashed_one():
    a = pod_identity({}, "Pod_A")
    assert a.pod.startswith("cid-") and len(a.pod) == 24
    assert pod_identity({}, "Pod_A") == a                      # DEL finds the same key
    assert pod_identity({}, "pod_a") != a                      # never folded together


def test_a_runtime_pod_name_kubernetes_would_refuse_gets_a_stable_valid_one():
    # podman's CNI backend passes the container's name as K8S_POD_NAME; its generated
    # names have '_' (seen: "vibrant_goldstine" refused with code 4, every podman run failed).
    a = pod_identity({"K8S_POD_NAME": "vibrant_goldstine"}, "c1")
    assert a.namespace == "default" and a.pod.startswith("vibrant-goldstine-")
    assert not dns_subdomain_problem(a.pod)
    assert pod_identity({"K8S_POD_NAME": "vibrant_goldstine"}, "c2") == a   # DEL finds it
    assert pod_identity({"K8S_POD_NAME": "vibrant-goldstine"}, "c1").pod == "vibrant-goldstine"
    assert pod_identity({"K8S_POD_NAME": "Web_1"}, "c1") != \
        pod_identity({"K8S_POD_NAME": "web_1"}, "c1")                      # never folded
    assert not dns_subdomain_problem(pod_identity({"K8S_POD_NAME": "_" * 300}, "c1").pod)


@pytest.mark.parametrize("args, key", [
    ({"K8S_POD_NAMESPACE": "Shop"}, "K8S_POD_NAMESPACE"),
    ({"K8S_POD_NAMESPACE": "a" * 64}, "K8S_POD_NAMESPACE"),
])
def test_bad_pod_identity_is_code_4_naming_the_key(args, key):
    e = error(pod_identity, args, "c1")
    assert e.code == Code.INVALID_ENV and f"CNI_ARGS {key}:" in e.msg


def test_etcd_root_follows_the_daemon_layout():
    assert conf().etcd_root == "/noderouter"
    assert conf(etcd_prefix="/lab7/").etcd_root == "/lab7"
    # A conf that names only the IPAM prefix the daemon derives from etcd.prefix.
    assert conf(ipam_prefix="/lab7/ipam/v1/").etcd_root == "/lab7"
    assert conf(ipam_prefix="/elsewhere/").etcd_root == "/noderouter"
    assert error(conf, etcd_prefix="lab7").code == Code.INVALID_CONFIG


def test_the_document_the_cni_writes_is_what_the_node_reads():
    doc = endpoint_document("shop", "web-1", "node-a", [("app", "web")], ["198.19.0.5"],
                            "nrw0123456789a", [("http", "TCP", 8080)], "c1")
    (ep,) = load_documents([json.loads(encode(doc))], source="etcd")
    assert (ep.namespace, ep.pod, ep.node, ep.labels, ep.ips, ep.host_interface) == (
        "shop", "web-1", "node-a", (("app", "web"),), ("198.19.0.5",), "nrw0123456789a")
    assert ep.named_ports == (NamedPort("http", "TCP", 8080),)
    assert ep.container_id == "c1" and endpoint_container_id(encode(doc)) == "c1"
    assert endpoint_container_id(b"{") is None
