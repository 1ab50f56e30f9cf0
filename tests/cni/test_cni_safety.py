"""Issue 12, "CNI safety": races and requests that used to damage a live pod or the node.

* N concurrent ADDs of one container (a runtime retrying after a timeout while the
  first call still runs) through separate plugin processes and through the daemon's
  socket server: exactly one attachment, one address, etcd holds it, the pod keeps
  its veth, and every caller gets the same answer.
* ADD into the node's own network namespace, or into a namespace that already holds
  another container's interface: refused before anything changes.
* DEL of a stale container whose address a live pod now holds: the live pod keeps its
  route and address (and ``Kernel.delete_host_route`` deletes only the container's own).
* ``"node_name": ""`` and a config too large for the daemon socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bgpd.cni.protocol import host_veth_name, pod_handle

from .conftest import REPO, CniBench, Server
from .test_cni_fast import plugin_events
from .test_cni_integration import (
    assert_nothing_left,
    assert_valid_result,
    links,
    our_routes,
    pod_sh,
    records,
)

pytestmark = pytest.mark.integration

CONCURRENT = 8
ROUNDS = 4


# ------------------------------------------------------------------ helpers

def _dump(run) -> dict:
    """Links, IPv4 addresses and routes of every table, and IPv6 routes but the
    kernel's own link-local ones: what an ADD could change. IPv6 link-local addresses
    and their routes come and go by themselves (DAD on a fresh veth), so they are left
    out rather than waited for."""
    def j(*argv: str):
        return json.loads(run("ip", "-j", *argv) or "[]")
    links = [{k: link.get(k) for k in ("ifindex", "ifname", "flags", "mtu", "link_index",
                                        "address", "operstate")} for link in j("link", "show")]
    addrs = [(a["ifname"], info["local"], info["prefixlen"])
             for a in j("-4", "addr", "show") for info in a["addr_info"]]
    routes6 = [r for r in j("-6", "route", "show", "table", "all")
               if not str(r.get("dst", "")).startswith(("fe80:", "ff00:"))
               and r.get("type") not in ("multicast",)]
    return {"links": links, "addrs": addrs, "routes6": routes6,
            "routes4": j("-4", "route", "show", "table", "all")}


def node_dump(bench: CniBench) -> dict:
    return _dump(lambda *argv: bench.node_sh(*argv).stdout)


def netns_dump(netns: str) -> dict:
    return _dump(lambda *argv: pod_sh(netns, *argv))


def assert_one_attachment(bench: CniBench, cid: str, netns: str, results: list) -> str:
    """After concurrent ADDs of ``cid``: every caller got the same result, and the
    kernel, the state dir and etcd hold exactly one attachment with that address."""
    failed = [(r.code, r.stdout) for r in results if r.code != 0]
    assert not failed, failed
    docs = [r.doc for r in results]
    assert all(d == docs[0] for d in docs), docs
    ip = assert_valid_result(docs[0], bench.version, netns)
    host = host_veth_name("nrw", cid)
    # etcd still holds the address for this container (the bug: a loser's rollback
    # released it while the winner's pod used it).
    assert bench.ipam("handle-ips", pod_handle(cid)) == [ip]
    holders = [h for h, ips in bench.ipam("handles").items() if ip in ips]
    assert holders == [pod_handle(cid)]
    # One host veth, still the peer of the pod's eth0, which carries the address.
    assert host in links(bench)
    pod_links = sorted(link["ifname"] for link in json.loads(pod_sh(netns, "ip", "-j",
                                                                    "link", "show")))
    assert pod_links == ["eth0", "lo"]
    addrs = json.loads(pod_sh(netns, "ip", "-j", "-4", "addr", "show", "eth0"))
    assert [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"]] == [(ip, 32)]
    assert [(r["dst"], r["dev"]) for r in our_routes(bench) if r["dst"] == ip] == [(ip, host)]
    with open(os.path.join(bench.state_dir, f"{cid}.json")) as f:
        assert json.load(f)["ip"] == ip
    # CHECK inspects the rest: veth pairing, proxy ARP, pod routes, IPAM.
    chk = bench.run("CHECK", cid, netns, conf=bench.conf(prevResult=docs[0]))
    assert chk.code == 0 and chk.stdout == "", chk.stdout + chk.stderr
    return ip


def concurrent_rounds(bench: CniBench, conf: dict, tag: str) -> None:
    done = []
    for n in range(ROUNDS):
        cid, netns = f"{tag}{n}", bench.pod(f"{tag}{n}")
        results = bench.run_together(CONCURRENT, "ADD", cid, netns, conf)
        ip = assert_one_attachment(bench, cid, netns, results)
        done.append((cid, netns, ip))
    # Every round's pod kept its own address: no two pods share one.
    assert len({ip for _, _, ip in done}) == ROUNDS
    for cid, netns, _ in done:
        d = bench.run("DEL", cid, netns, conf=conf)
        assert d.code == 0, d.stdout + d.stderr
    assert_nothing_left(bench, done[0][0])


# ------------------------------------------------------------------ 1: concurrent ADDs

def test_concurrent_adds_of_one_container_direct(cni: CniBench, tmp_path):
    """Separate ``noderouter-cni`` processes (no daemon): one attachment per container."""
    concurrent_rounds(cni, cni.conf(daemon_socket=None), "d")


def test_concurrent_adds_of_one_container_through_the_daemon(cni: CniBench, tmp_path):
    """The same through the daemon's socket server, whose worker threads run the
    commands side by side (one worker per concurrent call)."""
    srv = Server(cni, str(tmp_path / "cni.sock"), str(tmp_path / "server.log"),
                 workers=CONCURRENT)
    try:
        plugin_log = str(tmp_path / "plugin.log")
        concurrent_rounds(cni, cni.conf(daemon_socket=srv.path, log_file=plugin_log), "s")
        assert plugin_events(plugin_log, "cni_added") == []     # the daemon served them all
        assert len(srv.events("cni_added")) == ROUNDS             # one real ADD per container
    finally:
        srv.stop()


# ------------------------------------------------------------------ 2: foreign netns

@pytest.mark.parametrize("path", ["direct", "daemon"])
def test_add_into_the_node_netns_is_refused(cni: CniBench, tmp_path, path: str):
    srv = None
    if path == "daemon":
        srv = Server(cni, str(tmp_path / "cni.sock"), str(tmp_path / "server.log"))
    try:
        conf = cni.conf(daemon_socket=srv.path if srv else None)
        before = node_dump(cni)
        res = cni.run("ADD", "own", f"/run/netns/{cni.node}", conf=conf)
        assert res.code == 1 and res.doc["code"] == 4, res.stdout + res.stderr
        assert "own network namespace" in res.doc["msg"]
        assert f"/run/netns/{cni.node}" in res.doc["msg"]
        assert node_dump(cni) == before
        assert cni.ipam("handles") == {} and records(cni) == []
        if srv is not None:
            assert [e["code"] for e in srv.events("cni_error")] == [4]
    finally:
        if srv is not None:
            srv.stop()
    assert_nothing_left(cni, "own")


def test_add_into_another_containers_netns_is_refused(cni: CniBench):
    """Container ``b`` named with ``a``'s netns (as eth1, so the name does not clash):
    refused before anything changes, ``a`` keeps its default route and address."""
    netns = cni.pod("shared")
    first = cni.run("ADD", "a", netns)
    assert first.code == 0, first.stdout + first.stderr
    before_node, before_pod = node_dump(cni), netns_dump(netns)
    handles = cni.ipam("handles")

    res = cni.run("ADD", "b", netns, ifname="eth1")
    assert res.code == 1 and res.doc["code"] == 4, res.stdout + res.stderr
    assert "container a" in res.doc["msg"] and netns in res.doc["msg"]
    assert node_dump(cni) == before_node and netns_dump(netns) == before_pod
    assert cni.ipam("handles") == handles and records(cni) == ["a.json"]
    # The runtime's DEL after the failed ADD leaves a alone too.
    assert cni.run("DEL", "b", netns, ifname="eth1").code == 0
    chk = cni.run("CHECK", "a", netns, conf=cni.conf(prevResult=first.doc))
    assert chk.code == 0, chk.stdout + chk.stderr
    assert cni.run("DEL", "a", netns).code == 0
    assert_nothing_left(cni, "a")


# ------------------------------------------------------------------ 3: stale DEL

def test_stale_del_leaves_the_pod_that_reused_the_address(cni: CniBench):
    """``a``'s veth is gone and its address released behind its back (an admin, an
    IPAM repair); ``b`` gets that address. ``a``'s DEL finds a's record, and a host
    route of ours to the same /32 — b's — must survive it."""
    na, nb = cni.pod("a"), cni.pod("b")
    ra = cni.run("ADD", "a", na)
    assert ra.code == 0, ra.stdout + ra.stderr
    ip = assert_valid_result(ra.doc, "1.0.0", na)
    cni.node_sh("ip", "link", "del", host_veth_name("nrw", "a"))
    assert cni.ipam("release-handle", pod_handle("a")) == [ip]
    rb = cni.run("ADD", "b", nb)
    assert rb.code == 0, rb.stdout + rb.stderr
    assert assert_valid_result(rb.doc, "1.0.0", nb) == ip        # the address was reused
    hb = host_veth_name("nrw", "b")
    assert [(r["dst"], r["dev"]) for r in our_routes(cni)] == [(ip, hb)]

    d = cni.run("DEL", "a", na)
    assert d.code == 0, d.stdout + d.stderr
    assert [(r["dst"], r["dev"]) for r in our_routes(cni)] == [(ip, hb)]
    assert cni.ipam("handles") == {pod_handle("b"): [ip]}
    chk = cni.run("CHECK", "b", nb, conf=cni.conf(prevResult=rb.doc))
    assert chk.code == 0, chk.stdout + chk.stderr
    pod_sh(nb, "ping", "-c", "1", "-W", "5", "198.18.9.1")        # b still reaches the node
    assert records(cni) == ["b.json"]
    assert cni.run("DEL", "b", nb).code == 0
    assert_nothing_left(cni, "b")


