"""Dual-stack ADD/CHECK/DEL (issue 15) with the real plugin, etcd and kernel namespaces.

The node namespace gets an IPv6 address inside 2001:2::/48 (the benchmarking range,
never the root namespace) and the bench an IPv6 pool; a conf with Calico's
``ipam: {"assign_ipv4": "true", "assign_ipv6": "true"}`` asks for both families.
"""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from bgpd.cni.protocol import host_veth_name

from .conftest import POOL, CniBench
from .test_cni_integration import assert_nothing_left, pod_sh

pytestmark = pytest.mark.integration

POOL6 = "2001:2:0:19::/64"           # inside 2001:2::/48: the third group is 0
NODE_ADDR6 = "2001:2:0:9::1"
GW6 = "fe80::ecee:eeff:feee:eeee"
DUAL = {"ipam": {"assign_ipv4": "true", "assign_ipv6": "true"}}


@pytest.fixture
def dual(cni: CniBench) -> CniBench:
    cni.node_sh("ip", "-6", "addr", "add", f"{NODE_ADDR6}/64", "dev", "nrup0", "nodad")
    cni.ipam("add-pool", POOL6)
    return cni


def our_routes6(bench: CniBench) -> list[dict]:
    out = bench.node_sh("ip", "-j", "-6", "route", "show", "table", "all").stdout
    return [r for r in json.loads(out or "[]") if str(r.get("protocol")) == "73"]


