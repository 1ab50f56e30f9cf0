"""Restarts with zero loss: the daemon (SIGTERM and SIGKILL, systemd-style restart) and its
ExaBGP child (SIGKILL), with a steady pod-to-pod flow across racks (ping every 10 ms) and
`ip monitor route` watching both nodes' kernels for any route of ours deleted or re-added.

Both peering designs: mesh (ExaBGP on every node, VXLAN across racks, graceful restart
between our own speakers) and ToR (BIRD and FRR keep our routes through the restart)."""

import os
import signal
import time

import pytest

from lab.procs import wait_for
from lab.topology import Lab
from lab.traffic import PingFlow, RouteWatch
from tests.e2e.conftest import build_lab

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["mesh", "tor"])
def lab(request):
    the_lab = build_lab(request.param, nodes_per_rack=1, pods_per_node=1)
    try:
        yield the_lab
    finally:
        assert the_lab.down() == []


def _flow_and_watch(lab: Lab):
    src, dst = lab.pods["node-a1/p1"], lab.pods["node-b1/p1"]
    assert lab.ping(src["netns"], dst["ip"], count=3), "no flow before the fault"
    watches = {n.name: RouteWatch(n.netns).start() for n in lab.nodes}
    return PingFlow(src["netns"], dst["ip"]).start(), watches


def _finish(flow, watches, settle: float = 2.0):
    time.sleep(settle)
    result = flow.stop()
    churn = {name: w.stop() for name, w in watches.items()}
    return result, churn


def _exabgp_pid(lab: Lab, node: str) -> int:
    return lab.status(node)["exabgp_pid"]


def _wait_announced_again(lab: Lab, node: str, timeout: float) -> float:
    """Every peer of the other nodes holds ``node``'s block fresh (not stale) again."""
    t0 = time.monotonic()
    block = lab.status(node)["blocks"][0]

    def fresh_everywhere():
        for other in lab.nodes:
            if other.name == node:
                continue
            peers = lab.nr(other.name, "peers", "-o", "json").stdout
            if '"stale": 0' not in peers:
                return False
            routes = lab.nr(other.name, "routes", "--prefix", block, "-o", "json").stdout
            if '"in_kernel": true' not in routes:
                return False
        return True
    wait_for(fresh_everywhere, timeout, interval=0.5, what=f"{node}'s block fresh everywhere")
    return time.monotonic() - t0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_daemon_restart_loses_nothing(lab, sig, record_property):
    flow, watches = _flow_and_watch(lab)
    time.sleep(1)
    daemon = lab.daemons["node-b1"]
    old_exabgp = _exabgp_pid(lab, "node-b1")
    if sig == "SIGKILL":
        daemon.signal(signal.SIGKILL)
        daemon.proc.wait(10)
        # Its ExaBGP loses the relay socket and exits with it (exabgp.api.terminate).
        wait_for(lambda: not os.path.exists(f"/proc/{old_exabgp}"), 15,
                 what="the orphaned ExaBGP to exit")
        lab.daemons.pop("node-b1")
    else:
        assert lab.stop_noderouter("node-b1") == 0
    time.sleep(1)                       # systemd's RestartSec
    lab.start_noderouter("node-b1")
    lab.wait_ready("node-b1", 60)
    back_after = _wait_announced_again(lab, "node-b1", 30)
    result, churn = _finish(flow, watches)
    record_property("packets_sent", result.sent)
    record_property("packets_lost", result.lost)
    record_property("announcements_back_seconds", round(back_after, 2))
    print(f"{lab.design} {sig}: sent {result.sent} lost {result.lost}; "
          f"announcements fresh again {back_after:.1f}s after ready; churn {churn}")
    assert result.sent > 200
    assert result.lost == 0
    for node, c in churn.items():
        assert c["deleted"] == [], f"{node}: routes of ours deleted: {c['deleted']}"
        assert c["added"] == [], f"{node}: routes of ours re-added: {c['added']}"


def test_exabgp_killed_is_respawned_without_loss(lab):
    flow, watches = _flow_and_watch(lab)
    time.sleep(1)
    old = _exabgp_pid(lab, "node-a1")
    starts = lab.status("node-a1")["exabgp_starts"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: lab.status("node-a1")["exabgp_starts"] > starts, 30,
             what="ExaBGP respawned")
    wait_for(lambda: all(p["state"] == "established" for p in lab.status("node-a1")["peers"]),
             30, what="sessions back")
    _wait_announced_again(lab, "node-a1", 30)
    result, churn = _finish(flow, watches)
    print(f"{lab.design} exabgp SIGKILL: sent {result.sent} lost {result.lost}; churn {churn}")
    assert result.lost == 0
    assert all(c["deleted"] == [] for c in churn.values()), churn
