"""Issue 16: the "ips" capability (``runtimeConfig.ips``), the ``args.cni.ips``
convention and ``CNI_ARGS`` ``IP=``: ``podman run --ip 198.19.255.250`` gets exactly
that address, or ADD fails with an error naming why — never another address.

Real etcd and the real plugin executable in a throwaway node namespace (conftest).
"""

from __future__ import annotations

import itertools

import pytest

from bgpd.cni.protocol import host_veth_name

from .conftest import CniBench, Server
from .test_cni_integration import assert_nothing_left, assert_valid_result, links, pod_sh

pytestmark = pytest.mark.integration

WANT = "198.19.255.250"
_pods = itertools.count()


def ask(cni: CniBench, how: str, ip: str | list[str], **conf) -> tuple[dict, str | None]:
    """(conf, CNI_ARGS) asking for ``ip`` the way ``how`` names."""
    ips = ip if isinstance(ip, list) else [ip]
    if how == "runtimeConfig":
        return cni.conf(capabilities={"ips": True}, runtimeConfig={"ips": ips}, **conf), None
    if how == "args":
        return cni.conf(args={"cni": {"ips": ips}}, **conf), None
    return cni.conf(**conf), "IgnoreUnknown=1;IP=" + ",".join(ips)


@pytest.mark.parametrize("how", ["runtimeConfig", "args", "CNI_ARGS"])
def test_requested_address_is_assigned_exactly(cni: CniBench, how: str):
    conf, args = ask(cni, how, f"{WANT}/24" if how == "runtimeConfig" else WANT)
    ns = cni.pod()
    res = cni.run("ADD", "c1", ns, conf=conf, args=args)
    assert res.code == 0, res.stdout + res.stderr
    assert assert_valid_result(res.doc, "1.0.0", ns) == WANT
    assert f"{WANT}/32" in pod_sh(ns, "ip", "-4", "addr", "show", "eth0")
    assert cni.ipam("handles") == {"k8s-pod-network.c1": [WANT]}
    again = cni.run("ADD", "c1", ns, conf=conf, args=args)      # a runtime retrying
    assert again.code == 0 and again.doc == res.doc, again.stdout
    assert cni.run("DEL", "c1", ns, conf=conf, args=args).code == 0
    assert_nothing_left(cni)


def test_requested_address_through_the_daemon(cni: CniBench, tmp_path):
    srv = Server(cni, str(tmp_path / "cni.sock"), str(tmp_path / "server.log"))
    try:
        conf, _ = ask(cni, "runtimeConfig", WANT, daemon_socket=srv.path)
        ns = cni.pod()
        res = cni.run("ADD", "c1", ns, conf=conf)
        assert res.code == 0, res.stdout + res.stderr
        assert assert_valid_result(res.doc, "1.0.0", ns) == WANT
        assert [(e["container"], e["ip"]) for e in srv.events("cni_added")] == [("c1", WANT)]
        assert cni.run("DEL", "c1", ns, conf=conf).code == 0
        assert_nothing_left(cni)
    finally:
        srv.stop()


def refused(cni: CniBench, conf: dict, args: str | None = None, cid: str = "c2") -> dict:
    """ADD that must fail and leave nothing of ``cid`` behind; returns the error."""
    res = cni.run("ADD", cid, cni.pod(f"{cid}{next(_pods)}"), conf=conf, args=args)
    assert res.code == 1, res.stdout + res.stderr
    assert host_veth_name("nrw", cid) not in links(cni)
    assert f"k8s-pod-network.{cid}" not in cni.ipam("handles")
    return res.doc


