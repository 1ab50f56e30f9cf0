"""Bad CNI requests on a live lab node: the plugin answers with the spec's error, and neither
the node (links, our kernel routes, IPAM) nor the running daemon's view changes.

The plugin's own request handling is covered request by request in tests/cni (a node
namespace with etcd, no daemon). What this adds: the same requests through the lab's real
plugin while noderouter runs on the node and peers with the ToR, checking the daemon's
workloads and routes and the ToR's view stay exactly as they were, and that a repeated ADD
or an unknown DEL does not disturb an existing pod's traffic.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from lab.netns import sh
from lab.procs import wait_for
from lab.topology import Lab

pytestmark = pytest.mark.e2e

NODE = "node-a1"
T = 60  # generous bound for convergence; never asserted as a duration
EXE = os.path.join(os.path.dirname(sys.executable), "noderouter")


@pytest.fixture(scope="module")
def lab():
    the_lab = Lab(racks=1, nodes_per_rack=1, design="tor")
    try:
        the_lab.up()
        the_lab.start_all(wait=True)
        the_lab.add_pod(NODE, "a")
        the_lab.add_pod(NODE, "b")
        yield the_lab
    finally:
        assert the_lab.down() == []


def fingerprint(lab: Lab) -> dict:
    ns = lab.node(NODE).netns
    routes = json.loads(sh(["ip", "-j", "-4", "route", "show", "table", "all"], netns=ns).stdout)
    st = lab.status(NODE)
    ipam = sh([EXE, "ipam", "show", "--allocations", "-o", "json", "--etcd-endpoints",
               lab.etcd_endpoint], netns=ns).stdout
    return {
        "links": sorted(link["ifname"] for link in json.loads(
            sh(["ip", "-j", "link", "show"], netns=ns).stdout)),
        "our_routes": sorted(json.dumps(r, sort_keys=True) for r in routes
                             if str(r.get("protocol")) == "73"),
        "workloads": st["workloads"], "routes": st["routes"], "blocks": st["blocks"],
        "ipam": json.loads(ipam),
        "cni_records": sorted(os.listdir(lab.cni_state_dir(NODE))),
        "tor": sorted(lab.tors["a"].routes()),
    }


def settled(lab: Lab) -> dict:
    """The fingerprint once the daemon has caught up with the CNI records (it notices a CNI
    change on a later loop) and two reads agree."""
    def stable():
        a = fingerprint(lab)
        caught_up = (a["workloads"] == len(lab.pods) == a["routes"]["workload"]
                     and len([r for r in a["cni_records"] if not r.startswith(".")])
                     == len(lab.pods))
        return a if caught_up and a == fingerprint(lab) else None
    return wait_for(stable, T, interval=0.5, what="a settled node")


def cni_error(res) -> dict:
    assert res.returncode != 0, res.stdout
    doc = json.loads(res.stdout)
    assert set(doc) >= {"cniVersion", "code", "msg"}, doc
    assert "Traceback" not in res.stderr
    return doc


def test_bad_requests_change_nothing_on_a_live_node(lab):
    a, b = lab.pods[f"{NODE}/a"], lab.pods[f"{NODE}/b"]
    before = settled(lab)
    pod_ns = lab.netns_set.add(lab.ns("pa1-bad"))
    try:
        conf = lab.cni_conf(NODE)
        cases = {  # name -> (call, expected CNI error code)
            # Issue 12: the node's own netns (its default route would be replaced), a
            # netns that holds pod a's interface (as eth1: no name clash), an empty
            # node_name (used to mean the host name).
            "node-own-netns": (lambda: lab.cni(NODE, "ADD", "bad0000000000005",
                                               lab.node(NODE).netns), 4),
            "another-pods-netns": (lambda: lab.cni(NODE, "ADD", "bad0000000000006",
                                                   a["netns"], ifname="eth1"), 4),
            "empty-node-name": (lambda: lab.cni(NODE, "ADD", "bad0000000000007", pod_ns,
                                                conf=dict(conf, node_name="")), 7),
            "malformed-json": (lambda: malformed(lab, pod_ns), 6),
            "unknown-version": (lambda: lab.cni(NODE, "ADD", "bad0000000000002", pod_ns,
                                                conf=dict(conf, cniVersion="9.9.9")), 1),
            "missing-netns": (lambda: lab.cni(NODE, "ADD", "bad0000000000003", None), 4),
            "netns-gone": (lambda: lab.cni(NODE, "ADD", "bad0000000000004", pod_ns + "-gone"), 3),
        }
        for name, (call, code) in cases.items():
            doc = cni_error(call())
            assert doc["code"] == code, (name, doc)
            assert "eth0" not in sh(["ip", "-o", "link"], netns=pod_ns).stdout, name
        assert "eth1" not in sh(["ip", "-o", "link"], netns=a["netns"]).stdout
        assert settled(lab) == before
        assert lab.ping(a["netns"], b["ip"])          # a kept its default route
    finally:
        sh(["ip", "netns", "delete", pod_ns], check=False)
        lab.netns_set.names.remove(pod_ns)


def malformed(lab: Lab, pod_ns: str):
    """The real plugin with a truncated JSON config on stdin."""
    import subprocess

    exe = os.path.join(os.path.dirname(sys.executable), "noderouter-cni")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": "bad0000000000001", "CNI_IFNAME": "eth0",
           "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_PATH": "/opt/cni/bin"}
    text = json.dumps(lab.cni_conf(NODE))
    return subprocess.run(["ip", "netns", "exec", lab.node(NODE).netns, exe],
                          input=text[: len(text) // 2], env=env, capture_output=True,
                          text=True, timeout=60)


def test_add_twice_and_del_unknown_leave_the_pod_and_daemon_alone(lab):
    a, b = lab.pods[f"{NODE}/a"], lab.pods[f"{NODE}/b"]
    before = settled(lab)
    assert lab.ping(a["netns"], b["ip"])

    # ADD again for pod a (a runtime retrying): the same answer, nothing new anywhere.
    res = lab.cni(NODE, "ADD", a["container_id"], a["netns"],
                  extra_env={"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["ips"][0]["address"] == f"{a['ip']}/32"
    assert settled(lab) == before

    # DEL of a container nobody added: success per the spec, nothing touched.
    for netns in (None, a["netns"]):
        res = lab.cni(NODE, "DEL", "unknown000000001", netns)
        assert res.returncode == 0 and res.stdout.strip() in ("", "{}"), res.stdout + res.stderr
    assert settled(lab) == before
    assert lab.ping(a["netns"], b["ip"])
    assert lab.daemons[NODE].alive()

    # And a real DEL still works afterwards: the pod's route and address go.
    lab.del_pod(NODE, "b")
    after = settled(lab)
    assert after["workloads"] == before["workloads"] - 1
    assert not any(b["ip"] in r for r in after["our_routes"])
