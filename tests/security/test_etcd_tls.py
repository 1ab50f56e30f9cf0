"""etcd over TLS with client certificates (``--client-cert-auth``) in the lab.

Nodes and the CNI plugin use the lab's throwaway PKI (``Lab(etcd_tls=True)``): daemons come
up, pods get addresses, routes flow. A client without a certificate is refused: curl, the
CLI (one clear line, exit 1) and the CNI plugin (a CNI error, nothing left behind). The
client key's contents never appear in logs, status output or metrics.
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

T = 60  # generous bound for convergence; never asserted as a duration
EXE = os.path.join(os.path.dirname(sys.executable), "noderouter")


@pytest.fixture(scope="module")
def tls_lab():
    lab = Lab(racks=1, nodes_per_rack=2, design="tor", etcd_tls=True)
    try:
        lab.up()
        lab.start_all(wait=True)
        for n in lab.nodes:
            lab.add_pod(n.name, "p1")
        yield lab
    finally:
        assert lab.down() == []


def test_nodes_and_pods_work_over_tls(tls_lab):
    lab = tls_lab
    e = lab.etcd
    assert e.tls and e.url.startswith("https://")
    for n in lab.nodes:
        cfg = open(os.path.join(lab.node_dir(n.name), "node.yaml")).read()
        assert e.cert_file in cfg and e.key_file in cfg and e.ca_file in cfg
        st = lab.status(n.name)
        assert st["sync"]["datastore_in_sync"] and st["blocks"], st
    p1, p2 = lab.pods["node-a1/p1"], lab.pods["node-a2/p1"]
    assert p1["ip"] != p2["ip"]
    wait_for(lambda: lab.ping(p1["netns"], p2["ip"]), T, what="pod ping between nodes")
    # The CLI with the client certificate sees both nodes' blocks.
    res = sh([EXE, "ipam", "show", "-o", "json", "--etcd-endpoints", lab.etcd_endpoint,
              "--etcd-ca", e.ca_file, "--etcd-cert", e.cert_file, "--etcd-key", e.key_file],
             netns=lab.node("node-a1").netns, check=False)
    assert res.returncode == 0, res.stderr
    assert {"node-a1", "node-a2"} <= set(json.dumps(json.loads(res.stdout)).split('"'))


def test_a_client_without_a_certificate_is_refused(tls_lab):
    lab = tls_lab
    e = lab.etcd
    ns = lab.node("node-a1").netns
    # Plain TLS client, no certificate: the handshake fails (etcd requires one).
    res = sh(["curl", "-s", "-m", "5", "--cacert", e.ca_file, f"{e.url}/health"], netns=ns,
             check=False)
    assert res.returncode != 0 and '"true"' not in res.stdout
    ok = sh(["curl", "-s", "-m", "5", "--cacert", e.ca_file, "--cert", e.cert_file,
             "--key", e.key_file, f"{e.url}/health"], netns=ns, check=False)
    assert '"true"' in ok.stdout  # the same call with the certificate works
    # Plain http to the TLS port gets nothing useful either.
    res = sh(["curl", "-s", "-m", "5", f"http://{lab.etcd_endpoint}/v3/kv/range", "-d", "{}"],
             netns=ns, check=False)
    assert '"kvs"' not in res.stdout and '"header"' not in res.stdout

    # The CLI: one clear line, exit 1.
    res = sh([EXE, "ipam", "show", "--etcd-endpoints", lab.etcd_endpoint, "--etcd-ca", e.ca_file,
              "--etcd-timeout", "2"], netns=ns, check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and lab.etcd_endpoint in res.stderr, res.stderr


def test_cni_without_a_certificate_fails_cleanly(tls_lab):
    lab = tls_lab
    node = "node-a1"
    conf = lab.cni_conf(node)
    del conf["etcd_cert"], conf["etcd_key"]
    conf["etcd_timeout"] = 2.0
    pod_ns = lab.netns_set.add(lab.ns("pa1-nocert"))
    try:
        res = lab.cni(node, "ADD", "nocert0000000001", pod_ns, conf=conf)
        assert res.returncode != 0
        doc = json.loads(res.stdout)
        assert doc["code"] == 11 and "etcd" in doc["msg"], doc  # try again later
        links = sh(["ip", "-o", "link"], netns=pod_ns).stdout
        assert "eth0" not in links  # nothing left in the pod
        # Only a half-configured TLS is an invalid config (code 7), not a silent plaintext.
        half = dict(conf, etcd_cert=lab.etcd.cert_file)
        res = lab.cni(node, "ADD", "nocert0000000002", pod_ns, conf=half)
        assert json.loads(res.stdout)["code"] == 7
    finally:
        sh(["ip", "netns", "delete", pod_ns], check=False)
        lab.netns_set.names.remove(pod_ns)


def test_the_client_key_never_appears_in_logs_or_output(tls_lab):
    lab = tls_lab
    with open(lab.etcd.key_file) as f:
        pem = f.read()
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert body
    needles = [line.encode() for line in body]
    for n in lab.nodes:
        d = lab.node_dir(n.name)
        for root, _dirs, files in os.walk(d):
            for name in files:
                path = os.path.join(root, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                assert b"PRIVATE KEY" not in data, path
                assert not any(x in data for x in needles), path
        for argv in (["status", "-o", "json"], ["peers", "-o", "json"]):
            res = lab.nr(n.name, *argv)
            assert res.returncode == 0 and not any(x.decode() in res.stdout for x in needles)
        metrics = sh(["curl", "-s", "-m", "5", "http://127.0.0.1:9091/metrics"],
                     netns=n.netns).stdout
        assert "noderouter_" in metrics and not any(x.decode() in metrics for x in needles)
