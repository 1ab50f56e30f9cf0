"""CNI ADD writes the pod's WorkloadEndpoint to etcd, DEL removes it (issue 14).

The real ``noderouter-cni`` (direct path and the daemon's fast path) against a real
etcd inside a throwaway node namespace; etcd is read back with ``tests.cni.ipamtool``
and labels are changed with the real ``noderouter workload label`` CLI, both run in
that namespace (where etcd listens)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bgpd.cni.protocol import host_veth_name

from .conftest import PLUGIN, REPO, CniBench, Server
from .test_cni_integration import assert_nothing_left, assert_valid_result, endpoints

pytestmark = pytest.mark.integration

CLI = os.path.join(os.path.dirname(PLUGIN), "noderouter")
WEP = "/noderouter/policy/v1/workloadendpoints/"
KUBELET_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u-1"
POLICY_ARGS = {"cni": {"labels": [{"key": "app", "value": "web"},
                                  {"key": "tier", "value": "front"}],
                       "ports": [{"name": "http", "containerPort": 8080},
                                 {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}}


def record(bench: CniBench, cid: str) -> dict:
    with open(os.path.join(bench.state_dir, f"{cid}.json")) as f:
        return json.load(f)


def cli_label(bench: CniBench, pod: str, *labels: str, namespace: str = "default"):
    res = subprocess.run(["ip", "netns", "exec", bench.node, CLI, "workload", "label", pod,
                          *labels, "--node", "node-a", "-n", namespace,
                          "--etcd-endpoints", bench.etcd.endpoint],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_add_writes_the_endpoint_check_keeps_cli_labels_del_removes_it(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, args=KUBELET_ARGS, conf=cni.conf(args=POLICY_ARGS))
    assert res.code == 0, res.stdout + res.stderr
    ip = assert_valid_result(res.doc, "1.0.0", netns)
    host = host_veth_name("nrw", "c1")
    key = WEP + "node-a/shop/web-1"
    assert endpoints(cni) == {key: {
        "apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": "web-1", "namespace": "shop",
                     "labels": {"app": "web", "tier": "front"}},
        "spec": {"node": "node-a", "ips": [ip], "interface": host, "containerID": "c1",
                 "ports": [{"name": "http", "protocol": "TCP", "port": 8080},
                           {"name": "dns", "protocol": "UDP", "port": 53}]}}}
    # The node joins its workload record with the endpoint by this identity, and
    # waits for this revision before programming the pod.
    rec = record(cni, "c1")
    assert (rec["attrs"]["namespace"], rec["attrs"]["pod"]) == ("shop", "web-1")
    assert rec["endpoint_revision"] > 0

    # Labels changed later with the CLI survive CHECK and a repeated ADD.
    cli_label(cni, "web-1", "tier-", "role=db", namespace="shop")
    chk = cni.run("CHECK", netns=netns, args=KUBELET_ARGS, conf=cni.conf(prevResult=res.doc))
    assert chk.code == 0 and chk.stdout == "", chk.stdout + chk.stderr
    again = cni.run("ADD", netns=netns, args=KUBELET_ARGS, conf=cni.conf(args=POLICY_ARGS))
    assert again.code == 0 and again.doc == res.doc, again.stdout + again.stderr
    doc = endpoints(cni)[key]
    assert doc["metadata"]["labels"] == {"app": "web", "role": "db"}
    assert doc["spec"]["containerID"] == "c1" and doc["spec"]["ips"] == [ip]

    d = cni.run("DEL", netns=netns, args=KUBELET_ARGS)
    assert d.code == 0 and d.stdout == "", d.stdout + d.stderr
    assert_nothing_left(cni)
    again_del = cni.run("DEL", netns=netns, args=KUBELET_ARGS)       # idempotent
    assert again_del.code == 0 and again_del.stdout == "", again_del.stdout + again_del.stderr


def test_check_reports_a_missing_endpoint(cni: CniBench):
    netns = cni.pod()
    assert cni.run("ADD", netns=netns, args=KUBELET_ARGS).code == 0
    cni.ipam("put", WEP + "node-a/shop/web-1",
             json.dumps({"apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
                         "metadata": {"name": "web-1", "namespace": "shop"},
                         "spec": {"node": "node-a", "containerID": "someone-else"}}))
    chk = cni.run("CHECK", netns=netns, args=KUBELET_ARGS)
    assert chk.code != 0 and chk.doc["code"] == 104, chk.stdout + chk.stderr
    assert "names container 'someone-else', not c1" in chk.doc["details"]
    # Not ours any more: DEL leaves the other container's record alone.
    assert cni.run("DEL", netns=netns, args=KUBELET_ARGS).code == 0
    assert list(endpoints(cni)) == [WEP + "node-a/shop/web-1"]


def test_without_pod_args_the_workload_is_its_container_in_default(cni: CniBench):
    netns = cni.pod()
    assert cni.run("ADD", "0f3a9c", netns).code == 0
    (key,) = endpoints(cni)
    assert key == WEP + "node-a/default/0f3a9c"
    assert record(cni, "0f3a9c")["attrs"]["pod"] == "0f3a9c"
    assert cni.run("DEL", "0f3a9c", netns).code == 0
    assert_nothing_left(cni, "0f3a9c")


def test_del_of_an_old_sandbox_leaves_the_new_sandboxs_endpoint(cni: CniBench):
    """kubelet may DEL a pod's old sandbox after the new one's ADD (same pod name)."""
    old_ns, new_ns = cni.pod("old"), cni.pod("new")
    assert cni.run("ADD", "old1", old_ns, args=KUBELET_ARGS).code == 0
    assert cni.run("ADD", "new1", new_ns, args=KUBELET_ARGS).code == 0
    key = WEP + "node-a/shop/web-1"
    assert endpoints(cni)[key]["spec"]["containerID"] == "new1"
    assert cni.run("DEL", "old1", old_ns, args=KUBELET_ARGS).code == 0
    assert endpoints(cni)[key]["spec"]["containerID"] == "new1"
    assert cni.run("DEL", "new1", new_ns, args=KUBELET_ARGS).code == 0
    assert_nothing_left(cni, "new1")


@pytest.mark.parametrize("cni_args, field", [
    ({"labels": [{"key": "app", "value": "not valid!"}]}, "args.cni.labels[0].value"),
    ({"labels": [{"name": "app", "value": "web"}]}, "args.cni.labels[0]: unknown field"),
    ({"ports": [{"name": "http", "containerPort": 70000}]}, "args.cni.ports[0].containerPort"),
    ({"ports": [{"name": "Http", "containerPort": 80}]}, "args.cni.ports[0].name"),
])
def test_bad_labels_or_ports_are_code_7_and_nothing_is_allocated(cni: CniBench, cni_args,
                                                                  field):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, args=KUBELET_ARGS, conf=cni.conf(args={"cni": cni_args}))
    assert res.code != 0 and res.doc["code"] == 7, res.stdout + res.stderr
    assert field in res.doc["msg"], res.doc
    assert_nothing_left(cni)
    assert len(json.loads(subprocess.run(
        ["ip", "-n", os.path.basename(netns), "-j", "link", "show"],
        capture_output=True, text=True, check=True).stdout)) == 1      # only lo


def test_bad_pod_name_is_code_4_and_nothing_is_allocated(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, args="K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web-1")
    assert res.code != 0 and res.doc["code"] == 4, res.stdout + res.stderr
    assert "K8S_POD_NAMESPACE" in res.doc["msg"]
    assert_nothing_left(cni)


def test_fast_path_writes_and_removes_the_endpoint(cni: CniBench, server: Server):
    conf = cni.conf(daemon_socket=server.path, args=POLICY_ARGS)
    netns = cni.pod()
    res = cni.run("ADD", "c1", netns, conf=conf, args=KUBELET_ARGS)
    assert res.code == 0, res.stdout + res.stderr
    assert [e["container"] for e in server.events("cni_added")] == ["c1"]  # the daemon did it
    doc = endpoints(cni)[WEP + "node-a/shop/web-1"]
    assert doc["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert doc["spec"]["ports"][0] == {"name": "http", "protocol": "TCP", "port": 8080}
    bad = cni.run("ADD", "c2", cni.pod("b"), conf=cni.conf(
        daemon_socket=server.path, args={"cni": {"ports": [{"name": "x", "port": 0}]}}))
    assert bad.doc["code"] == 7 and "args.cni.ports[0].port" in bad.doc["msg"], bad.doc
    assert cni.run("DEL", "c1", netns, conf=conf, args=KUBELET_ARGS).code == 0
    assert_nothing_left(cni)
