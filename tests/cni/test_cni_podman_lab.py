"""podman through libcni on lab nodes (issue 16): two racks, one node each, the
real daemon on both (``tor`` design: pod blocks routed by BGP through the ToRs).

Each node runs its own podman (tests/cni/podman.py) on the packaged example
conflist -- ``noderouter-cni`` chained with the reference ``portmap`` and
``bandwidth`` plugins -- with our plugin's entry pointed at the lab. The daemon
runs under ``ip netns exec`` (its own mount namespace) while podman mounts each
container's netns in another: every ADD/DEL crosses mount namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bgpd.cni.protocol import DEFAULT_WORKLOAD_PREFIX, host_veth_name, pod_handle
from bgpd.cni.records import LOCK_DIR
from lab.netns import sh
from lab.procs import wait_for
from lab.topology import Lab

from .conftest import REPO
from .podman import Podman, skip_unless_podman, skip_unless_reference_plugins

pytestmark = pytest.mark.e2e

EXAMPLE = os.path.join(REPO, "packaging", "deb", "10-noderouter.conflist.example")
A, B = "node-a1", "node-b1"
DAEMON_LOG = ("noderouter.log",)


def conflist(lab: Lab, node: str) -> dict:
    """The packaged example conflist with our plugin's entry pointed at this lab."""
    with open(EXAMPLE) as f:
        example = json.load(f)
    ours = {k: v for k, v in lab.cni_conf(node).items() if k not in ("cniVersion", "name")}
    plugins = [{**ours, "capabilities": example["plugins"][0]["capabilities"]},
               *example["plugins"][1:]]
    assert [p["type"] for p in plugins] == ["noderouter-cni", "portmap", "bandwidth"]
    return {**example, "plugins": plugins}


@pytest.fixture(scope="module")
def lab():
    skip_unless_podman()
    skip_unless_reference_plugins("portmap", "bandwidth")
    the_lab = Lab(racks=2, nodes_per_rack=1, design="tor")
    the_lab.up()
    try:
        the_lab.start_all(wait=True)
        yield the_lab
    finally:
        errors = the_lab.down()
    assert not errors, errors


@pytest.fixture(scope="module")
def podman(lab):
    """podman on each node, by node name."""
    started: dict[str, Podman] = {}
    try:
        for node in (A, B):
            started[node] = Podman(os.path.join(lab.node_dir(node), "podman"),
                                   lab.node(node).netns, conflist(lab, node),
                                   lab.command("noderouter-cni")[-1]).start()
        yield started
    finally:
        for p in started.values():
            p.stop()


# ------------------------------------------------------------------ node facts

