"""The whole product in the lab: pods on four nodes in two racks reach each other in both
peering designs; same-subnet traffic is not encapsulated, cross-subnet traffic is (mesh)."""

import itertools
import json

import pytest

from lab.netns import sh
from lab.procs import wait_for

pytestmark = pytest.mark.e2e


def ping_matrix(lab) -> list[tuple[str, str]]:
    pods = list(lab.pods.values())
    fails = []
    for a, b in itertools.permutations(pods, 2):
        if not lab.ping(a["netns"], b["ip"], count=1, timeout=2):
            # One retry: the very first packet may wait for ARP on a fresh veth.
            if not lab.ping(a["netns"], b["ip"], count=2, timeout=2):
                fails.append((f"{a['node']}/{a['pod']}", f"{b['node']}/{b['pod']}"))
    return fails


def test_every_pod_pings_every_other_pod(lab):
    wait_for(lambda: all(len(lab.status(n.name)["blocks"]) >= 1 for n in lab.nodes), 30,
             what="every node to own a block")
    assert len(lab.pods) == 8
    assert ping_matrix(lab) == []


def vxlan_tx_packets(lab, node: str) -> int:
    res = sh(["ip", "-s", "-j", "link", "show", "vxlan.nr"], netns=lab.node(node).netns,
             check=False)
    if res.returncode != 0:
        return 0
    return json.loads(res.stdout)[0]["stats64"]["tx"]["packets"]


def test_same_subnet_is_direct_cross_subnet_is_encapsulated(lab):
    a1p1, a2p1, b1p1 = (lab.pods[k] for k in ("node-a1/p1", "node-a2/p1", "node-b1/p1"))
    before = vxlan_tx_packets(lab, "node-a1")
    assert lab.ping(a1p1["netns"], a2p1["ip"], count=5, timeout=2)
    same_rack = vxlan_tx_packets(lab, "node-a1") - before
    assert same_rack == 0, "same-subnet pod traffic went through the VXLAN device"
    before = vxlan_tx_packets(lab, "node-a1")
    assert lab.ping(a1p1["netns"], b1p1["ip"], count=5, timeout=2)
    cross = vxlan_tx_packets(lab, "node-a1") - before
    if lab.design == "mesh":
        assert cross >= 5, f"cross-subnet pod traffic was not encapsulated ({cross} packets)"
    else:
        # ToR design: the fabric routes pod blocks, nothing is encapsulated.
        assert cross == 0


def test_cli_status_peers_and_routes(lab):
    st = lab.status("node-a1")
    assert st["node"] == "node-a1" and st["sync"]["ready"] is True
    peers = {p["address"]: p for p in st["peers"]}
    if lab.design == "tor":
        assert set(peers) == {"198.18.1.1"}
    else:
        assert set(peers) == {"198.18.1.12", "198.18.2.11", "198.18.2.12"}
    assert all(p["state"] == "established" for p in peers.values())
    table = lab.nr("node-a1", "peers").stdout
    for address in peers:
        assert address in table and "established" in table
    routes = json.loads(lab.nr("node-a1", "routes", "-o", "json").stdout)
    assert routes and all(r["agree"] for r in routes), routes
    own_block = st["blocks"][0]
    assert any(r["prefix"] == own_block and r["announced"] and r["in_kernel"] for r in routes)
    text = lab.nr("node-a1", "routes", "--prefix", own_block).stdout
    assert own_block in text and "blackhole" in text
    assert "secret" not in json.dumps(st)


def test_deleted_pod_releases_its_address_and_route(lab):
    pod = lab.add_pod("node-b2", "gone")
    ns_b2 = lab.node("node-b2").netns
    assert f"{pod['ip']} " in sh(["ip", "route", "show", "proto", "73"], netns=ns_b2).stdout
    lab.del_pod("node-b2", "gone")
    assert f"{pod['ip']} " not in sh(["ip", "route", "show", "proto", "73"], netns=ns_b2).stdout
    shown = json.loads(lab.nr("node-b2", "ipam", "show", "-o", "json", "--etcd-endpoints",
                              lab.etcd_endpoint, check=True).stdout)
    assert pod["ip"] not in json.dumps(shown)


def test_pod_add_costs_no_route_failure_and_no_full_resync(lab):
    """The plugin adds the pod's /32 (our protocol) before the daemon desires it; the
    daemon adopts that route instead of failing its EXCL add with EEXIST and resyncing
    the whole table (issue 18: every pod start logged ``routes_failed EEXIST``)."""
    node = lab.node("node-a2")
    log_path = f"{lab.node_dir(node.name)}/noderouter.log"

    def count(event: str) -> int:
        with open(log_path) as f:
            return sum(1 for line in f if f'"{event}"' in line or f" {event} " in line)

    failed_before = count("routes_failed")
    pod = lab.add_pod(node.name, "adopted")
    prefix = f"{pod['ip']}/32"

    def settled():
        rows = json.loads(lab.nr(node.name, "routes", "--prefix", prefix, "-o", "json").stdout)
        return any(r["prefix"] == prefix and r["agree"] and r["in_kernel"] for r in rows)

    wait_for(settled, 20, what=f"{prefix} desired and in the kernel on {node.name}")
    assert count("routes_failed") == failed_before, "the pod's route was re-added and failed"
    lab.del_pod(node.name, "adopted")