def test_requested_address_in_use_is_refused(cni: CniBench):
    conf, _ = ask(cni, "runtimeConfig", WANT)
    ns = cni.pod()
    assert cni.run("ADD", "c1", ns, conf=conf).code == 0
    err = refused(cni, conf)
    assert err["code"] == 107
    assert err["msg"].startswith(f"requested address {WANT} cannot be assigned: address "
                                 f"{WANT} is held by handle k8s-pod-network.c1"), err
    assert cni.ipam("handles") == {"k8s-pod-network.c1": [WANT]}
    # The same container asking for another address than it holds: differs, DEL first.
    other, _ = ask(cni, "runtimeConfig", "198.19.255.251")
    res = cni.run("ADD", "c1", ns, conf=other)
    assert res.code == 1 and res.doc["code"] == 102, res.stdout
    assert f"attached with {WANT}, request asks for 198.19.255.251" in res.doc["details"]
    assert cni.run("DEL", "c1", ns, conf=conf).code == 0
    assert_nothing_left(cni)


def test_requested_address_outside_every_pool_is_refused(cni: CniBench):
    conf, _ = ask(cni, "args", "198.18.200.1")
    err = refused(cni, conf)
    assert (err["code"], err["msg"]) == (107, "requested address 198.18.200.1 is in no IP pool")
    assert "pools: 198.19.0.0/16" in err["details"]
    assert cni.ipam("handles") == {}


@pytest.mark.parametrize("opts,reason", [
    (["disabled=1"], "pool 198.20.0.0/16: disabled"),
    (['node_selector=name == "node-b"'],
     "pool 198.20.0.0/16: node selector 'name == \"node-b\"' excludes node node-a"),
])
def test_requested_address_in_a_pool_this_node_may_not_use(cni: CniBench, opts, reason):
    cni.ipam("add-pool", "198.20.0.0/16", *opts)
    conf, _ = ask(cni, "runtimeConfig", "198.20.0.5")
    err = refused(cni, conf)
    assert (err["code"], err["msg"], err["details"]) == (
        107, "requested address 198.20.0.5 is in a pool node node-a may not use", reason)
    assert cni.ipam("handles") == {}


def test_requested_address_reserved_or_outside_ipam_pool(cni: CniBench):
    cni.ipam("reserve", "198.19.255.248/29")
    conf, _ = ask(cni, "runtimeConfig", WANT)
    err = refused(cni, conf)
    assert err["code"] == 107 and f"address {WANT} is reserved" in err["msg"], err
    cni.ipam("add-pool", "198.20.0.0/16")
    conf, _ = ask(cni, "args", "198.20.0.5", ipam_pool="198.19.0.0/16")
    err = refused(cni, conf)
    assert (err["code"], err["msg"]) == (107, "requested address 198.20.0.5 is in pool "
                                              "198.20.0.0/16, not in this network's ipam_pool "
                                              "198.19.0.0/16")
    assert cni.ipam("handles") == {}


@pytest.mark.parametrize("how,ips,code,msg", [
    ("runtimeConfig", ["2001:2::5/64"], 7, "requested address 2001:2::5 is IPv6"),
    ("args", [WANT, "198.19.255.251"], 7,
     f"2 addresses requested ({WANT}, 198.19.255.251)"),
    ("runtimeConfig", ["198.19.255.999"], 7,
     "runtimeConfig.ips: '198.19.255.999' is not an IP address"),
    ("CNI_ARGS", ["nope"], 4, "CNI_ARGS IP: 'nope' is not an IP address"),
])
def test_bad_requests_fail_before_anything(cni: CniBench, how, ips, code, msg):
    conf, args = ask(cni, how, ips)
    err = refused(cni, conf, args)
    assert (err["code"], err["msg"]) == (code, msg)
    assert_nothing_left(cni, "c2")


def test_the_same_address_asked_twice_is_one_request(cni: CniBench):
    conf = cni.conf(runtimeConfig={"ips": [f"{WANT}/16"]}, args={"cni": {"ips": [WANT]}})
    ns = cni.pod()
    res = cni.run("ADD", "c1", ns, conf=conf, args=f"IP={WANT}")
    assert res.code == 0, res.stdout + res.stderr
    assert assert_valid_result(res.doc, "1.0.0", ns) == WANT
    assert cni.run("DEL", "c1", ns, conf=conf).code == 0
    assert_nothing_left(cni)
