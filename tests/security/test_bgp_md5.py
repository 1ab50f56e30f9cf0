"""TCP MD5 on every peer type, and the passwords never leaking.

Two labs: the ToR design over two racks (node-a1 peers with the BIRD ToR, node-b1 with the
FRR ToR) and the mesh design (node-a1 <-> node-a2), all with ``bgp_password``. Right
password: sessions establish and routes flow. Wrong (or no) password on one side: no
session, and the refusing kernel counts it (``TcpExtTCPMD5Failure`` / ``TCPMD5NotFound`` in
that namespace's /proc/net/netstat), which proves the attempts happened and were refused for
MD5, not for some other reason. Then the password is put right and the session returns.

Secrets: the password never appears in the daemon's logs, ExaBGP's log, the CNI log, status
or peers output (``-o json``) or the metrics; ExaBGP's config (which must hold it) is 0600.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from lab.netns import sh
from lab.procs import wait_for
from lab.topology import Lab

pytestmark = pytest.mark.e2e

PASSWORD = "Md5-s3cret-9fQx"
WRONG = "Md5-wr0ng-7Hkp"
T = 60  # generous bound for convergence; never asserted as a duration


def build(**kw) -> Lab:
    lab = Lab(bgp_password=PASSWORD, **kw)
    try:
        lab.up()
        lab.start_all(wait=True)
        for n in lab.nodes:
            lab.add_pod(n.name, "p1")
    except BaseException:
        lab.down()
        raise
    return lab


@pytest.fixture(scope="module")
def tor_lab():
    lab = build(racks=2, nodes_per_rack=1, design="tor")
    try:
        yield lab
    finally:
        assert lab.down() == []


@pytest.fixture(scope="module")
def mesh_lab():
    lab = build(racks=1, nodes_per_rack=2, design="mesh")
    try:
        yield lab
    finally:
        assert lab.down() == []


# ---------------------------------------------------------------------------- helpers

def peers(lab: Lab, node: str) -> dict[str, dict]:
    res = lab.nr(node, "peers", "-o", "json")
    assert res.returncode == 0, res.stderr
    return {p["address"]: p for p in json.loads(res.stdout)}


def md5_counters(netns: str) -> dict[str, int]:
    """TcpExt MD5 counters of a namespace (/proc/net is per network namespace)."""
    text = sh(["cat", "/proc/net/netstat"], netns=netns).stdout.splitlines()
    for head, vals in zip(text[::2], text[1::2], strict=False):
        if head.startswith("TcpExt:"):
            kv = dict(zip(head.split()[1:], map(int, vals.split()[1:]), strict=True))
            return {k: v for k, v in kv.items() if "MD5" in k}
    raise AssertionError("no TcpExt line in /proc/net/netstat")


def restart(lab: Lab, node: str, **overrides) -> None:
    lab.stop_noderouter(node)
    lab.start_noderouter(node, **overrides)


def tor_peer(lab: Lab, node: str, password: str | None) -> dict:
    rack = lab.node(node).rack
    p = {"address": str(rack.tor_address), "as_number": rack.tor_as,
         "description": f"tor-{rack.letter}", "hold_time": 9, "import_allow": ["0.0.0.0/0"]}
    if password is not None:
        p["password"] = password
    return p


def refused_then_fixed(lab: Lab, node: str, refuser_ns: str, counter: str,
                       is_established, bad: dict, good: dict, while_refused=None) -> None:
    """Restart ``node`` with ``bad`` overrides: no session, the refusing kernel counts MD5
    refusals; then with ``good``: the session is back."""
    before = md5_counters(refuser_ns)[counter]
    restart(lab, node, **bad)
    # Several refused attempts (the dialer retries), each counted by the refusing kernel.
    wait_for(lambda: md5_counters(refuser_ns)[counter] >= before + 3, T,
             what=f"{counter} refusals in {refuser_ns}")
    assert not is_established(), "a session came up with a mismatched TCP MD5 password"
    assert lab.daemons[node].alive(), lab.daemons[node].log_tail()
    if while_refused is not None:
        while_refused()
    restart(lab, node, **good)
    wait_for(is_established, T, what=f"{node}'s session back with the right password")


def assert_no_secret(lab: Lab, secret: str) -> None:
    # Everything the product writes under each node's dir: daemon log, ExaBGP log, CNI log,
    # CNI state. node.yaml is the lab's input (it must hold the password); ExaBGP's config
    # must too, but only root may read it.
    for n in lab.nodes:
        d = lab.node_dir(n.name)
        for root, _dirs, files in os.walk(d):
            for name in files:
                path = os.path.join(root, name)
                if path == os.path.join(d, "node.yaml") or stat.S_ISSOCK(os.stat(path).st_mode):
                    continue
                if name == "exabgp.conf":
                    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
                    continue
                with open(path, "rb") as f:
                    assert secret.encode() not in f.read(), f"{secret!r} in {path}"
        for argv in (["status", "-o", "json"], ["peers", "-o", "json"], ["routes", "-o", "json"],
                     ["status"], ["peers"]):
            res = lab.nr(n.name, *argv)
            assert res.returncode == 0, res.stderr
            assert secret not in res.stdout + res.stderr, argv
        metrics = sh(["curl", "-s", "-m", "5", "http://127.0.0.1:9091/metrics"],
                     netns=n.netns).stdout
        assert "noderouter_" in metrics and secret not in metrics


# ---------------------------------------------------------------------------- tests

def test_tor_sessions_with_md5_to_bird_and_frr(tor_lab):
    lab = tor_lab
    for node in ("node-a1", "node-b1"):
        rack = lab.node(node).rack
        assert peers(lab, node)[str(rack.tor_address)]["state"] == "established"
        lab.tors[rack.letter].wait_established(lab.node(node).address, T)
    # Routes flow across the fabric: a pod on rack A reaches a pod on rack B.
    a, b = lab.pods["node-a1/p1"], lab.pods["node-b1/p1"]
    wait_for(lambda: lab.ping(a["netns"], b["ip"]), T, what="pod ping across racks")


@pytest.mark.parametrize("node,password,counter", [
    ("node-a1", WRONG, "TCPMD5Failure"),     # BIRD ToR refuses a wrong password
    ("node-b1", WRONG, "TCPMD5Failure"),     # FRR ToR refuses a wrong password
    ("node-a1", None, "TCPMD5NotFound"),     # and a node with no password at all
])
def test_tor_refuses_a_mismatched_password(tor_lab, node, password, counter):
    lab = tor_lab
    rack = lab.node(node).rack
    tor = lab.tors[rack.letter]
    addr = lab.node(node).address

    def established() -> bool:
        return (peers(lab, node)[str(rack.tor_address)]["state"] == "established"
                or tor.established(addr))

    def status_says_why() -> None:
        # ExaBGP reports nothing for unanswered connects; the peer status explains.
        wait_for(lambda: "MD5" in peers(lab, node)[str(rack.tor_address)]["last_error"], T,
                 what=f"{node}'s status naming a possible TCP MD5 mismatch")

    refused_then_fixed(lab, node, lab.ns(f"tor{rack.letter}"), counter, established,
                       bad={"bgp.peers": [tor_peer(lab, node, password)]},
                       good={"bgp.peers": [tor_peer(lab, node, PASSWORD)]},
                       while_refused=status_says_why)
    a, b = lab.pods["node-a1/p1"], lab.pods["node-b1/p1"]
    wait_for(lambda: lab.ping(a["netns"], b["ip"]), T, what="pod ping across racks again")


def test_tor_lab_never_shows_the_password(tor_lab):
    assert_no_secret(tor_lab, PASSWORD)
    assert_no_secret(tor_lab, WRONG)


def test_debug_logging_and_reload_never_show_the_password(tor_lab):
    import signal

    lab = tor_lab
    node = "node-a1"
    rack = lab.node(node).rack
    restart(lab, node, **{"logging.level": "debug"})
    wait_for(lambda: peers(lab, node)[str(rack.tor_address)]["state"] == "established", T,
             what="session with debug logging")
    # A reload that changes the password (and back): config diffs are a classic leak.
    conf = os.path.join(lab.node_dir(node), "node.yaml")
    good = open(conf).read()
    assert PASSWORD in good
    def reloads() -> int:
        return open(lab.daemons[node].log_path).read().count('"config_reloaded"')

    for text in (good.replace(PASSWORD, WRONG), good):
        n = reloads()
        with open(conf, "w") as f:
            f.write(text)
        lab.daemons[node].signal(signal.SIGHUP)
        wait_for(lambda n=n: reloads() > n, T, what="config_reloaded")
    wait_for(lambda: peers(lab, node)[str(rack.tor_address)]["state"] == "established", T,
             what="session after reloads")
    log = open(lab.daemons[node].log_path).read()
    assert '"level": "debug"' in log  # debug really was on
    assert_no_secret(lab, PASSWORD)
    assert_no_secret(lab, WRONG)
    restart(lab, node)


def test_mesh_sessions_with_md5(mesh_lab):
    lab = mesh_lab
    a1, a2 = lab.node("node-a1"), lab.node("node-a2")
    wait_for(lambda: peers(lab, "node-a1").get(a2.address, {}).get("state") == "established"
             and peers(lab, "node-a2").get(a1.address, {}).get("state") == "established",
             T, what="mesh session up both ways")
    p1, p2 = lab.pods["node-a1/p1"], lab.pods["node-a2/p1"]
    wait_for(lambda: lab.ping(p1["netns"], p2["ip"]), T, what="pod ping across the mesh")


def test_mesh_refuses_a_mismatched_password(mesh_lab):
    lab = mesh_lab
    a1, a2 = lab.node("node-a1"), lab.node("node-a2")

    def established() -> bool:
        return any(peers(lab, n).get(other, {}).get("state") == "established"
                   for n, other in (("node-a1", a2.address), ("node-a2", a1.address))
                   if n in lab.daemons)

    # node-a2 (the higher address) is passive: node-a1 dials with the right password and
    # node-a2's kernel, keyed with the wrong one, refuses every SYN.
    refused_then_fixed(lab, "node-a2", a2.netns, "TCPMD5Failure", established,
                       bad={"bgp.mesh_password": WRONG}, good={})
    p1, p2 = lab.pods["node-a1/p1"], lab.pods["node-a2/p1"]
    wait_for(lambda: lab.ping(p1["netns"], p2["ip"]), T, what="pod ping across the mesh again")


def test_mesh_lab_never_shows_the_password(mesh_lab):
    assert_no_secret(mesh_lab, PASSWORD)
    assert_no_secret(mesh_lab, WRONG)
