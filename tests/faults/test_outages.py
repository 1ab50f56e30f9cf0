"""Outages that heal, in the mesh design (VXLAN across racks), with a steady flow:
etcd down for 60 s, a node removed for good, kernel drift, a ToR router stopped."""

import json
import os
import time

import pytest

from lab.netns import sh
from lab.procs import wait_for
from lab.traffic import PingFlow, RouteWatch
from tests.e2e.conftest import build_lab

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab():
    the_lab = build_lab("mesh", nodes_per_rack=2, pods_per_node=1)
    try:
        yield the_lab
    finally:
        assert the_lab.down() == []


def cross_rack_flow(lab):
    src, dst = lab.pods["node-a1/p1"], lab.pods["node-b1/p1"]
    assert lab.ping(src["netns"], dst["ip"], count=3)
    return PingFlow(src["netns"], dst["ip"]).start()


def test_etcd_outage_leaves_dataplane_and_bgp_untouched_and_heals(lab, record_property):
    flow = cross_rack_flow(lab)
    watches = {n.name: RouteWatch(n.netns).start() for n in lab.nodes}
    lab.etcd.pause()
    try:
        # CNI ADD fails fast with a clear "try again later" error, leaving nothing behind.
        lab.netns_set.add(lab.ns("pa1-outage"))
        t0 = time.monotonic()
        res = lab.cni("node-a1", "ADD", "outage0000000001", lab.ns("pa1-outage"))
        add_seconds = time.monotonic() - t0
        err = json.loads(res.stdout)
        assert res.returncode != 0 and err["code"] == 11, err
        assert "etcd" in err["msg"]
        assert add_seconds < 15
        links = sh(["ip", "-o", "link"], netns=lab.node("node-a1").netns).stdout
        assert "nrw" not in links.replace(
            lab.pods["node-a1/p1"]["container_id"], "") or links.count("nrw") == 1
        time.sleep(60)
        for n in lab.nodes:
            st = lab.status(n.name)
            assert all(p["state"] == "established" for p in st["peers"]), st["peers"]
    finally:
        lab.etcd.resume()
    # Everything resumes without a restart: a new pod gets an address and is reachable.
    pod = wait_for(lambda: lab.add_pod("node-a2", "after"), 30, interval=1,
                   what="CNI ADD to work again after etcd returned")
    assert lab.ping(lab.pods["node-b1/p1"]["netns"], pod["ip"], count=3)
    time.sleep(2)
    result = flow.stop()
    churn = {name: w.stop() for name, w in watches.items()}
    record_property("packets_lost", result.lost)
    print(f"etcd outage 60 s: CNI ADD failed in {add_seconds:.2f}s; flow sent {result.sent} "
          f"lost {result.lost}; deletions {[len(c['deleted']) for c in churn.values()]}")
    assert result.lost == 0
    assert all(c["deleted"] == [] for c in churn.values()), churn


def test_kernel_drift_is_repaired_by_the_resync_timer(lab):
    # Restart a1 with a short resync interval so the test does not wait 30 s.
    assert lab.stop_noderouter("node-a1") == 0
    lab.start_noderouter("node-a1", **{"dataplane.resync_interval": 3})
    lab.wait_ready("node-a1")
    ns = lab.node("node-a1").netns
    block_b1 = lab.status("node-b1")["blocks"][0]
    wait_for(lambda: block_b1 in sh(["ip", "route", "show", "proto", "73"], netns=ns).stdout,
             30, what="b1's block in a1's kernel")
    flow = cross_rack_flow(lab)
    time.sleep(1)
    sh(["ip", "route", "del", block_b1], netns=ns)
    sh(["ip", "neigh", "flush", "dev", "vxlan.nr", "nud", "permanent"], netns=ns)
    t0 = time.monotonic()
    wait_for(lambda: block_b1 in sh(["ip", "route", "show", "proto", "73"], netns=ns).stdout
             and "PERMANENT" in sh(["ip", "neigh", "show", "dev", "vxlan.nr"], netns=ns).stdout,
             15, what="drift repaired")
    repaired = time.monotonic() - t0
    time.sleep(1)
    result = flow.stop()
    # The flow is lost while the route is gone (the sabotage), and flows again after.
    print(f"kernel drift repaired in {repaired:.1f}s (resync interval 3 s); flow sent "
          f"{result.sent}, lost {result.lost} (~{result.lost / 100:.1f}s without the route)")
    assert result.lost <= (repaired + 1.5) * 100
    assert lab.ping(lab.pods["node-a1/p1"]["netns"], lab.pods["node-b1/p1"]["ip"], count=3)


def test_removed_node_is_withdrawn_everywhere_and_its_blocks_collected(lab):
    gone = lab.status("node-b2")
    block = gone["blocks"][0]
    flow = cross_rack_flow(lab)                     # between survivors: must not notice
    assert lab.stop_noderouter("node-b2") == 0      # stopped for good: no restart
    t0 = time.monotonic()
    for n in ("node-a1", "node-a2", "node-b1"):
        ns = lab.node(n).netns
        wait_for(lambda ns=ns: block not in sh(["ip", "route", "show", "proto", "73"],
                                                netns=ns).stdout,
                 90, interval=0.5, what=f"{block} withdrawn on {n}")
    withdrawn = time.monotonic() - t0
    survivors = flow.stop()
    assert survivors.lost == 0, f"traffic between surviving nodes lost {survivors.lost}"
    peers = {p["address"] for p in lab.status("node-a1")["peers"]}
    assert lab.node("node-b2").address not in peers
    print(f"node removed: its block withdrawn everywhere {withdrawn:.1f}s after the stop; "
          f"flow between survivors sent {survivors.sent}, lost {survivors.lost}")
    # ipam check reports the dead node's blocks and addresses; gc frees them after grace.
    ep = ["--etcd-endpoints", lab.etcd_endpoint]
    live_args = [a for n in lab.nodes if n.name != "node-b2" for a in ("--live-node", n.name)]
    handles = os.path.join(lab.workdir, "live-handles.txt")
    with open(handles, "w") as f:
        f.write("\n".join(f"k8s-pod-network.{p['container_id']}"
                          for k, p in lab.pods.items() if not k.startswith("node-b2/")))
    check = lab.nr("node-a1", "ipam", "check", "-o", "json", "--live-handles-file", handles,
                   *live_args, *ep)
    assert check.returncode == 1, check.stderr          # problems found
    report = json.loads(check.stdout)
    leaked = {leak["handle"] for leak in report["leaks"]}
    b2_pod = f"k8s-pod-network.{lab.pods['node-b2/p1']['container_id']}"
    assert leaked == {b2_pod, "vxlan-tunnel-addr-node-b2"}, leaked
    assert "node-b2" in json.dumps(report)
    gc_args = ["ipam", "gc", "-o", "json", "--grace", "1s", "--live-handles-file", handles,
               *live_args, *ep]
    first = json.loads(lab.nr("node-a1", *gc_args, check=True).stdout)
    assert first["released"] == []                       # first sighting starts the grace
    time.sleep(1.5)
    second = json.loads(lab.nr("node-a1", *gc_args, check=True).stdout)
    assert {r["handle"] for r in second["released"]} == leaked
    # The emptied block goes only after two consecutive empty sightings.
    freed = list(second["freed_blocks"])
    for _ in range(2):
        freed += json.loads(lab.nr("node-a1", *gc_args, check=True).stdout)["freed_blocks"]
    assert block in freed, freed
    clean = lab.nr("node-a1", "ipam", "check", "-o", "json", "--live-handles-file", handles,
                   *live_args, *ep)
    assert clean.returncode == 0, clean.stdout
