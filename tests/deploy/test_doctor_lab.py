"""`noderouter doctor` on a lab node, inside the node's network namespace (issue 16).

A lab node before its first start (etcd over TLS with client certificates, the ToR
design) passes every check; then etcd stopped, the CNI config missing and a peer
unroutable each fail exactly their own check, with exit 1.

On this machine's kernel there is no ipip module: the lab's pools use no IPIP, so that
check is reported as skipped (needed only when a pool uses IPIP), not failed.
"""

import json
import os
import sys

import pytest
import yaml

from lab.topology import Lab

pytestmark = pytest.mark.e2e

UNROUTABLE_PEER = "198.18.250.1"


@pytest.fixture(scope="module")
def lab():
    the_lab = Lab(design="tor", nodes_per_rack=1, racks=1, etcd_tls=True)
    try:
        the_lab.up()
        yield the_lab
    finally:
        errors = the_lab.down()
        assert not errors, errors


@pytest.fixture
def node_files(lab, tmp_path):
    """The node's config and a CNI conf dir with our conflist, as an operator writes them."""
    name = lab.nodes[0].name
    conf = tmp_path / "node.yaml"
    conf.write_text(lab.node_config(name))
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    ours = lab.cni_conf(name)
    plugins = [{k: v for k, v in ours.items() if k not in ("cniVersion", "name")},
               {"type": "portmap", "capabilities": {"portMappings": True}},
               {"type": "bandwidth", "capabilities": {"bandwidth": True}}]
    (conf_dir / "10-noderouter.conflist").write_text(json.dumps(
        {"cniVersion": ours["cniVersion"], "name": ours["name"], "plugins": plugins}))
    return {"name": name, "conf": conf, "conf_dir": conf_dir}


def doctor(lab, files, *extra: str):
    res = lab.nr(files["name"], "doctor", "--config", str(files["conf"]),
                 "--cni-conf-dir", str(files["conf_dir"]),
                 "--cni-bin-dir", os.path.dirname(sys.executable), "-o", "json", *extra)
    assert res.stdout.strip(), res.stderr
    report = json.loads(res.stdout)
    return res.returncode, {c["name"]: c for c in report["checks"]}


def failed(checks) -> list[str]:
    return sorted(n for n, c in checks.items() if c["status"] == "FAIL")


def test_a_ready_node_passes_every_check(lab, node_files):
    code, checks = doctor(lab, node_files)
    assert failed(checks) == [], checks
    assert code == 0
    assert checks["etcd"]["detail"] == f"{lab.etcd_endpoint} (TLS + client certificate) answers"
    assert checks["cni config"]["detail"].endswith(
        "10-noderouter.conflist: noderouter-cni chained with portmap, bandwidth")
    assert checks["route to peer 198.18.1.1 (tor-a)"]["detail"] == \
        "directly connected, dev eth0"
    assert checks["sysctl net.ipv4.ip_forward"]["status"] == "ok"
    assert "under PyPy" in checks["exabgp"]["detail"]
    # No pool of this lab uses IPIP (this kernel has no ipip module): not required.
    assert checks["kernel module ipip"]["status"] == "skip"


def test_human_output_is_one_line_per_check(lab, node_files):
    res = lab.nr(node_files["name"], "doctor", "--config", str(node_files["conf"]),
                 "--cni-conf-dir", str(node_files["conf_dir"]),
                 "--cni-bin-dir", os.path.dirname(sys.executable))
    lines = res.stdout.splitlines()
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines[-1] == "all checks passed"
    assert all(line.split()[0] in ("ok", "skip") for line in lines[:-1]), lines


def test_missing_cni_config_fails_that_check_only(lab, node_files):
    (node_files["conf_dir"] / "10-noderouter.conflist").unlink()
    code, checks = doctor(lab, node_files)
    assert code == 1
    assert failed(checks) == ["cni config"]
    assert "no network config" in checks["cni config"]["detail"]
    assert "10-noderouter.conflist.example" in checks["cni config"]["fix"]


def test_unroutable_peer_fails_that_check_only(lab, node_files):
    cfg = yaml.safe_load(node_files["conf"].read_text())
    cfg["bgp"]["peers"].append({"address": UNROUTABLE_PEER, "as_number": 64999,
                                "description": "nowhere"})
    node_files["conf"].write_text(yaml.safe_dump(cfg))
    # The node has a default route via its ToR: make the peer's address unreachable the
    # way a wrong route table does (the lookup then fails with EHOSTUNREACH).
    lab.exec(node_files["name"], ["ip", "route", "add", "unreachable", f"{UNROUTABLE_PEER}/32"])
    try:
        code, checks = doctor(lab, node_files)
    finally:
        lab.exec(node_files["name"], ["ip", "route", "del", "unreachable",
                                      f"{UNROUTABLE_PEER}/32"])
    assert code == 1
    assert failed(checks) == [f"route to peer {UNROUTABLE_PEER} (nowhere)"]
    assert "No route to host" in checks[f"route to peer {UNROUTABLE_PEER} (nowhere)"]["detail"]


def test_etcd_stopped_fails_that_check_only(lab, node_files):
    lab.etcd.stop()
    code, checks = doctor(lab, node_files)
    assert code == 1
    assert failed(checks) == ["etcd"]
    assert checks["etcd"]["detail"].startswith(f"{lab.etcd_endpoint} (TLS + client certificate)")