def test_delete_host_route_deletes_only_the_given_veths(cni: CniBench):
    """``Kernel.delete_host_route`` really deletes (it used to leave out the scope,
    got ESRCH and returned False) and only the route via the given interface."""
    netns = cni.pod()
    res = cni.run("ADD", "c1", netns)
    ip = assert_valid_result(res.doc, "1.0.0", netns)
    host = host_veth_name("nrw", "c1")
    # A second route of ours to the same /32 via another device (higher metric).
    cni.node_sh("ip", "route", "add", f"{ip}/32", "dev", "nrup0", "proto", "73",
                "scope", "link", "metric", "50")
    code = ("import sys\n"
            "from bgpd.cni.netns import Kernel\n"
            "with Kernel() as k:\n"
            "    idx = k.host_link(sys.argv[2]).index\n"
            "    print(k.delete_host_route(sys.argv[1], 73, idx))\n")
    out = subprocess.run(["ip", "netns", "exec", cni.node, sys.executable, "-c", code, ip,
                          host], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert [(r["dst"], r["dev"]) for r in our_routes(cni)] == [(ip, "nrup0")]
    assert host in links(cni)                                    # the route only
    cni.node_sh("ip", "route", "del", f"{ip}/32", "dev", "nrup0", "proto", "73")
    assert cni.run("DEL", "c1", netns).code == 0
    assert_nothing_left(cni)


# ------------------------------------------------------------------ 4: config limits

def test_empty_node_name_is_refused(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", "c1", netns, conf=cni.conf(node_name=""))
    assert res.code == 1 and res.doc["code"] == 7, res.stdout + res.stderr
    assert "node_name" in res.doc["msg"]
    assert_nothing_left(cni)


def test_oversized_config_is_not_try_again_forever(cni: CniBench, server: Server, tmp_path):
    """A config larger than the daemon socket takes: the plugin serves it on the
    direct path (nothing was sent, so nothing can race), not code 11 every time."""
    from bgpd.cni.server import MAX_REQUEST

    plugin_log = str(tmp_path / "plugin.log")
    conf = cni.conf(daemon_socket=server.path, log_file=plugin_log,
                    padding="x" * (MAX_REQUEST + 1024))
    netns = cni.pod()
    res = cni.run("ADD", "c1", netns, conf=conf)
    assert res.code == 0, res.stdout[:2000] + res.stderr[-2000:]
    assert_valid_result(res.doc, "1.0.0", netns)
    assert [e["container"] for e in plugin_events(plugin_log, "cni_added")] == ["c1"]
    assert server.events("cni_added") == []
    assert cni.run("DEL", "c1", netns, conf=conf).code == 0
    assert_nothing_left(cni)


def test_server_answers_an_oversized_request_with_a_permanent_error(server: Server):
    """A client that sends more than the server reads (another plugin version) gets
    an answer naming the limit (code 7), not a dropped connection (code 11)."""
    from bgpd.cni.server import MAX_REQUEST

    request = json.dumps({"env": {"CNI_COMMAND": "ADD"},
                          "stdin": json.dumps({"cniVersion": "1.0.0",
                                               "padding": "x" * (MAX_REQUEST + 1)}),
                          "hostname": "h"}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(server.path)
        s.sendall(request)
        reply = b""
        while not reply.endswith(b"\n"):
            data = s.recv(65536)
            if not data:
                break
            reply += data
    doc = json.loads(reply)
    assert doc["code"] == 1
    err = json.loads(doc["stdout"])
    assert err["code"] == 7 and str(MAX_REQUEST) in err["msg"], err
