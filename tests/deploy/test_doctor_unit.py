"""`noderouter doctor`'s judgements: facts in, one ok/FAIL/skip line out (issue 16)."""

import json
from types import SimpleNamespace

import pytest

from bgpd.cli import doctor as d

pytestmark = pytest.mark.unit


def pool(cidr="198.19.0.0/16", ipip="Never", vxlan="Never", nat=False, disabled=False):
    return SimpleNamespace(cidr=cidr, ipip_mode=ipip, vxlan_mode=vxlan, nat_outgoing=nat,
                           disabled=disabled)


ABSENT = d.ModuleEvidence(loaded=False, in_sysfs=False, kconfig=None, modprobe_ok=False)


def test_a_module_is_needed_only_by_the_pools_that_use_it():
    needed = d.modules_needed([pool(vxlan="CrossSubnet"), pool("198.19.64.0/18", nat=True),
                               pool("198.19.128.0/18", ipip="Always", disabled=True)])
    assert needed == {"vxlan": "VXLAN in pool 198.19.0.0/16", "ipip": None,
                      "nf_tables": "nat_outgoing in pool 198.19.64.0/18"}


def test_a_missing_module_fails_only_when_a_pool_needs_it():
    # This machine's kernel has no ipip: a VXLAN-only node must still pass.
    skipped = d.judge_module("ipip", None, ABSENT)
    assert skipped.ok is None and skipped.status == "skip"
    failed = d.judge_module("ipip", "IPIP in pool 198.19.0.0/16", ABSENT)
    assert failed.ok is False and "modprobe ipip" in failed.fix
    assert "IPIP in pool 198.19.0.0/16" in failed.detail


@pytest.mark.parametrize("evidence, how", [
    (d.ModuleEvidence(True, True, None, None), "loaded"),
    (d.ModuleEvidence(False, True, None, None), "/sys/module"),
    (d.ModuleEvidence(False, False, "y", False), "CONFIG_VXLAN=y"),
    (d.ModuleEvidence(False, False, "m", True), "loadable"),
])
def test_a_module_is_present_by_any_evidence(evidence, how):
    c = d.judge_module("vxlan", "VXLAN in pool 198.19.0.0/16", evidence)
    assert c.ok is True and how in c.detail


def test_a_module_built_as_m_but_not_found_by_modprobe_fails():
    c = d.judge_module("vxlan", "VXLAN", d.ModuleEvidence(False, False, "m", False))
    assert c.ok is False and "CONFIG_VXLAN=m" in c.detail


def test_kconfig_lines_are_read_exactly():
    text = "CONFIG_NET_IPIP_FOO=y\n# CONFIG_NET_IPIP is not set\nCONFIG_VXLAN=m\n"
    assert d._kconfig_value(text, "CONFIG_NET_IPIP") == "n"
    assert d._kconfig_value(text, "CONFIG_VXLAN") == "m"
    assert d._kconfig_value(text, "CONFIG_NF_TABLES") is None


@pytest.mark.parametrize("value, writable, ok", [
    ("1", False, True), ("0", True, True), ("0", False, False), (None, False, False)])
def test_forwarding(value, writable, ok):
    assert d.judge_forwarding(value, writable).ok is ok


OURS = json.dumps({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
    {"type": "noderouter-cni"}, {"type": "portmap"}, {"type": "bandwidth"}]})


def test_cni_conf_ours_first_with_its_chain():
    c = d.judge_cni_conf("/etc/cni/net.d", {"10-noderouter.conflist": OURS,
                                            "10-noderouter.conflist.example": OURS,
                                            "99-loopback.conf": '{"type": "loopback"}'})
    assert c.ok is True
    assert c.detail == ("/etc/cni/net.d/10-noderouter.conflist: noderouter-cni chained with "
                        "portmap, bandwidth")


@pytest.mark.parametrize("files, says", [
    (None, "/etc/cni/net.d does not exist"),
    ({}, "no network config"),
    # The shipped example is not active: runtimes read only .conf/.conflist/.json.
    ({"10-noderouter.conflist.example": OURS}, "no network config"),
    ({"10-bridge.conf": '{"type": "bridge"}'}, "no config in /etc/cni/net.d names type "
                                               "noderouter-cni"),
    ({"05-bridge.conf": '{"type": "bridge"}', "10-noderouter.conflist": OURS},
     "05-bridge.conf sorts first"),
    ({"10-noderouter.conflist": "{not json"}, "not JSON"),
])
def test_cni_conf_failures_say_what_is_wrong(files, says):
    c = d.judge_cni_conf("/etc/cni/net.d", files)
    assert c.ok is False and says in c.detail
    assert c.fix


def test_a_broken_file_before_ours_is_skipped_like_the_runtime_does():
    c = d.judge_cni_conf("/x", {"01-broken.conf": "{", "10-noderouter.conflist": OURS})
    assert c.ok is True


def test_etcd():
    ok = d.judge_etcd(["198.18.0.10:2379"], {"ca_file": "/ca", "cert_file": "/c",
                                             "key_file": "/k"}, [], None)
    assert ok.ok is True and ok.detail == "198.18.0.10:2379 (TLS + client certificate) answers"
    down = d.judge_etcd(["198.18.0.10:2379"], {}, [], "did not answer get within 3.0s")
    assert down.ok is False and "did not answer" in down.detail
    files = d.judge_etcd(["198.18.0.10:2379"], {"ca_file": "/nope"}, ["ca_file /nope"], None)
    assert files.ok is False and "cannot read ca_file /nope" in files.detail


def test_exabgp_version_output_is_read():
    out = ("ExaBGP : 5.0.15\nPython : 3.9.16 (7.3.11+dfsg-2+deb12u3) [PyPy 7.3.11 with GCC]\n"
           "Uname  : Linux\n")
    c = d.judge_exabgp("/opt/venvs/noderouter/exabgp-pypy/bin/exabgp", 0, out, None)
    assert c.ok is True and c.detail.endswith("ExaBGP 5.0.15 under PyPy")
    assert d.judge_exabgp("/x", 2, "usage: exabgp", None).ok is False
    assert d.judge_exabgp("/x", None, "", "cannot run /x: no such file").ok is False


def test_peer_routes():
    assert d.judge_peer("198.18.1.1", "tor-a", d.RouteAnswer(dev="eth0")).detail == \
        "directly connected, dev eth0"
    bad = d.judge_peer("198.18.250.1", "", d.RouteAnswer(error="No route to host (errno 113)"))
    assert bad.ok is False and bad.name == "route to peer 198.18.250.1"
    assert d.judge_peer("198.18.250.1", "", d.RouteAnswer(rtype=6)).ok is False  # blackhole


def test_no_peers_and_no_mesh_fails_mesh_skips():
    lookup = pytest.fail  # never asked
    assert d.peer_checks(SimpleNamespace(peers=(), mesh=False), lookup)[0].ok is False
    assert d.peer_checks(SimpleNamespace(peers=(), mesh=True), lookup)[0].ok is None


def test_exit_code_and_lines():
    checks = [d.Check("a", True, "fine"), d.Check("bb", None, "not needed"),
              d.Check("c", False, "broken", "repair it")]
    assert d.exit_code(checks) == 1
    assert d.exit_code(checks[:2]) == 0
    assert d.render(checks) == ["ok    a   fine", "skip  bb  not needed",
                                "FAIL  c   broken -- repair it"]