def ipam_tool(lab: Lab, *argv: str):
    """tests.cni.ipamtool inside node A's namespace (etcd is reachable from there)."""
    res = subprocess.run(["ip", "netns", "exec", lab.node(A).netns, sys.executable, "-m",
                          "tests.cni.ipamtool", lab.etcd_endpoint, *argv],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"ipamtool {argv}: {res.stderr[-2000:]}"
    return json.loads(res.stdout)


def links(lab: Lab, node: str) -> list[str]:
    out = sh(["ip", "-j", "link", "show"], netns=lab.node(node).netns).stdout
    return [link["ifname"] for link in json.loads(out)]


def workload_links(lab: Lab, node: str) -> list[str]:
    return [n for n in links(lab, node) if n.startswith(DEFAULT_WORKLOAD_PREFIX)]


def routes_to_workloads(lab: Lab, node: str) -> list[dict]:
    """Routes of the node that lead to a workload: a pool host route or a workload veth."""
    pool = ipaddress.ip_network(lab.pool_cidr)
    routes = json.loads(sh(["ip", "-j", "-4", "route", "show"], netns=lab.node(node).netns
                           ).stdout)
    return [r for r in routes
            if r.get("dev", "").startswith(DEFAULT_WORKLOAD_PREFIX)
            or (r["dst"] != "default" and ipaddress.ip_network(r["dst"]).prefixlen == 32
                and ipaddress.ip_network(r["dst"]).subnet_of(pool))]


def cni_records(lab: Lab, node: str) -> list[str]:
    """Every file in the node's CNI state dir (records, temp files, lock files)."""
    found = []
    for root, _dirs, files in os.walk(lab.cni_state_dir(node)):
        found += [os.path.join(root, f) for f in files]
    return found


def cni_events(lab: Lab, node: str, event: str, cid: str | None,
               logs: tuple[str, ...] = ("noderouter.log", "cni.log")) -> list[dict]:
    """``event`` for container ``cid`` (None: any) from the daemon's log (fast
    path) and the plugin's own (direct path)."""
    found = []
    for log in logs:
        path = os.path.join(lab.node_dir(node), log)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") == event and cid in (None, doc.get("container")):
                    found.append(doc)
    return found


def ping_until(podman: Podman, cid: str, dst: str, timeout: float = 30) -> None:
    # The first pod of a node claims its block: the ToRs learn it a moment later.
    wait_for(lambda: podman("exec", cid, "/bin/busybox", "ping", "-c1", "-W1", dst,
                            check=False).returncode == 0,
             timeout, interval=0.5, what=f"{dst} to answer from container {cid[:12]}")


def block_of(lab: Lab, node: str, ip: str) -> str:
    blocks = [b for b in lab.status(node)["blocks"]
              if ipaddress.ip_address(ip) in ipaddress.ip_network(b)]
    assert len(blocks) == 1, (node, ip, lab.status(node)["blocks"])
    return blocks[0]


def http_get(lab: Lab, node: str, url: str) -> subprocess.CompletedProcess:
    """GET ``url`` from the node's namespace (Python's client: busybox's static wget
    crashes in a namespace here)."""
    return sh([sys.executable, "-c", "import sys, urllib.request; sys.stdout.write("
               "urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())", url],
              netns=lab.node(node).netns, check=False)


# ------------------------------------------------------------------ tests

def test_containers_on_two_racks_ping_each_other(lab: Lab, podman):
    ca = podman[A].run(script="sleep 600", detach=True).stdout.strip()
    cb = podman[B].run(script="sleep 600", detach=True).stdout.strip()
    try:
        ip_a, ip_b = podman[A].ip_of(ca), podman[B].ip_of(cb)
        # Each address is in a block of its own node...
        block_a, block_b = block_of(lab, A, ip_a), block_of(lab, B, ip_b)
        # ...and the ToRs route those blocks to each other across the spine: rack A's
        # ToR sends B's block to rack B's ToR and the reverse (learned over BGP from
        # the nodes, exported by BIRD/FRR into their kernels).
        tor_a, tor_b = (lab.rack_plans[i].tor_spine_address for i in (0, 1))
        wait_for(lambda: f"via {tor_b} " in sh(["ip", "route", "show", block_b],
                                               netns=lab.ns("tora")).stdout,
                 30, what=f"{block_b} via rack B's ToR in rack A's ToR")
        wait_for(lambda: f"via {tor_a} " in sh(["ip", "route", "show", block_a],
                                               netns=lab.ns("torb")).stdout,
                 30, what=f"{block_a} via rack A's ToR in rack B's ToR")
        ping_until(podman[A], ca, ip_b)
        ping_until(podman[B], cb, ip_a)
        # The answer comes back through node B, ToR B, ToR A and node A: four routers,
        # TTL 64 - 4 (no tunnel, no shortcut).
        out = podman[A]("exec", ca, "/bin/busybox", "ping", "-c1", "-W2", ip_b).stdout
        assert "ttl=60" in out, out
    finally:
        podman[A]("rm", "-f", "-t0", ca)
        podman[B]("rm", "-f", "-t0", cb)


def test_published_port_through_portmap_answers_from_another_node(lab: Lab, podman):
    token = f"served-by-{os.getpid()}"
    cid = podman[A].run("-p", "8080:7777", script=(
        f"mkdir /www && echo {token} > /www/index.html && "
        "exec /bin/busybox httpd -f -p 7777 -h /www"), detach=True).stdout.strip()
    ip = podman[A].ip_of(cid)
    nat = ["iptables", "-t", "nat", "-S"]
    try:
        # portmap (chained after us, given our result) wrote the DNAT rule in node A.
        dnat = [r for r in sh(nat, netns=lab.node(A).netns).stdout.splitlines()
                if "--dport 8080" in r and f"--to-destination {ip}:7777" in r]
        assert dnat, sh(nat, netns=lab.node(A).netns).stdout
        # A client in node B's namespace, on the other rack, asks node A's address.
        url = f"http://{lab.node(A).address}:8080/"

        def fetched() -> str | None:
            res = http_get(lab, B, url)
            return res.stdout if res.returncode == 0 else None
        assert wait_for(fetched, 30, interval=0.5, what=f"{url} from {B}").strip() == token
    finally:
        podman[A]("rm", "-f", "-t0", cid)
    # portmap's DEL took its rule away with the container.
    assert f"{ip}:7777" not in sh(nat, netns=lab.node(A).netns).stdout
    res = http_get(lab, B, url)
    assert res.returncode != 0 and token not in res.stdout


def test_podman_rm_releases_the_address_route_and_veth(lab: Lab, podman):
    cid = podman[A].run(script="sleep 600", detach=True).stdout.strip()
    ip = podman[A].ip_of(cid)
    handle, veth = pod_handle(cid), host_veth_name(DEFAULT_WORKLOAD_PREFIX, cid)
    node_ns = lab.node(A).netns
    # Live: the lease in etcd, the host route to the veth, the veth, the record.
    assert ipam_tool(lab, "handle-ips", handle) == [ip]
    assert sh(["ip", "-4", "-o", "route", "show", f"{ip}/32"], netns=node_ns
              ).stdout.split()[:3] == [ip, "dev", veth]
    assert veth in links(lab, A)
    assert any(cid in path for path in cni_records(lab, A))

    podman[A]("rm", "-f", "-t0", cid)

    # libcni's DEL carried the ADD's result as prevResult (the cached result).
    (delete,) = podman[A].requests_of("DEL", cid)
    assert [i["address"] for i in delete["prevResult"]["ips"]] == [f"{ip}/32"]
    # The daemon served ADD and DEL (its fast path): podman's netns mount exists only
    # in podman's mount namespace, so the plugin handed it the netns (SCM_RIGHTS).
    assert [e["ip"] for e in cni_events(lab, A, "cni_added", cid, DAEMON_LOG)] == [ip]
    # DEL removed each piece itself (podman deletes the netns after DEL, which would
    # take the veth and its route along anyway: only the event tells them apart).
    (deleted,) = cni_events(lab, A, "cni_deleted", cid, DAEMON_LOG)
    assert (deleted["route"], deleted["veth"], deleted["released"], deleted["record"]) == (
        True, True, [ip], True), deleted
    assert ipam_tool(lab, "handle-ips", handle) == []
    assert handle not in ipam_tool(lab, "handles")
    assert sh(["ip", "-4", "-o", "route", "show", f"{ip}/32"], netns=node_ns).stdout == ""
    assert veth not in links(lab, A)
    assert not [p for p in cni_records(lab, A) if cid in p]


def test_a_hundred_containers_leave_the_pool_and_the_node_clean(lab: Lab, podman):
    n, batch = 100, 25
    t0 = time.monotonic()
    # Two starts at a time (two cores): ~20% faster than one by one here, and the
    # node's daemon serves overlapping ADDs as a busy node's would.
    with ThreadPoolExecutor(2) as pool:
        cids = list(pool.map(lambda _: podman[A].run(script="sleep 600", detach=True
                                                     ).stdout.strip(), range(n)))
    started = time.monotonic() - t0
    facts = json.loads(podman[A]("inspect", *cids).stdout)
    ips = [f["NetworkSettings"]["Networks"][podman[A].network]["IPAddress"] for f in facts]
    sandboxes = [f["NetworkSettings"]["SandboxKey"] for f in facts]
    assert len(set(ips)) == n and all(sandboxes), (ips, sandboxes)
    # All 100 live at once: 100 leases, 100 veths, 100 host routes.
    live = ipam_tool(lab, "handles")
    assert {h: v for h, v in live.items() if h in {pod_handle(c) for c in cids}} == {
        pod_handle(c): [ip] for c, ip in zip(cids, ips, strict=True)}
    assert len(workload_links(lab, A)) == n
    assert len(routes_to_workloads(lab, A)) == n

    for i in range(0, n, batch):
        podman[A]("rm", "-f", "-t0", *cids[i:i + batch])
    elapsed = time.monotonic() - t0
    print(f"\n{n} containers: started in {started:.1f} s, all removed after {elapsed:.1f} s")

    assert podman[A]("ps", "-aq").stdout.strip() == ""
    # Each DEL removed its route and veth and released its address itself.
    deleted = {e["container"]: e for e in cni_events(lab, A, "cni_deleted", None)}
    assert {c: (deleted[c]["route"], deleted[c]["veth"], deleted[c]["released"])
            for c in cids} == {c: (True, True, [ip]) for c, ip in zip(cids, ips, strict=True)}
    # The pool: no lease or handle left, and `ipam check` (no live workload) clean.
    assert ipam_tool(lab, "handles") == {}
    live_file = os.path.join(lab.workdir, "live-none.json")
    with open(live_file, "w") as f:
        json.dump([], f)
    check = lab.nr(A, "ipam", "check", "-o", "json", "--live-handles-file", live_file,
                   "--live-node", A, "--live-node", B, "--etcd-endpoints", lab.etcd_endpoint)
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["allocations"] == 0, report
    # The node: no veth, no route to a workload, no CNI record, lock or temp file.
    assert workload_links(lab, A) == []
    assert routes_to_workloads(lab, A) == []
    assert cni_records(lab, A) == []
    assert os.listdir(lab.cni_state_dir(A)) == [LOCK_DIR]
    # podman's netns mounts and files are gone too (seen from its mount namespace).
    left = podman[A].sh("ls", "-a", "/run/netns").stdout.split()
    assert not [s for s in sandboxes if os.path.basename(s) in left], left