def test_dual_stack_add_check_del(dual: CniBench):
    netns = dual.pod()
    res = dual.run("ADD", netns=netns, conf=dual.conf(**DUAL))
    assert res.code == 0, res.stdout + res.stderr
    doc = res.doc
    assert [ip["gateway"] for ip in doc["ips"]] == ["169.254.1.1", GW6]
    v4, v6 = (ipaddress.ip_interface(ip["address"]) for ip in doc["ips"])
    assert v4.network.prefixlen == 32 and v4.ip in ipaddress.ip_network(POOL)
    assert v6.network.prefixlen == 128 and v6.ip in ipaddress.ip_network(POOL6)
    assert all(ip["interface"] == 1 and "version" not in ip for ip in doc["ips"])
    assert doc["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                             {"dst": "::/0", "gw": GW6}]
    host = host_veth_name("nrw", "c1")
    assert doc["interfaces"][0] == {"name": host, "mac": "ee:ee:ee:ee:ee:ee"}
    ip4, ip6 = str(v4.ip), str(v6.ip)

    # Pod side: the /128 (not tentative), the default route via the host's link-local.
    addrs = json.loads(pod_sh(netns, "ip", "-j", "-6", "addr", "show", "eth0"))[0]["addr_info"]
    glob = [a for a in addrs if a.get("scope") == "global"]
    assert [(a["local"], a["prefixlen"]) for a in glob] == [(ip6, 128)]
    assert not any(a.get("tentative") for a in addrs)
    default = [r for r in json.loads(pod_sh(netns, "ip", "-j", "-6", "route", "show"))
               if r["dst"] == "default"]
    assert [(r["gateway"], r["dev"]) for r in default] == [(GW6, "eth0")]

    # Host side: sysctls in the node namespace, the host link-local, our /128.
    for key, want in (("accept_ra", "0"), ("forwarding", "1"), ("accept_dad", "0")):
        got = dual.node_sh("cat", f"/proc/sys/net/ipv6/conf/{host}/{key}").stdout.strip()
        assert got == want, key
    hl = json.loads(dual.node_sh("ip", "-j", "-6", "addr", "show", host).stdout)[0]
    assert [a["local"] for a in hl["addr_info"]] == [GW6]
    assert [(r["dst"], r["dev"]) for r in our_routes6(dual)] == [(ip6, host)]

    # Both directions over IPv6, and IPv4 still.
    pod_sh(netns, "ping", "-6", "-c", "1", "-W", "5", NODE_ADDR6)
    dual.node_sh("ping", "-6", "-c", "1", "-W", "5", ip6)
    dual.node_sh("ping", "-c", "1", "-W", "5", ip4)

    with open(os.path.join(dual.state_dir, "c1.json")) as f:
        rec = json.load(f)
    assert (rec["ip"], rec["ip6"]) == (ip4, ip6)
    assert sorted(dual.ipam("handle-ips", "k8s-pod-network.c1")) == sorted([ip4, ip6])

    chk = dual.run("CHECK", netns=netns, conf=dual.conf(prevResult=doc, **DUAL))
    assert chk.code == 0 and chk.stdout == "", chk.stdout + chk.stderr
    # CHECK sees the IPv6 half: remove the pod's IPv6 default route.
    pod_sh(netns, "ip", "-6", "route", "del", "default")
    bad = dual.run("CHECK", netns=netns, conf=dual.conf(prevResult=doc, **DUAL))
    assert bad.code == 1 and bad.doc["code"] == 104, bad.stdout + bad.stderr
    assert f"pod default route via {GW6} dev eth0 is missing" in bad.doc["details"]

    # ADD again (a runtime that lost the answer) while intact: the same result.
    pod_sh(netns, "ip", "-6", "route", "add", "default", "via", GW6, "dev", "eth0")
    again = dual.run("ADD", netns=netns, conf=dual.conf(**DUAL))
    assert again.code == 0 and again.doc == doc, again.stdout + again.stderr

    for _ in range(2):                              # DEL is idempotent
        d = dual.run("DEL", netns=netns, conf=dual.conf(**DUAL))
        assert d.code == 0 and d.stdout == "", d.stdout + d.stderr
        assert our_routes6(dual) == []
        assert_nothing_left(dual)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_dual_stack_old_result_shapes(dual: CniBench, version: str):
    dual.version = version
    netns = dual.pod()
    res = dual.run("ADD", netns=netns, conf=dual.conf(**DUAL))
    assert res.code == 0, res.stdout + res.stderr
    assert [ip["version"] for ip in res.doc["ips"]] == ["4", "6"]
    assert dual.run("DEL", netns=netns).code == 0
    assert_nothing_left(dual)


def test_ipv4_only_conf_is_unchanged_with_a_v6_pool(dual: CniBench):
    netns = dual.pod()
    res = dual.run("ADD", netns=netns)
    assert res.code == 0, res.stdout + res.stderr
    assert len(res.doc["ips"]) == 1 and res.doc["routes"] == [{"dst": "0.0.0.0/0",
                                                                "gw": "169.254.1.1"}]
    assert res.doc["interfaces"][0]["mac"] != "ee:ee:ee:ee:ee:ee"
    assert our_routes6(dual) == []
    assert len(dual.ipam("handle-ips", "k8s-pod-network.c1")) == 1
    assert dual.run("DEL", netns=netns).code == 0
    assert_nothing_left(dual)


def test_requested_ipv6_address_is_assigned_exactly(dual: CniBench):
    netns = dual.pod()
    conf = dual.conf(**DUAL, runtimeConfig={"ips": ["2001:2:0:19::77/64"]})
    res = dual.run("ADD", netns=netns, conf=conf)
    assert res.code == 0, res.stdout + res.stderr
    assert res.doc["ips"][1]["address"] == "2001:2:0:19::77/128"
    assert dual.run("DEL", netns=netns).code == 0
    assert_nothing_left(dual)


def test_requested_ipv6_address_outside_the_pools_is_refused(dual: CniBench):
    netns = dual.pod()
    conf = dual.conf(**DUAL, args={"cni": {"ips": ["2001:2:0:77::1"]}})
    res = dual.run("ADD", netns=netns, conf=conf)
    assert res.code == 1 and res.doc["code"] == 107, res.stdout + res.stderr
    assert "requested address 2001:2:0:77::1 is in no IP pool" in res.doc["msg"]
    assert_nothing_left(dual)


def test_missing_ipv6_pool_is_named_and_nothing_left(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, conf=cni.conf(**DUAL))
    assert res.code == 1 and res.doc["code"] == 101, res.stdout + res.stderr
    assert "no enabled IPv6 IP pool exists" in res.doc["msg"]
    assert POOL in res.doc["details"]
    assert_nothing_left(cni)                      # the IPv4 lease was released
    assert len(json.loads(pod_sh(netns, "ip", "-j", "link", "show"))) == 1   # only lo


def test_dual_stack_failure_mid_add_releases_both(dual: CniBench):
    """The record cannot be written (immutable state dir, as in the IPv4 test): ADD
    fails after both addresses and the veth exist, and undoes all of it."""
    import subprocess

    netns = dual.pod()
    assert dual.run("DEL", netns=netns).code == 0           # creates the dir and .locks
    subprocess.run(["chattr", "+i", dual.state_dir], check=True)
    try:
        res = dual.run("ADD", netns=netns, conf=dual.conf(**DUAL))
    finally:
        subprocess.run(["chattr", "-i", dual.state_dir], check=True)
    assert res.code == 1 and res.doc["code"] == 106, res.stdout + res.stderr
    undo = [json.loads(line) for line in res.stderr.splitlines()
            if "cni_add_failed_undoing" in line]
    assert undo and undo[0]["steps"] == ["release", "release6", "veth", "endpoint"]
    assert our_routes6(dual) == []
    assert_nothing_left(dual)


def test_dual_stack_through_the_daemon(dual: CniBench, tmp_path):
    from .conftest import Server

    srv = Server(dual, str(tmp_path / "cni.sock"), str(tmp_path / "server.log"))
    try:
        conf = dual.conf(daemon_socket=srv.path, **DUAL)
        netns = dual.pod()
        res = dual.run("ADD", netns=netns, conf=conf)
        assert res.code == 0, res.stdout + res.stderr
        ip6 = str(ipaddress.ip_interface(res.doc["ips"][1]["address"]).ip)
        assert [e["ip6"] for e in srv.events("cni_added")] == [ip6]
        pod_sh(netns, "ping", "-6", "-c", "1", "-W", "5", NODE_ADDR6)
        assert dual.run("DEL", netns=netns, conf=conf).code == 0
        assert_nothing_left(dual)
    finally:
        srv.stop()
